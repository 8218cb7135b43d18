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
import uuid
from pathlib import Path

import pytest
from support import (
    CHILD_LOGS,
    DEVICES,
    OUTPUTS,
    SECRETS,
    describe_argv,
    find_leaks,
    remember_secret,
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
def postgres_url(request, postgres_server) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
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


# -- every secret the suite uses, and every log line and error text it produced -------------

_TEXTS: list[tuple[str, str]] = []  # (where, text)
_NOT_SECRET_FIELDS = {"tenant.name", "tenant.email"}


class _CaptureEverything(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _TEXTS.append((f"log {record.name}", logging.Formatter().format(record)))
        except Exception:
            _TEXTS.append((f"log {record.name}", str(record.msg)))


def _watch_secrets_and_errors() -> None:
    """Record every credential the vault encrypts, every link token, every error text."""
    from writevue_pipelines import errors, links
    from writevue_pipelines.vault import KeyRing

    encrypt = KeyRing.encrypt

    def recording_encrypt(self, plaintext, binding):
        if binding.field not in _NOT_SECRET_FIELDS:
            remember_secret(plaintext if isinstance(plaintext, str) else plaintext.decode())
        return encrypt(self, plaintext, binding)

    KeyRing.encrypt = recording_encrypt

    create_link = links.create_link

    def recording_create_link(*args, **kwargs):
        info, token = create_link(*args, **kwargs)
        remember_secret(token)
        return info, token

    links.create_link = recording_create_link

    init = errors.WriteVueError.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _TEXTS.append((f"error {type(self).__name__}", str(self)))

    errors.WriteVueError.__init__ = recording_init


_CHILD_NUMBERS = itertools.count(1)


def _watch_children(config) -> None:
    """Every child the suite starts has its output read for secrets: what a test reads
    through ``communicate`` (``subprocess.run`` too; a token the child prints is registered
    there), and the output file of every ``spawn`` (a server, the sandbox, Dagster), which
    gets one when its caller gave it none."""
    from writevue_pipelines import processes

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


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None:
        _TEXTS.append((f"exception in {item.nodeid}", str(call.excinfo.value)))


#: what children and Dagster write to files: logs, and Dagster's captured stdout/stderr
_OUTPUT_FILES = ("*.log", "*.out", "*.err")


def _leaks(basetemp: Path | None) -> list[str]:
    texts = [*_TEXTS, *OUTPUTS]
    files = list(CHILD_LOGS)
    if basetemp is not None and basetemp.exists():
        for pattern in _OUTPUT_FILES:
            files += [(f"file {path.name}", path) for path in basetemp.rglob(pattern)]
    for where, path in files:
        try:
            texts.append((where, path.read_text(errors="replace")))
        except OSError:
            continue
    return find_leaks(texts, SECRETS)


_LEAKS: list[str] = []


def pytest_sessionfinish(session, exitstatus):
    factory = getattr(session.config, "_tmp_path_factory", None)
    _LEAKS.extend(_leaks(factory.getbasetemp() if factory is not None else None))
    if _LEAKS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    # Test artifacts (screenshots) survive; scratch homes under tmp_path are pytest's.
    artifacts = Path(session.config.rootpath) / "test-artifacts"
    if artifacts.exists() and not any(artifacts.iterdir()):
        shutil.rmtree(artifacts, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    leaks = _LEAKS
    terminalreporter.section("secrets in logs and error texts", sep="-")
    terminalreporter.write_line(
        f"searched {len(_TEXTS)} log records and error texts, {len(OUTPUTS)} outputs of "
        f"children and {len(CHILD_LOGS)} files they wrote for {len(SECRETS)} secrets: "
        + ("none found" if not leaks else f"{len(leaks)} LEAKED")
    )
    for leak in leaks:
        terminalreporter.write_line(leak, red=True, bold=True)
    if not _missing:
        return
    terminalreporter.section("peers missing: these tests did NOT run", sep="!", red=True, bold=True)
    for kind, why in sorted(_missing.items()):
        terminalreporter.write_line(f"{kind}: {why}", red=True, bold=True)
    terminalreporter.write_line(
        "CI sets WRITEVUE_REQUIRE_POSTGRES=1 and WRITEVUE_REQUIRE_BROWSER=1: "
        "there, a missing peer is a failure."
    )
