"""The one place that reads WriteVue's configuration from the environment."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

_CRON_PREFIX = "WRITEVUE_REFRESH_CRON_"


@dataclass(frozen=True)
class Settings:
    """Where everything lives. Embedded default: all of it under ``home``."""

    home: Path
    #: ``WRITEVUE_DATABASE_URL``; may carry the password (kept out of ``repr``)
    database_url_override: str | None = field(default=None, repr=False)
    #: where the secret that signs dashboard sessions lives, if not under ``home``
    session_secret_file_override: Path | None = None
    #: the session secret itself (``WRITEVUE_SESSION_SECRET``), for hosts that hand secrets
    #: over in the environment: every dashboard process of a deployment is given the same;
    #: fixed for a process's life (rotation: a new value and a restart)
    session_secret_env: str | None = field(default=None, repr=False)
    #: where the key ring lives, if not under ``home`` (``WRITEVUE_KEY_FILE``): production
    #: keeps it apart from the data, so a copy of the database or the home holds no key
    key_file_override: Path | None = None
    #: the key ring itself, as the JSON text of a key file (``WRITEVUE_KEYS``), for hosts
    #: that hand secrets over in the environment; read-only: rotation needs a key file
    key_ring_env: str | None = field(default=None, repr=False)
    #: "production" or "development" (``WRITEVUE_ENV``); None: inferred, see ``production``
    environment: str | None = None
    dashboard_base_url: str = "http://127.0.0.1:5006"
    history_days: int = 90
    lookback_days: int = 3
    http_timeout_s: float = 30.0
    #: how often a TV-mode dashboard reloads, and every open dashboard re-checks its link
    dashboard_refresh_s: int = 60
    #: CSP frame-ancestors sources allowed to embed dashboards; none by default
    dashboard_embed_origins: str | None = None
    #: connections per scheduled (or backfill) run: N connections cost ceil(N / batch) runs
    refresh_batch: int = 50
    #: when every source refreshes (cron, UTC) unless ``WRITEVUE_REFRESH_CRON_<SOURCE>`` says
    refresh_cron: str = "0 6 * * *"
    refresh_crons: tuple[tuple[str, str], ...] = ()
    #: a failing connection is retried alone after 15, 30, 60, … minutes, this many times
    retry_base_minutes: int = 15
    retry_attempts: int = 5
    #: a connection whose last successful refresh is older than this fails its freshness check
    freshness_hours: int = 36
    #: report every check result (passes too), or only failures, warnings and recoveries
    #: (``WRITEVUE_CHECK_RESULTS=problems``: about 6 fewer stored events per healthy
    #: connection and refresh, but Dagster then shows a healthy connection's checks as
    #: skipped, not passed: a result a run plans and does not report is a skipped one)
    check_passes: bool = True
    #: staged raw records older than this are swept away (a load deletes them at once)
    staging_max_age_hours: int = 24
    #: a refresh run hands fetched records to their load in memory, up to this many MB
    #: waiting at once; past it (the loads fall behind) they are staged, sealed, on disk.
    #: 0: every connection's records go through the disk
    staging_memory_mb: int = 64
    #: raw dashboard access logs older than this many days go, once rolled up into trends
    access_log_retention_days: int = 30
    #: a referrer domain seen on fewer views than this in a day is counted as "(other)"
    trend_min_referrer_views: int = 5
    #: Dagster runs (and their event logs) older than this many days are deleted daily
    run_retention_days: int = 30
    #: failed token lookups an address may make per minute, per surface (links, invites),
    #: before its failures get 429; a live link or invite is never refused
    guess_limit: int = 20
    #: the brand (by name) shown where no tenant's is: 404 and "no longer works" pages,
    #: tenants without a brand; None: WriteVue's look (``WRITEVUE_DEFAULT_BRAND``)
    default_brand: str | None = None
    #: the Dagster instance's PostgreSQL storage, when it has one (the erasure proof
    #: searches its run history): ``WRITEVUE_DAGSTER_DATABASE_URL``, else built from the
    #: ``DAGSTER_PG_*`` variables that deploy/dagster.yaml reads
    dagster_database_url: str | None = field(default=None, repr=False)
    dagster_home_override: Path | None = None
    #: where scorecards and alerts are mailed through: smtp://host:port (a local relay,
    #: plain), smtp+starttls://host:587 or smtps://host:465; None: mail is not sent (each
    #: email delivery records "WRITEVUE_SMTP_URL is not set" and is retried)
    smtp_url: str | None = None
    smtp_user: str | None = None
    #: the SMTP password (``WRITEVUE_SMTP_PASSWORD``), or the file holding it
    #: (``WRITEVUE_SMTP_PASSWORD_FILE``); never part of the URL
    smtp_password: str | None = field(default=None, repr=False)
    smtp_password_file: Path | None = None
    #: the CA bundle STARTTLS and SMTPS verify the server against; None: the system's
    smtp_ca_file: Path | None = None
    #: the sender of scorecards and alerts (``WRITEVUE_MAIL_FROM``)
    mail_from: str = "WriteVue <writevue@localhost>"
    #: seconds an SMTP server or a webhook may take to answer before the delivery is retried
    notify_timeout_s: float = 30.0
    #: attempts per message (the retries wait 2, 4, 8, … minutes) before it is given up
    notify_attempts: int = 5
    #: tenants (and due scorecards) per ``notifications`` run
    notify_batch: int = 500
    #: the proxies (addresses or networks) whose X-Forwarded-For / X-Real-IP the dashboard
    #: server believes (``WRITEVUE_TRUSTED_PROXIES``, comma-separated): nginx in front;
    #: none by default, so a client cannot choose the address it is counted under
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: what runs the steps of the ``{source}_refresh_steps`` jobs (``WRITEVUE_EXECUTOR``):
    #: "in_process" (default) or "celery" (Celery workers, see docs/operations.md)
    refresh_executor: str = "in_process"
    #: the Celery broker (``WRITEVUE_CELERY_BROKER``; may hold a password) and result
    #: backend (``WRITEVUE_CELERY_BACKEND``) that runs and workers share
    celery_broker: str | None = field(default=None, repr=False)
    celery_backend: str = field(default="rpc://", repr=False)
    #: the Celery queue refresh steps go to and workers listen on (``WRITEVUE_CELERY_QUEUE``)
    celery_queue: str = "writevue"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("WRITEVUE_HOME") or "./.writevue").expanduser().resolve()
        return cls(
            home=home,
            database_url_override=env.get("WRITEVUE_DATABASE_URL") or None,
            session_secret_file_override=_session_secret_file(env),
            session_secret_env=(env.get("WRITEVUE_SESSION_SECRET") or "").strip() or None,
            key_file_override=_key_file(env),
            key_ring_env=(env.get("WRITEVUE_KEYS") or "").strip() or None,
            environment=_environment(env),
            dashboard_base_url=(
                env.get("WRITEVUE_DASHBOARD_URL") or "http://127.0.0.1:5006"
            ).rstrip("/"),
            history_days=_positive_int(env, "WRITEVUE_HISTORY_DAYS", 90),
            lookback_days=_positive_int(env, "WRITEVUE_LOOKBACK_DAYS", 3),
            http_timeout_s=float(_positive_int(env, "WRITEVUE_HTTP_TIMEOUT_S", 30)),
            dashboard_refresh_s=_positive_int(env, "WRITEVUE_DASHBOARD_REFRESH_S", 60),
            dashboard_embed_origins=env.get("WRITEVUE_DASHBOARD_EMBED_ORIGINS") or None,
            refresh_batch=_positive_int(env, "WRITEVUE_REFRESH_BATCH", 50),
            refresh_cron=(env.get("WRITEVUE_REFRESH_CRON") or "0 6 * * *").strip(),
            refresh_crons=tuple(
                sorted(
                    (name[len(_CRON_PREFIX) :].lower(), value.strip())
                    for name, value in env.items()
                    if name.startswith(_CRON_PREFIX) and value.strip()
                )
            ),
            retry_base_minutes=_positive_int(env, "WRITEVUE_RETRY_BASE_MINUTES", 15),
            retry_attempts=_positive_int(env, "WRITEVUE_RETRY_ATTEMPTS", 5),
            freshness_hours=_positive_int(env, "WRITEVUE_FRESHNESS_HOURS", 36),
            check_passes=_check_results(env),
            staging_max_age_hours=_positive_int(env, "WRITEVUE_STAGING_MAX_AGE_HOURS", 24),
            staging_memory_mb=_positive_int(env, "WRITEVUE_STAGING_MEMORY_MB", 64, minimum=0),
            access_log_retention_days=_positive_int(env, "WRITEVUE_ACCESS_LOG_RETENTION_DAYS", 30),
            trend_min_referrer_views=_positive_int(env, "WRITEVUE_TREND_MIN_REFERRER_VIEWS", 5),
            run_retention_days=_positive_int(env, "WRITEVUE_RUN_RETENTION_DAYS", 30),
            guess_limit=_positive_int(env, "WRITEVUE_GUESS_LIMIT", 20),
            default_brand=(env.get("WRITEVUE_DEFAULT_BRAND") or "").strip() or None,
            dagster_database_url=_dagster_database_url(env),
            dagster_home_override=(
                Path(env["DAGSTER_HOME"]).expanduser().resolve()
                if env.get("DAGSTER_HOME")
                else None
            ),
            smtp_url=(env.get("WRITEVUE_SMTP_URL") or "").strip() or None,
            smtp_user=(env.get("WRITEVUE_SMTP_USER") or "").strip() or None,
            smtp_password=env.get("WRITEVUE_SMTP_PASSWORD") or None,
            smtp_password_file=_path(env, "WRITEVUE_SMTP_PASSWORD_FILE"),
            smtp_ca_file=_path(env, "WRITEVUE_SMTP_CA_FILE"),
            mail_from=(env.get("WRITEVUE_MAIL_FROM") or "").strip()
            or "WriteVue <writevue@localhost>",
            notify_timeout_s=_positive_float(env, "WRITEVUE_NOTIFY_TIMEOUT_S", 30.0),
            notify_attempts=_positive_int(env, "WRITEVUE_NOTIFY_ATTEMPTS", 5),
            notify_batch=_positive_int(env, "WRITEVUE_NOTIFY_BATCH", 500),
            trusted_proxies=_networks(env, "WRITEVUE_TRUSTED_PROXIES"),
            refresh_executor=_executor(env),
            celery_broker=(env.get("WRITEVUE_CELERY_BROKER") or "").strip() or None,
            celery_backend=(env.get("WRITEVUE_CELERY_BACKEND") or "").strip() or "rpc://",
            celery_queue=(env.get("WRITEVUE_CELERY_QUEUE") or "").strip() or "writevue",
        )

    def cron_for(self, source: str) -> str:
        """The refresh cadence of one source: its own setting, else the shared one."""
        return dict(self.refresh_crons).get(source, self.refresh_cron)

    @cached_property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite:///{self.home / 'warehouse.db'}"

    @property
    def key_file(self) -> Path:
        """The key ring's file (mode 0600): ``WRITEVUE_KEY_FILE`` when set, else under
        ``home``. Unused when the ring comes from the environment (``keys_from_env``)."""
        return self.key_file_override or self.home / "keys.json"

    @property
    def keys_from_env(self) -> bool:
        """The key ring is ``WRITEVUE_KEYS``'s text, not a file."""
        return self.key_ring_env is not None

    @property
    def production(self) -> bool:
        """Whether this is a production deployment (``writevue doctor`` is stricter there):
        ``WRITEVUE_ENV`` says so; unset, a PostgreSQL warehouse or an https dashboard
        URL means production, the embedded SQLite demo on http does not."""
        if self.environment is not None:
            return self.environment == "production"
        return self.database_url.startswith(
            ("postgresql", "postgres:")
        ) or self.dashboard_base_url.startswith("https://")

    @property
    def session_secret_file(self) -> Path:
        """The secret that signs dashboard sessions (mode 0600), shared by every dashboard
        process; ``WRITEVUE_SESSION_SECRET_FILE`` may keep it apart from the data. Unused
        when the secret comes from the environment (``session_secret_from_env``)."""
        return self.session_secret_file_override or self.home / "session-secret"

    @property
    def session_secret_from_env(self) -> bool:
        """The session secret is ``WRITEVUE_SESSION_SECRET``'s text, not a file."""
        return self.session_secret_env is not None

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance's folder: ``DAGSTER_HOME`` when set, else under ``home``."""
        return self.dagster_home_override or self.home / "dagster"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def dashboard_url(self, token: str) -> str:
        return f"{self.dashboard_base_url}/d/{token}"

    def connect_url(self, token: str) -> str:
        return f"{self.dashboard_base_url}/connect/{token}"


