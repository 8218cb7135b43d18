"""Shared fixtures: a real SQLite home per test, the real PostgreSQL server, the sandbox.

PostgreSQL and browser tests skip when their peer is missing, unless
WRITEVUE_REQUIRE_POSTGRES=1 / WRITEVUE_REQUIRE_BROWSER=1 (as in CI) make a
missing peer a failure. The summary says loudly what did not run.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from writevue_pipelines.home import init_home
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sandbox import SandboxServer
from writevue_pipelines.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "WRITEVUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CHROMIUM = os.environ.get("WRITEVUE_CHROMIUM", "/usr/bin/chromium")
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


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _missing:
        return
    terminalreporter.section("peers missing: these tests did NOT run", sep="!", red=True, bold=True)
    for kind, why in sorted(_missing.items()):
        terminalreporter.write_line(f"{kind}: {why}", red=True, bold=True)
    terminalreporter.write_line(
        "CI sets WRITEVUE_REQUIRE_POSTGRES=1 and WRITEVUE_REQUIRE_BROWSER=1: "
        "there, a missing peer is a failure."
    )


def pytest_sessionfinish(session, exitstatus):
    # Test artifacts (screenshots) survive; scratch homes under tmp_path are pytest's.
    artifacts = Path(session.config.rootpath) / "test-artifacts"
    if artifacts.exists() and not any(artifacts.iterdir()):
        shutil.rmtree(artifacts, ignore_errors=True)
