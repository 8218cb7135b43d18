"""Shared fixtures: a real SQLite home per test, the real PostgreSQL server, the sandbox.

PostgreSQL and browser tests skip when their peer is missing, unless
WRITEVUE_REQUIRE_POSTGRES=1 / WRITEVUE_REQUIRE_BROWSER=1 (as in CI) make a
missing peer a failure. The summary says loudly what did not run.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest
from support import SECRETS, remember_secret

from writevue_devtools.peers import CHROMIUM, POSTGRES_ADMIN_URL
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
def postgres_url(postgres_server) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg

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


def pytest_configure(config):
    handler = _CaptureEverything(level=logging.DEBUG)
    for name in ("", "bokeh", "panel", "dagster", "tornado", "httpx", "authlib"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
    logging.getLogger().setLevel(min(logging.getLogger().level or logging.DEBUG, logging.INFO))
    _watch_secrets_and_errors()


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None:
        _TEXTS.append((f"exception in {item.nodeid}", str(call.excinfo.value)))


def _leaks(basetemp: Path | None) -> list[str]:
    texts = list(_TEXTS)
    if basetemp is not None and basetemp.exists():
        for path in basetemp.rglob("*.log"):
            try:
                texts.append((f"file {path.name}", path.read_text(errors="replace")))
            except OSError:
                continue
    found = []
    for secret in SECRETS:
        for where, text in texts:
            if secret in text:
                found.append(f"{secret[:4]}… ({len(secret)} chars) appeared in {where}")
                break
    return found


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
        f"searched {len(_TEXTS)} log records and error texts for {len(SECRETS)} secrets: "
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