def _positive_int(env, name: str, default: int, *, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        at_least = "greater than zero" if minimum == 1 else f"{minimum} or more"
        raise ConfigError(f"{name} must be {at_least}.")
    return value


def _check_results(env) -> bool:
    raw = (env.get("WRITEVUE_CHECK_RESULTS") or "all").strip().lower()
    if raw not in ("all", "problems"):
        raise ConfigError(f"WRITEVUE_CHECK_RESULTS must be all or problems, not {raw!r}.")
    return raw == "all"


def _positive_float(env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}.") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be greater than zero.")
    return value


def _path(env, name: str) -> Path | None:
    raw = (env.get(name) or "").strip()
    return Path(raw).expanduser().resolve() if raw else None


def _key_file(env) -> Path | None:
    path = _path(env, "WRITEVUE_KEY_FILE")
    if path is not None and (env.get("WRITEVUE_KEYS") or "").strip():
        raise ConfigError(
            "Set WRITEVUE_KEY_FILE or WRITEVUE_KEYS, not both: the key ring must have one home."
        )
    return path


def _session_secret_file(env) -> Path | None:
    path = _path(env, "WRITEVUE_SESSION_SECRET_FILE")
    if path is not None and (env.get("WRITEVUE_SESSION_SECRET") or "").strip():
        raise ConfigError(
            "Set WRITEVUE_SESSION_SECRET_FILE or WRITEVUE_SESSION_SECRET, not both: "
            "the session secret must have one home."
        )
    return path


