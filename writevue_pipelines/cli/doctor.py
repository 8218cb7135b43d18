"""``writevue doctor``: is this deployment sound? One line per check (ok, warn or fail),
what to do under each one that is not ok, and exit status 1 when something must be fixed.

Production is judged more strictly. It is known from ``WRITEVUE_ENV`` (production or
development); unset, a PostgreSQL warehouse or an https dashboard URL means production
(``Settings.production``). There, the key ring and the session secret must live apart
from the data, the dashboard URL must be https, no connection may read the sandbox, and
the Dagster daemon must be heartbeating.

Nothing here prints a secret: URLs are shown with their password masked, and errors by
their kind or first line with every configured password removed. It reads no tenant's
data: settings, files' modes, schema revisions, counts and connection ids.
"""

from __future__ import annotations

import json
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..settings import ConfigError, Settings
from .app import arg, command
from .progress import plural

MB = 1024**2
GB = 1024**3
#: free space under WRITEVUE_HOME: below this the warehouse, staging and logs may stop
DISK_FAIL_BYTES = 200 * MB
#: ... and below this (or below DISK_WARN_SHARE of the file system) it is time to act
DISK_WARN_BYTES = 1 * GB
DISK_WARN_SHARE = 0.10
#: a daemon beats every 30 s: six missed beats and it has stopped or is stuck
DAEMON_STALE_S = 180
#: how long a database or SMTP server may take to answer the doctor
CONNECT_TIMEOUT_S = 5
#: connections listed by name in a summary; the rest are counted
LISTED = 5


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``fix`` says what to do, and is None when all is well."""

    check: str
    status: str  # ok | warn | fail
    summary: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "summary": self.summary,
            "fix": self.fix,
        }


def _ok(check: str, summary: str) -> Finding:
    return Finding(check, "ok", summary)


def _merge(check: str, summary: str, problems: list[tuple[str, str, str]]) -> Finding:
    """One finding from several problems (status, what, fix): the worst status wins."""
    if not problems:
        return _ok(check, summary)
    status = "fail" if any(p[0] == "fail" for p in problems) else "warn"
    return Finding(
        check, status, "; ".join(p[1] for p in problems), "; ".join(p[2] for p in problems)
    )


def _strict(settings: Settings) -> str:
    """What a production requirement not met is: to fix there, a warning elsewhere."""
    return "fail" if settings.production else "warn"


# -- where we are ----------------------------------------------------------------------------


def check_environment(settings: Settings) -> Finding:
    kind = "production" if settings.production else "development"
    if settings.environment is not None:
        why = f"WRITEVUE_ENV={settings.environment}"
    elif settings.production:
        why = (
            "inferred from the PostgreSQL warehouse"
            if _is_postgres(settings.database_url)
            else "inferred from the https dashboard URL"
        )
    else:
        why = "inferred from the SQLite warehouse and http dashboard URL; WRITEVUE_ENV sets it"
    return _ok("environment", f"{kind} ({why})")


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql", "postgres:"))


# -- the key ring and the session secret -------------------------------------------------------


def check_key_ring(settings: Settings) -> Finding:
    from ..vault import VaultError, key_ring_from_env, load_key_ring

    if settings.keys_from_env:
        try:
            ring = key_ring_from_env(settings.key_ring_env or "")
        except VaultError as exc:
            return Finding(
                "key_ring",
                "fail",
                str(exc),
                "give every process the JSON text of a key file in WRITEVUE_KEYS",
            )
        return _ok(
            "key_ring",
            f"from WRITEVUE_KEYS: {plural(len(ring.versions), 'key')}, "
            f"newest version {ring.primary} "
            "(rotating it needs a key file: docs/privacy.md)",
        )

    def describe(path: Path) -> str:
        ring = load_key_ring(path)
        return f"{plural(len(ring.versions), 'key')}, newest version {ring.primary}"

    return _secret_file(
        settings,
        "key_ring",
        settings.key_file,
        what="key file",
        variable="WRITEVUE_KEY_FILE",
        describe=describe,
        missing="fail",
        # Every secret is sealed with it: a new ring would make them all unreadable.
        create="run `writevue init` to create a new one only if nothing is encrypted yet",
    )


def check_session_secret(settings: Settings) -> Finding:
    from ..session_secret import load_session_secret, session_secret_from_env
    from ..vault import VaultError

    if settings.session_secret_from_env:
        try:
            session_secret_from_env(settings.session_secret_env or "")
        except VaultError as exc:
            return Finding(
                "session_secret",
                "fail",
                str(exc),
                "give every dashboard process "
                "the same WRITEVUE_SESSION_SECRET of 43 characters or more",
            )
        return _ok("session_secret", "from WRITEVUE_SESSION_SECRET")

    def describe(path: Path) -> str:
        load_session_secret(path)
        return "256 bits or more"

    return _secret_file(
        settings,
        "session_secret",
        settings.session_secret_file,
        what="session secret file",
        variable="WRITEVUE_SESSION_SECRET_FILE",
        describe=describe,
        # The first dashboard process makes one: fine on one machine, not on several.
        missing=_strict(settings),
        create="run `writevue init` to create it",
    )


def _secret_file(
    settings: Settings,
    check: str,
    path: Path,
    *,
    what: str,
    variable: str,
    describe: Callable[[Path], str],
    missing: str,
    create: str,
) -> Finding:
    """A secret file's health: present, private (0600 in a 0700 folder), readable and
    well-formed, and in production not among the data."""
    from ..vault import VaultError

    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return Finding(
            check,
            missing,
            f"no {what} at {path}",
            f"point {variable} at the existing one, or {create}",
        )
    if mode & 0o077:
        return Finding(
            check,
            "fail",
            f"{what} {path} has mode {mode:04o}: others on this machine may read it "
            "(and WriteVue refuses to use it)",
            f"chmod 600 {path}",
        )
    try:
        described = describe(path)
    except PermissionError:
        return Finding(
            check,
            "fail",
            f"this user cannot read {path}",
            "run doctor as the user WriteVue runs as, or give that user the file (chown)",
        )
    except VaultError as exc:
        return Finding(
            check, "fail", f"{path}: {exc}", f"point {variable} at a good one, or {create}"
        )
    problems: list[tuple[str, str, str]] = []
    folder = path.parent
    folder_mode = stat.S_IMODE(folder.stat().st_mode)
    if folder_mode & 0o077:
        problems.append(
            (
                "warn",
                f"its folder {folder} has mode {folder_mode:04o}: others may list it",
                f"chmod 700 {folder}",
            )
        )
    among = _among_the_data(path, settings)
    if settings.production and among is not None:
        problems.append(
            (
                "fail",
                f"beside the data (under {among}): a copy of the data would carry it",
                f"move it to a folder outside {among} (another volume, mode 0700), set "
                f"{variable} to its new path for every process, and restart them",
            )
        )
    where = (
        "apart from the data"
        if among is None
        else f"beside the data under {among} (production keeps it apart)"
    )
    summary = f"{path}: {described}, mode {mode:04o}, folder {folder_mode:04o}, {where}"
    merged = _merge(check, summary, problems)
    if merged.status != "ok":
        return replace(merged, summary=f"{path}: {merged.summary}")
    return merged


def _data_folders(settings: Settings) -> list[Path]:
    """The folders the data lives in: WRITEVUE_HOME and a SQLite warehouse's folder."""
    folders = [settings.home]
    sqlite = _sqlite_path(settings.database_url)
    if sqlite is not None:
        folders.append(sqlite.parent)
    return [folder.resolve() for folder in folders]


