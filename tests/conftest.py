"""Shared fixtures: a real SQLite home per test, the real PostgreSQL server, the sandbox.

PostgreSQL and browser tests skip when their peer is missing, unless
WRITEVUE_REQUIRE_POSTGRES=1 / WRITEVUE_REQUIRE_BROWSER=1 (as in CI) make a
missing peer a failure. The summary says loudly what did not run.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from support import (
    CHILD_LOGS,
    DEVICES,
    OUTPUTS,
    PLANTED,
    SECRET_BYTES,
    SECRETS,
    describe_argv,
    dump_postgres,
    find_leaks,
    remember_secret,
    remember_secret_bytes,
    sweep_databases,
    watch_output,
)

from writevue_devtools.peers import CHROMIUM, CHROMIUM_ARGS, POSTGRES_ADMIN_URL
from writevue_pipelines.home import init_home
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings
from writevue_sandbox import SandboxServer

_missing: dict[str, str] = {}


def _required(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def peer_missing(kind: str, why: str, require_var: str):
    """Skip, or fail when the run requires this peer."""
    _missing[kind] = why
    if _required(require_var):
        pytest.fail(f"{kind} is required ({require_var}=1) but unavailable: {why}", pytrace=False)
    pytest.skip(f"{kind} unavailable: {why}")


def pytest_collection_modifyitems(config, items):
    """A test's peers are its markers, so `-m postgres` or `-m "not browser"` select by
    them: ``postgres`` on every test that takes the server as a fixture or runs as the
    "postgres" case of a parameter (``any_runtime``), ``browser`` on every test that
    drives Chromium. A ``browser`` marker on a test that does not is an error.
    ``soak`` tests (the long forms, minutes each) are skipped unless selected with
    ``-m soak`` (``make soak``); their short forms run in the normal suite."""
    soak = "soak" in (config.getoption("markexpr") or "")
    for item in items:
        if not soak and item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.skip(reason="long form: make soak (or -m soak)"))
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if "postgres_server" in item.fixturenames or "postgres" in params:
            item.add_marker(pytest.mark.postgres)
        if "chromium_path" in item.fixturenames:
            item.add_marker(pytest.mark.browser)
        elif item.get_closest_marker("browser") is not None:
            raise pytest.UsageError(f"{item.nodeid} is marked browser but drives no Chromium")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("WRITEVUE_HOME", str(path))
    monkeypatch.delenv("WRITEVUE_DATABASE_URL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(path / "dagster"))
    return path


@pytest.fixture
def runtime(home) -> Runtime:
    settings = Settings.from_env()
    init_home(settings)
    rt = Runtime(settings)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        peer_missing(
            "PostgreSQL",
            f"{type(exc).__name__}: {exc}".splitlines()[0],
            "WRITEVUE_REQUIRE_POSTGRES",
        )
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(request, postgres_server, tmp_path_factory) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards; every table of
    every schema in it (Dagster's storage too) is dumped first, for the session's search
    for secrets (``pytest_sessionfinish``)."""
    import psycopg

    if request.node.get_closest_marker("postgres") is None:
        pytest.fail(
            f"{request.node.nodeid} uses PostgreSQL without the postgres marker: take it as a "
            'fixture or from a parameter named "postgres" (see pytest_collection_modifyitems)',
            pytrace=False,
        )

    name = f"writevue_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_server.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    started = time.monotonic()
    dump_postgres(f"{base}/{name}", tmp_path_factory.getbasetemp() / _POSTGRES_DUMPS)
    _SEARCHED["dump seconds"] = _SEARCHED.get("dump seconds", 0.0) + time.monotonic() - started
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def any_runtime(request, home, monkeypatch) -> Runtime:
    """The same test on a SQLite file and on the PostgreSQL server."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("WRITEVUE_DATABASE_URL", url)
    settings = Settings.from_env()
    init_home(settings)
    rt = Runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def sandbox():
    with SandboxServer() as server:
        yield server


@pytest.fixture
def instance():
    """A throwaway Dagster instance for one test."""
    from dagster import instance_for_test

    with instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        peer_missing("Chromium", f"no executable at {CHROMIUM}", "WRITEVUE_REQUIRE_BROWSER")
    try:
        import playwright  # noqa: F401
    except ImportError:
        peer_missing(
            "Chromium", "the playwright package is not installed", "WRITEVUE_REQUIRE_BROWSER"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_path):
    """Headless Chromium for a test module (Debian's, driven by playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        DEVICES.update(playwright.devices)
        try:
            yield chromium
        finally:
            chromium.close()


# -- every secret the suite uses, and every log line, error text and database it produced --------

_TEXTS: list[tuple[str, str]] = []  # (where, text)
#: the tenant's own name and contact email: personal data, not secrets. The client sees
#: them on its pages and the operator in `writevue tenant list` and every command's
#: output, so they are not searched in logs and outputs; they are still encrypted at rest,
#: and the database sweep searches for them (``_PERSONAL``).
_NOT_SECRET_FIELDS = {"tenant.name", "tenant.email"}
#: every tenant name and contact email the suite stored: searched in databases only
_PERSONAL: set[str] = set()
#: the variables that hand a secret to a child process (the OAuth client secrets are
#: every ``WRITEVUE_OAUTH_<SOURCE>_CLIENT_SECRET``)
_SECRET_VARIABLES = (
    "WRITEVUE_KEYS",
    "WRITEVUE_SESSION_SECRET",
    "WRITEVUE_SMTP_PASSWORD",
    "DAGSTER_PG_PASSWORD",
    "WV_SMTP_PEER_PASSWORD",
)
#: where ``postgres_url`` dumps each database before dropping it (under the basetemp)
_POSTGRES_DUMPS = "postgresql-dumps"
#: what the end of the session searched, for its summary (and the dumps' time)
_SEARCHED: dict = {}
#: Dagster instances the suite made in memory (``DagsterInstance.ephemeral``): nothing
#: of them is left to search at the end; counted in the summary
_EPHEMERAL_INSTANCES = itertools.count()


class _CaptureEverything(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _TEXTS.append((f"log {record.name}", logging.Formatter().format(record)))
        except Exception:
            _TEXTS.append((f"log {record.name}", str(record.msg)))


def _remember_key_ring(ring) -> None:
    """A key ring's keys, as its file and ``WRITEVUE_KEYS`` write them and as raw bytes."""
    import base64

    for key in ring._keys.values():
        remember_secret(base64.b64encode(key).decode())
        remember_secret_bytes(key)


def _remember_environment(env) -> None:
    """The secrets an environment hands over (a child's, or ``Settings.from_env``'s)."""
    from writevue_pipelines.vault import VaultError, key_ring_from_env

    for name, value in (env or {}).items():
        if not isinstance(name, str) or not isinstance(value, str) or not value.strip():
            continue
        if name == "WRITEVUE_KEYS":
            remember_secret(value.strip())
            try:
                _remember_key_ring(key_ring_from_env(value))
            except VaultError:  # a test's deliberately broken ring: no key in it
                pass
        elif name == "WRITEVUE_SESSION_SECRET":
            if len(value.strip()) >= 43:  # a usable one; a test's too-short "xxx…" is not
                remember_secret(value.strip())
        elif name in _SECRET_VARIABLES or (
            name.startswith("WRITEVUE_OAUTH_") and name.endswith("_CLIENT_SECRET")
        ):
            remember_secret(value.strip())


def _watch_secrets_and_errors() -> None:
    """Record every secret where it is made or handed over: every credential the vault
    encrypts (API keys, passwords, OAuth access and refresh tokens, PKCE verifiers,
    recipients' addresses and webhook URLs, rendered messages, message links), every
    dashboard link and connect invite token, every unsubscribe token, every key of every
    key ring, every session secret, the SMTP password, the OAuth client secret and the
    codes and tokens the sandbox's authorisation servers issue; and every error text."""
    from writevue_pipelines import errors, invites, links, session_secret, settings
    from writevue_pipelines.notifications import delivery, smtp
    from writevue_pipelines.vault import KeyRing
    from writevue_sandbox import google_oauth, oauth
    from writevue_sandbox.base import SandboxHandler

    encrypt = KeyRing.encrypt

    def recording_encrypt(self, plaintext, binding):
        # a queued message is compressed before it is encrypted: what it says is recorded
        text = plaintext if isinstance(plaintext, str) else delivery.unpack(plaintext).decode()
        if binding.field in _NOT_SECRET_FIELDS:
            _PERSONAL.add(text)
        else:
            remember_secret(text)
        return encrypt(self, plaintext, binding)

    KeyRing.encrypt = recording_encrypt

    # Every ring: generated, with a new key, read from a file or from WRITEVUE_KEYS.
    ring_init = KeyRing.__init__

    def recording_ring_init(self, keys, primary):
        ring_init(self, keys, primary)
        _remember_key_ring(self)

    KeyRing.__init__ = recording_ring_init

    def recording(function, *, token):
        """``function`` with the token ``token(result, args, kwargs)`` names remembered."""

        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            remember_secret(token(result, args, kwargs))
            return result

        return wrapper

    second = lambda result, args, kwargs: result[1]  # noqa: E731 -- (info, token)
    links.create_link = recording(links.create_link, token=second)
    links.rotate_link = recording(links.rotate_link, token=second)
    invites.create_invite = recording(invites.create_invite, token=second)
    # the unsubscribe token a message carries (delivery.queue makes it and its URL here)
    delivery.unsubscribe_url = recording(
        delivery.unsubscribe_url, token=lambda result, args, kwargs: args[1]
    )
    # the session secret, made (`writevue init`, rotation) or read from its file
    session_secret._new_secret = recording(
        session_secret._new_secret, token=lambda result, args, kwargs: result.strip()
    )
    session_secret.read_private_file = recording(
        session_secret.read_private_file,
        token=lambda result, args, kwargs: (
            result.strip() if len(result.strip()) >= session_secret.MIN_LENGTH else ""
        ),
    )

    from_settings = smtp.SmtpConfig.from_settings.__func__

    def recording_smtp(cls, settings_):
        config = from_settings(cls, settings_)
        if config is not None and config.password:
            remember_secret(config.password)
        return config

    smtp.SmtpConfig.from_settings = classmethod(recording_smtp)

    from_env = settings.Settings.from_env.__func__

    def recording_from_env(cls, environ=None):
        _remember_environment(os.environ if environ is None else environ)
        return from_env(cls, environ)

    settings.Settings.from_env = classmethod(recording_from_env)

    # What the sandbox's authorisation servers issue: codes (in the redirect) and tokens.
    remember_secret(oauth.SANDBOX_CLIENT_SECRET)
    for module in (oauth, google_oauth):
        module._with_query = recording(
            module._with_query, token=lambda result, args, kwargs: args[1].get("code", "")
        )
    write_json = SandboxHandler.write_json

    def recording_write_json(self, status, body):
        if isinstance(body, dict):
            for name in ("access_token", "refresh_token", "id_token"):
                if isinstance(body.get(name), str):
                    remember_secret(body[name])
        return write_json(self, status, body)

    SandboxHandler.write_json = recording_write_json

    init = errors.WriteVueError.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _TEXTS.append((f"error {type(self).__name__}", str(self)))

    errors.WriteVueError.__init__ = recording_init


def _watch_dagster_instances(config) -> None:
    """A test instance (``instance_for_test``) keeps its storage under the basetemp, where
    the session's sweep reads its run, event-log and schedule databases and compute
    logs, instead of a temporary folder removed when the test ends."""
    import contextlib

    import dagster
    from dagster._core.instance import DagsterInstance

    for_test = dagster.instance_for_test
    numbers = itertools.count(1)

    @contextlib.contextmanager
    def instance_in_basetemp(*args, temp_dir=None, **kwargs):
        if temp_dir is None:
            folder = config._tmp_path_factory.getbasetemp() / "dagster-instances"
            folder = folder / str(next(numbers))
            folder.mkdir(parents=True)
            temp_dir = str(folder)
        with for_test(*args, temp_dir=temp_dir, **kwargs) as instance:
            yield instance

    dagster.instance_for_test = instance_in_basetemp

    ephemeral = DagsterInstance.ephemeral  # a staticmethod

    def counting_ephemeral(*args, **kwargs):
        next(_EPHEMERAL_INSTANCES)
        return ephemeral(*args, **kwargs)

    DagsterInstance.ephemeral = staticmethod(counting_ephemeral)


_CHILD_NUMBERS = itertools.count(1)


def _watch_children(config) -> None:
    """Every child the suite starts has its output read for secrets: what a test reads
    through ``communicate`` (``subprocess.run`` too; a token the child prints is registered
    there), and the output file of every ``spawn`` (a server, the sandbox, Dagster), which
    gets one when its caller gave it none, and any file a test opened for a child's
    output. The secrets its environment hands it are registered (``_SECRET_VARIABLES``)."""
    from writevue_pipelines import processes

    popen_init = subprocess.Popen.__init__
    logged: set[str] = set()  # the output files recorded, spawn's among them

    def recording_popen_init(self, *args, **kwargs):
        _remember_environment(kwargs.get("env"))
        popen_init(self, *args, **kwargs)
        for stream in ("stdout", "stderr"):  # a file the caller opened for its output
            name = getattr(kwargs.get(stream), "name", None)
            if isinstance(name, str) and os.path.abspath(name) not in logged:
                logged.add(os.path.abspath(name))
                if os.path.isfile(name):
                    CHILD_LOGS.append((f"{stream} of {describe_argv(self.args)}", Path(name)))

    subprocess.Popen.__init__ = recording_popen_init

    communicate = subprocess.Popen.communicate

    def recording_communicate(self, *args, **kwargs):
        stdout, stderr = communicate(self, *args, **kwargs)
        watch_output(describe_argv(self.args), stdout, stderr)
        return stdout, stderr

    subprocess.Popen.communicate = recording_communicate

    spawn = processes.spawn

    def recording_spawn(name, argv, *, log_path=None, **kwargs):
        if log_path is None:
            folder = config._tmp_path_factory.getbasetemp() / "child-output"
            log_path = folder / f"{next(_CHILD_NUMBERS)}.log"
        CHILD_LOGS.append((f"output of {name} ({describe_argv(argv)})", Path(log_path)))
        logged.add(os.path.abspath(log_path))  # as the file Popen is given names it
        return spawn(name, argv, log_path=log_path, **kwargs)

    processes.spawn = recording_spawn


def pytest_configure(config):
    _watch_children(config)
    handler = _CaptureEverything(level=logging.DEBUG)
    for name in ("", "bokeh", "panel", "dagster", "tornado", "httpx", "authlib"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
    logging.getLogger().setLevel(min(logging.getLogger().level or logging.DEBUG, logging.INFO))
    _watch_secrets_and_errors()
    _watch_dagster_instances(config)
    _remember_environment(os.environ)


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None:
        _TEXTS.append((f"exception in {item.nodeid}", str(call.excinfo.value)))


#: what children and Dagster write to files: logs, and Dagster's captured stdout/stderr
_OUTPUT_FILES = ("*.log", "*.out", "*.err")


def _output_files(basetemp: Path | None) -> list[tuple[str, Path]]:
    """Every file holding a child's output, and every log file under the basetemp, once."""
    files = list(CHILD_LOGS)
    if basetemp is not None and basetemp.exists():
        for pattern in _OUTPUT_FILES:
            files += [(f"file {path.name}", path) for path in basetemp.rglob(pattern)]
    once: dict[Path, tuple[str, Path]] = {}
    for where, path in files:
        once.setdefault(path.resolve(), (where, path))
    return list(once.values())


def _leaks(files: list[tuple[str, Path]]) -> list[str]:
    texts = [*_TEXTS, *OUTPUTS]
    for where, path in files:
        try:
            texts.append((where, path.read_text(errors="replace")))
        except OSError:
            continue
    return find_leaks(texts, SECRETS)


def _remember_secret_files(basetemp: Path) -> None:
    """The key rings and session secrets children made (`writevue init` run as a
    command): every key ring file (any JSON file that reads as one), session secret file
    and password file under the basetemp."""
    from writevue_pipelines.vault import KeyRing, VaultError

    for folder, _, names in os.walk(basetemp):
        for name in names:
            path = Path(folder, name)
            is_ring = name.endswith(".json")
            is_secret = "secret" in name or "password" in name
            if not (is_ring or is_secret) or path.is_symlink():
                continue
            try:
                if path.stat().st_size > 65536:
                    continue
                text = path.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            if is_ring:
                try:
                    KeyRing.from_json(text)  # its keys are remembered as the ring is made
                except VaultError:
                    continue
            elif len(text.strip().splitlines()) == 1:  # a session secret, an SMTP password
                remember_secret(text.strip())


_LEAKS: list[str] = []


def pytest_sessionfinish(session, exitstatus):
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = factory.getbasetemp() if factory is not None else None
    if basetemp is not None:
        _remember_secret_files(basetemp)
    files = _output_files(basetemp)
    _SEARCHED["files"] = len(files)
    _LEAKS.extend(_leaks(files))
    if basetemp is not None:
        # Every database the run made: SQLite files anywhere under the basetemp (homes,
        # Dagster's storage), and the PostgreSQL databases `postgres_url` dumped.
        sweep = sweep_databases(basetemp, (SECRETS | SECRET_BYTES | _PERSONAL) - PLANTED)
        _SEARCHED["databases"] = sweep
        _LEAKS.extend(sweep.leaks)
    if _LEAKS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # Test artifacts (screenshots) survive; scratch homes under tmp_path are pytest's.
    artifacts = Path(session.config.rootpath) / "test-artifacts"
    if artifacts.exists() and not any(artifacts.iterdir()):
        shutil.rmtree(artifacts, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    leaks = _LEAKS
    terminalreporter.section("secrets in logs, error texts and databases", sep="-")
    sweep = _SEARCHED.get("databases")
    terminalreporter.write_line(
        f"searched {len(_TEXTS)} log records and error texts, {len(OUTPUTS)} outputs of "
        f"children, {_SEARCHED.get('files', 0)} log and output files"
        + (f", {sweep.summary()}" if sweep is not None else "")
        + f" for {len(SECRETS) + len(SECRET_BYTES)} secrets"
        + (f" ({len(_PERSONAL)} tenant names and emails: databases only)" if _PERSONAL else "")
        + ": "
        + ("none found" if not leaks else f"{len(leaks)} LEAKED")
    )
    for leak in leaks:
        terminalreporter.write_line(leak, red=True, bold=True)
    if "dump seconds" in _SEARCHED:
        terminalreporter.write_line(
            f"dumping the PostgreSQL databases before they were dropped took "
            f"{_SEARCHED['dump seconds']:.1f} s"
        )
    if sweep is not None and sweep.unreadable:
        terminalreporter.write_line(
            f"{len(sweep.unreadable)} read as raw bytes only: " + "; ".join(sweep.unreadable[:5])
        )
    ephemeral = next(_EPHEMERAL_INSTANCES)
    if ephemeral:
        terminalreporter.write_line(
            f"{ephemeral} Dagster instances in memory (execute_in_process without an "
            "instance) left no storage to search; their logs were captured above"
        )
    if not _missing:
        return
    terminalreporter.section("peers missing: these tests did NOT run", sep="!", red=True, bold=True)
    for kind, why in sorted(_missing.items()):
        terminalreporter.write_line(f"{kind}: {why}", red=True, bold=True)
    terminalreporter.write_line(
        "CI sets WRITEVUE_REQUIRE_POSTGRES=1 and WRITEVUE_REQUIRE_BROWSER=1: "
        "there, a missing peer is a failure."
    )