_ENVIRONMENTS = ("production", "development")


def _environment(env) -> str | None:
    raw = (env.get("WRITEVUE_ENV") or "").strip().lower()
    if not raw:
        return None
    if raw not in _ENVIRONMENTS:
        raise ConfigError(f"WRITEVUE_ENV must be production or development, not {raw!r}.")
    return raw


def _networks(env, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in (env.get(name) or "").split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must list IP addresses or networks (127.0.0.1, 10.0.0.0/8), "
                f"not {item.strip()!r}."
            ) from None
    return tuple(networks)


_EXECUTORS = ("in_process", "celery")


def _executor(env) -> str:
    raw = (env.get("WRITEVUE_EXECUTOR") or "").strip().lower().replace("-", "_")
    if not raw:
        return "in_process"
    if raw not in _EXECUTORS:
        raise ConfigError(f"WRITEVUE_EXECUTOR must be in_process or celery, not {raw!r}.")
    if raw == "celery" and not (env.get("WRITEVUE_CELERY_BROKER") or "").strip():
        raise ConfigError(
            "WRITEVUE_EXECUTOR=celery needs WRITEVUE_CELERY_BROKER, the broker's URL "
            "(e.g. pyamqp://writevue@rabbitmq:5672//), in the environment."
        )
    return raw


class ConfigError(Exception):
    """The environment holds a setting WriteVue cannot use."""


def get_settings() -> Settings:
    return Settings.from_env()


def _dagster_database_url(env) -> str | None:
    if env.get("WRITEVUE_DAGSTER_DATABASE_URL"):
        return env["WRITEVUE_DAGSTER_DATABASE_URL"]
    host, db = env.get("DAGSTER_PG_HOST"), env.get("DAGSTER_PG_DB")
    if not (host and db):
        return None
    user = quote(env.get("DAGSTER_PG_USERNAME") or "postgres", safe="")
    password = env.get("DAGSTER_PG_PASSWORD")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    port = env.get("DAGSTER_PG_PORT") or "5432"
    return f"postgresql+psycopg://{auth}@{host}:{port}/{quote(db, safe='')}"