def _among_the_data(path: Path, settings: Settings) -> Path | None:
    resolved = path.resolve()
    for folder in _data_folders(settings):
        if resolved.is_relative_to(folder):
            return folder
    return None


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database).expanduser().resolve()


# -- the warehouse ---------------------------------------------------------------------------


def masked_url(url: str) -> str:
    """A database URL as it may be shown: its password replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a URL that cannot be read)"


def _passwords(settings: Settings) -> list[str]:
    """Every password the settings hold, to remove from error texts."""
    found = [settings.smtp_password or ""]
    for url in (settings.database_url, settings.dagster_database_url or ""):
        password = urlsplit(url).password if "://" in url else None
        if password:
            found += [password, unquote(password)]
    return [p for p in found if p]


def _first_line(exc: BaseException, settings: Settings) -> str:
    """An error's kind and first line, with every configured password removed."""
    inner = getattr(exc, "orig", None) or exc
    text = (str(inner).strip().splitlines() or [""])[0]
    for password in _passwords(settings):
        text = text.replace(password, "***")
    text = text[:200]
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def check_database(settings: Settings) -> Finding:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    from ..database import alembic_config, normalise_url

    url = settings.database_url
    shown = masked_url(url)
    sqlite = _sqlite_path(url)
    if url.startswith("sqlite") and (sqlite is None or not sqlite.exists()):
        # Connecting would create an empty file: say so instead.
        return Finding(
            "database",
            "fail",
            f"{shown}: there is no warehouse file",
            "run `writevue init` (it creates the schema), or set WRITEVUE_DATABASE_URL to the "
            "warehouse",
        )
    connect_args = (
        {"timeout": CONNECT_TIMEOUT_S}
        if sqlite is not None
        else {"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        engine = create_engine(normalise_url(url), connect_args=connect_args, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError, ValueError) as exc:
        return Finding(
            "database",
            "fail",
            f"{shown}: cannot connect ({_first_line(exc, settings)})",
            "start the database server, or correct WRITEVUE_DATABASE_URL (host, port, "
            "database, user and password)",
        )
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    if current is None:
        return Finding(
            "database",
            "fail",
            f"{shown}: reachable, but there is no schema",
            "run `writevue init` (it creates the schema; safe to run again)",
        )
    if current == head:
        return _ok("database", f"{shown}: at the newest migration ({head})")
    try:
        script.get_revision(current)
    except CommandError:
        return Finding(
            "database",
            "fail",
            f"{shown}: at revision {current}, which this WriteVue does not know (the newest it "
            f"knows is {head})",
            "run the WriteVue version that migrated it, or upgrade this one",
        )
    return Finding(
        "database",
        "fail",
        f"{shown}: at revision {current}; the newest migration is {head}",
        f"run `writevue init` to migrate it to {head} (safe to run again)",
    )


@contextmanager
def _database(settings: Settings) -> Iterator[Any]:
    from ..database import Database

    db = Database(settings.database_url)
    try:
        yield db
    finally:
        db.dispose()


# -- Dagster ---------------------------------------------------------------------------------

_START_DAEMON = (
    "start exactly one `dagster-daemon run -w workspace.yaml` with this DAGSTER_HOME "
    "(schedules, sensors and queued runs wait for it)"
)


def check_dagster_instance(settings: Settings) -> Finding:
    from dagster import DagsterInstance

    dagster_home = settings.dagster_home
    if not (dagster_home / "dagster.yaml").exists():
        return Finding(
            "dagster_instance",
            "fail",
            f"no dagster.yaml in {dagster_home} (DAGSTER_HOME)",
            "run `writevue init` for the embedded instance, or copy deploy/dagster.yaml "
            "there for PostgreSQL storage (production)",
        )
    try:
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            instance.get_runs_count()  # the storage answers
            # dagster-postgres' run storage, or WriteVue's pooled one (dagster_storage)
            postgres = any(
                cls.__module__.startswith("dagster_postgres")
                for cls in type(instance.run_storage).__mro__
            )
            coordinator = type(instance.run_coordinator).__name__
    except Exception as exc:  # whatever the storage raises: it cannot be used
        return Finding(
            "dagster_instance",
            "fail",
            f"{dagster_home}/dagster.yaml: its storage cannot be used "
            f"({_first_line(exc, settings)})",
            "check the DAGSTER_PG_* variables (host, port, database, user, password) and that "
            "the server is up; the webserver, the daemon and every run read the same",
        )
    storage = "PostgreSQL" if postgres else "SQLite"
    summary = f"{dagster_home}: {storage} storage, {coordinator}"
    if settings.production and not postgres:
        return Finding(
            "dagster_instance",
            "warn",
            f"{dagster_home}: SQLite storage serves one machine and slows as history grows",
            "copy deploy/dagster.yaml to $DAGSTER_HOME/dagster.yaml (every store in "
            "PostgreSQL) and set DAGSTER_PG_*",
        )
    return _ok("dagster_instance", summary)


def check_dagster_daemon(settings: Settings, *, now: float | None = None) -> Finding:
    """The daemon's heartbeats, as Dagster's own "Daemons" page reads them, judged at
    ``now``: every daemon the instance needs has beaten within ``DAEMON_STALE_S``."""
    from dagster import DagsterInstance

    now = time.time() if now is None else now
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        required = list(instance.get_required_daemon_types())
        beats = instance.get_daemon_heartbeats()
    if not required:
        return _ok("dagster_daemon", "this instance needs no daemon")
    heard = {kind: beats[kind] for kind in required if kind in beats}
    if not heard:
        return Finding(
            "dagster_daemon",
            _strict(settings),
            f"no heartbeat from the Dagster daemon ({settings.dagster_home})",
            _START_DAEMON,
        )
    ages = {kind: now - beat.timestamp for kind, beat in heard.items()}
    silent = sorted(set(required) - set(heard)) + sorted(
        k for k, a in ages.items() if a > DAEMON_STALE_S
    )
    if silent:
        return Finding(
            "dagster_daemon",
            _strict(settings),
            f"the daemon's last heartbeat was {_duration(max(ages.values()))} ago "
            f"(silent: {', '.join(silent)})",
            _START_DAEMON + "; if one runs, read its log",
        )
    problems = []
    daemons = {beat.daemon_id for beat in heard.values()}
    if len(daemons) > 1:
        problems.append(
            (
                "warn",
                f"heartbeats from {len(daemons)} daemons",
                "run exactly one dagster-daemon per instance",
            )
        )
    failing = sorted(kind for kind, beat in heard.items() if beat.errors)
    if failing:
        problems.append(
            (
                "warn",
                f"{', '.join(failing)} reported errors",
                "read them in the Dagster UI under Deployment, Daemons",
            )
        )
    summary = (
        f"all {len(required)} daemons heartbeating, the latest {_duration(min(ages.values()))} ago"
    )
    return _merge("dagster_daemon", summary, problems)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


# -- connections on the sandbox, the dashboard URL -------------------------------------------


def check_sandbox_connections(settings: Settings, db) -> Finding:
    """Connections whose API root is plain http or on this machine, where the sandbox
    runs, instead of the provider's."""
    from .. import registry
    from ..sources import SOURCES

    with db.session() as session:
        connections = registry.list_connections(session)
    local = []
    for connection in connections:
        source = SOURCES.get(connection.source)
        if source is None:
            continue
        try:
            origin = _origin(source.base_url(connection))
        except Exception:  # noqa: S112 - a broken spec: the connection's refresh reports it
            continue
        if origin is not None:
            local.append(f"{connection.id} ({connection.source}) reads {origin}")
    if not local:
        return _ok("sandbox_connections", "none: every connection reads its provider")
    listed = "; ".join(local[:LISTED]) + (
        f"; and {len(local) - LISTED} more" if len(local) > LISTED else ""
    )
    summary = (
        f"{plural(len(local), 'connection reads', 'connections read')} the sandbox or a "
        f"local server: {listed}"
    )
    if not settings.production:
        return _ok("sandbox_connections", summary)
    return Finding(
        "sandbox_connections",
        "fail",
        summary,
        "remove each (`writevue connection remove ID`) and add it again without "
        "--option base_url=..., so that it reads the provider",
    )


def _origin(base_url: str) -> str | None:
    """``scheme://host[:port]`` of an API root that is plain http or on this machine."""
    import ipaddress

    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "https" and not loopback:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def check_dashboard_url(settings: Settings) -> Finding:
    url = settings.dashboard_base_url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Finding(
            "dashboard_url",
            "fail",
            "WRITEVUE_DASHBOARD_URL is not an http(s) address",
            "set it to the address clients open, such as https://dash.agency.example",
        )
    if settings.production and parts.scheme != "https":
        return Finding(
            "dashboard_url",
            "fail",
            f"{url} is plain http: dashboard links, which work like passwords, would cross "
            "the network in clear",
            "serve the dashboards behind TLS (nginx, deploy/) and set "
            "WRITEVUE_DASHBOARD_URL=https://...",
        )
    return _ok("dashboard_url", url)


# -- SMTP ------------------------------------------------------------------------------------

_SMTP_FIXES = {
    "tls": "the server's certificate is not trusted for its name: set WRITEVUE_SMTP_CA_FILE "
    "or fix the certificate",
    "no starttls": "the server offers no STARTTLS: use smtps:// or another server",
    "no smtp auth": "the server takes no login here: unset WRITEVUE_SMTP_USER or use STARTTLS",
}


def check_smtp(settings: Settings, db) -> Finding:
    """SMTP is needed once a scorecard or alert mails someone; when it is configured, the
    server must greet (and take the login): connect, EHLO, STARTTLS, login, QUIT."""
    from ..notifications.smtp import SendError, SmtpConfig, SmtpSender

    recipients = _email_recipients(db) if db is not None else 0
    if not settings.smtp_url:
        if recipients:
            return Finding(
                "smtp",
                "fail",
                f"{plural(recipients, 'email recipient')} of scorecards or alerts, but "
                "WRITEVUE_SMTP_URL is not set: their mail is not sent",
                "set WRITEVUE_SMTP_URL (smtp+starttls://host:587), WRITEVUE_SMTP_USER and "
                "WRITEVUE_SMTP_PASSWORD_FILE (docs/notifications.md)",
            )
        return _ok("smtp", "not needed: WRITEVUE_SMTP_URL is not set and no one is mailed")
    try:
        config = SmtpConfig.from_settings(settings)
    except ConfigError as exc:
        return Finding("smtp", "fail", str(exc), "correct the variable the message names")
    assert config is not None
    config = replace(config, timeout_s=min(config.timeout_s, CONNECT_TIMEOUT_S))
    where = f"{config.host}:{config.port} ({config.security})"
    try:
        SmtpSender(config).check()
    except SendError as exc:
        if exc.kind.startswith("smtp 5") and config.user:
            fix = "check WRITEVUE_SMTP_USER and the password (WRITEVUE_SMTP_PASSWORD_FILE)"
        else:
            fix = _SMTP_FIXES.get(
                exc.kind,
                "check WRITEVUE_SMTP_URL's host and port, and that the server accepts "
                "connections from this machine",
            )
        return Finding("smtp", "fail", f"{where} cannot be used: {exc.kind}", fix)
    login = ", logged in" if config.user else ""
    return _ok(
        "smtp",
        f"{where} answered{login}; no mail sent ({plural(recipients, 'email recipient')})",
    )


def _email_recipients(db) -> int:
    from sqlalchemy import func, select

    from ..models import NotificationRecipient

    with db.session() as session:
        query = select(func.count()).where(
            NotificationRecipient.channel == "email",
            NotificationRecipient.unsubscribed_at.is_(None),
        )
        return session.scalar(query) or 0


# -- disk ------------------------------------------------------------------------------------


def check_disk(settings: Settings) -> Finding:
    path = settings.home
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return judge_disk(path, usage.free, usage.total)


def judge_disk(path: Path, free: int, total: int) -> Finding:
    share = free / total if total else 0.0
    summary = f"{_size(free)} free of {_size(total)} ({share:.0%}) under {path}"
    fix = (
        "free space on that file system (old files of other programs, Dagster runs past "
        "WRITEVUE_RUN_RETENTION_DAYS) or grow it: the warehouse, staging and logs write there"
    )
    if free < DISK_FAIL_BYTES:
        return Finding("disk", "fail", summary, fix)
    if free < DISK_WARN_BYTES or share < DISK_WARN_SHARE:
        return Finding("disk", "warn", summary, fix)
    return _ok("disk", summary)


def _size(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n // MB} MB"


# -- all of it -------------------------------------------------------------------------------


def run_checks(settings: Settings) -> list[Finding]:
    findings = [check_environment(settings), check_key_ring(settings)]
    findings.append(check_session_secret(settings))
    database = check_database(settings)
    findings.append(database)
    instance = check_dagster_instance(settings)
    findings.append(instance)
    if instance.status == "fail":
        findings.append(
            Finding(
                "dagster_daemon",
                "warn",
                "not checked: the Dagster instance cannot be opened",
                "fix the Dagster instance first",
            )
        )
    else:
        findings.append(check_dagster_daemon(settings))
    with _database_if(database, settings) as db:
        if db is None:
            findings.append(
                Finding(
                    "sandbox_connections",
                    "warn",
                    "not checked: the warehouse cannot be read",
                    "fix the database first",
                )
            )
        else:
            findings.append(check_sandbox_connections(settings, db))
        findings.append(check_dashboard_url(settings))
        findings.append(check_smtp(settings, db))
    findings.append(check_disk(settings))
    return findings


@contextmanager
def _database_if(database: Finding, settings: Settings) -> Iterator[Any]:
    if database.status == "fail":
        yield None
        return
    with _database(settings) as db:
        yield db


def _report(findings: list[Finding], production: bool | None) -> dict[str, Any]:
    statuses = {f.status for f in findings}
    worst = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"
    return {
        "production": production,
        "status": worst,
        "checks": [f.as_dict() for f in findings],
    }


def _print_text(findings: list[Finding]) -> None:
    head, *rest = findings
    if head.check == "environment" and head.status == "ok":
        print(f"writevue doctor: {head.summary}")
        findings = rest
    for finding in findings:
        label = "FAIL" if finding.status == "fail" else finding.status
        print(f"{label:<6}{finding.check.replace('_', ' '):<21}{finding.summary}")
        if finding.fix:
            print(f"{'':<6}fix: {finding.fix}")
    count = {s: sum(f.status == s for f in findings) for s in ("ok", "warn", "fail")}
    tally = f"{count['ok']} ok, {plural(count['warn'], 'warning')}"
    if count["fail"]:
        print(f"{tally}, {count['fail']} must be fixed")
    else:
        print(f"{tally}: nothing must be fixed")


@command(
    "doctor",
    "check this deployment: keys, database, Dagster, sandbox use, dashboard URL, SMTP, disk",
    arg("--json", action="store_true", help="print the checks as JSON"),
    audit=False,  # reads no tenant's data: settings, modes, revisions, counts, connection ids
    example=(
        "writevue doctor          # a line per check, and a fix under each that is not ok\n"
        "writevue doctor --json   # for monitoring; exit status 1 when something must be fixed"
    ),
)
def doctor(args) -> int:
    try:
        settings: Settings | None = Settings.from_env()
    except ConfigError as exc:
        settings = None
        findings = [
            Finding(
                "environment",
                "fail",
                str(exc),
                "correct that variable; nothing else can be checked until then",
            )
        ]
    if settings is not None:
        findings = run_checks(settings)
    if args.json:
        production = settings.production if settings is not None else None
        print(json.dumps(_report(findings, production), indent=2))
    else:
        _print_text(findings)
    return 1 if any(f.status == "fail" for f in findings) else 0
