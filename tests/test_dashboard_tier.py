"""The dashboard tier is stateless: two `writevue serve` processes on one PostgreSQL warehouse.

What a load balancer in front of several dashboard processes relies on, tried with real
processes: guesses spread over both spend one budget, a link revoked once stops its open
pages on each process within 2 s, and a page served by one process works with its
websocket on the other (the signed session token carries everything the session needs).
The limiter's rule itself is tried on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import hashlib
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, inspect, select
from support import add_tenant_with_facts, remember_secret, start_dashboard_server
from tornado.httpclient import HTTPClientError

from dashboard_server.limiter import SURFACES, SharedLimiter, shared_limiters
from dashboard_server.probe import DocumentSocket, run_sync, session_token, socket_url
from writevue_pipelines import invites, links
from writevue_pipelines.home import init_home
from writevue_pipelines.models import GuessFailure
from writevue_pipelines.processes import Child
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import ConfigError, Settings
from writevue_pipelines.vault import VaultError

GONE = "This link no longer works"
LIMIT = 6
TODAY = dt.datetime.now(dt.UTC).date()


def from_address(address: str) -> httpx.Client:
    """A client whose requests come from ``address`` (any 127.x.y.z on Linux)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60)


# -- the shared limiter's rule, on SQLite and PostgreSQL -----------------------------------------


def over_budget(times: list[float], limit: int, window_s: float) -> list[bool]:
    """The rule, stated plainly: a failure is over budget when more than ``limit``
    failures (itself included) fell inside the window ending with it."""
    return [
        sum(1 for t in times[: i + 1] if t > now - window_s) > limit for i, now in enumerate(times)
    ]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=40.0), min_size=1, max_size=30),
    limit=st.integers(min_value=1, max_value=5),
)
def test_the_shared_limiter_keeps_the_sliding_window_rule(any_runtime, gaps, limit):
    key = f"192.0.2.{secrets.randbelow(250)}-{secrets.token_hex(4)}"  # a new address each time
    limiter = SharedLimiter(any_runtime, "links", limit, window_s=60.0)
    start = time.time()
    times = [start + sum(gaps[: i + 1]) for i in range(len(gaps))]
    answers = [limiter.count(key, now) for now in times]
    assert answers == over_budget(times, limit, 60.0)


def test_budgets_are_per_surface_and_rows_per_address_are_bounded(any_runtime):
    limiters = shared_limiters(any_runtime)  # the server's: WRITEVUE_GUESS_LIMIT (20) each
    links_limiter, invites_limiter = limiters["links"], limiters["invites"]
    now = time.time()
    flood = [links_limiter.count("198.51.100.7", now + i / 1000) for i in range(200)]
    assert flood[:20] == [False] * 20 and all(flood[20:])
    # the other surfaces' budgets are untouched, and so are other addresses
    assert not invites_limiter.count("198.51.100.7", now + 1)
    assert not limiters["unsubscribe"].count("198.51.100.7", now + 1)
    assert not links_limiter.count("198.51.100.8", now + 1)
    with any_runtime.db.session() as session:
        rows = session.scalars(select(GuessFailure)).all()
    per_surface = {surface: [r for r in rows if r.surface == surface] for surface in SURFACES}
    assert len(per_surface["links"]) == 20 + 1  # a ring of 20 for the flood, 1 for .8
    assert len(per_surface["invites"]) == len(per_surface["unsubscribe"]) == 1
    # no address is stored: a keyed hash, not one a dump could be searched with
    plain = hashlib.sha256(b"198.51.100.7").hexdigest()
    for row in rows:
        assert "198.51.100" not in row.key_hmac and row.key_hmac not in plain
    # a quiet window later the flood's address has its budget back, and the old rows go
    later = now + 61
    assert not links_limiter.count("198.51.100.7", later)
    with any_runtime.db.session() as session:
        oldest = session.scalar(select(GuessFailure.at).order_by(GuessFailure.at))
        left = session.scalars(select(GuessFailure).where(GuessFailure.surface == "links")).all()
    assert oldest >= later - 60 and len(left) == 2  # the .8 row and the new one


def test_a_limiter_that_cannot_reach_the_warehouse_counts_in_its_process(tmp_path, caplog):
    settings = Settings.from_env(
        {
            "WRITEVUE_HOME": str(tmp_path / "home"),
            # nothing listens on port 1: every connection is refused at once
            "WRITEVUE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing",
            "WRITEVUE_SESSION_SECRET": secrets.token_urlsafe(32),
        }
    )
    runtime = Runtime(settings)
    limiter = SharedLimiter(runtime, "links", 3)
    with caplog.at_level(logging.ERROR, logger="writevue.limiter"):
        answers = [limiter.fail("192.0.2.44") for _ in range(5)]
    assert answers == [False, False, False, True, True]
    said = [r.getMessage() for r in caplog.records if r.name == "writevue.limiter"]
    assert len(said) == 1 and "counting in this process only" in said[0]
    assert "192.0.2" not in said[0]
    runtime.close()


def hold_the_warehouse_lock(runtime: Runtime, holding: threading.Event, done: threading.Event):
    """Another connection holding what the limiter's write needs until ``done`` (at most a
    minute, so a limiter that waits for it cannot hang the test)."""
    if runtime.db.is_sqlite:
        import sqlite3

        path = runtime.db.engine.url.database
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        conn = psycopg.connect(runtime.db.url.replace("postgresql+psycopg://", "postgresql://"))
        conn.execute("LOCK TABLE guess_failures IN EXCLUSIVE MODE")
    try:
        holding.set()
        done.wait(timeout=60)
    finally:
        conn.rollback()
        conn.close()


def failures_stored(runtime: Runtime) -> int:
    with runtime.db.session() as session:
        return len(session.scalars(select(GuessFailure)).all())


def test_a_locked_warehouse_does_not_hold_the_limiter_and_the_budget_holds(any_runtime, caplog):
    """The limiter runs on the dashboard's event loop: with the warehouse locked by another
    connection it must answer at once (a short lock wait, then this process's count), not
    wait for the lock, and while it counts alone it asks the warehouse only now and then."""
    caplog.set_level(logging.INFO, logger="writevue.limiter")
    patient = SharedLimiter(any_runtime, "links", 3, retry_s=3600)
    eager = SharedLimiter(any_runtime, "invites", 3, retry_s=0)
    holding, done = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_the_warehouse_lock, args=(any_runtime, holding, done))
    holder.start()
    try:
        assert holding.wait(60)
        answers = [patient.fail("192.0.2.9") for _ in range(5)]
        eager_answer = eager.fail("192.0.2.9")
        answered_while_locked = holder.is_alive()
    finally:
        done.set()
        holder.join(90)
    assert answered_while_locked  # every answer came before the lock was let go
    assert answers == [False, False, False, True, True] and eager_answer is False
    # the lock gone: the patient one still counts alone (it retries only now and then) …
    assert patient.fail("192.0.2.10") is False and failures_stored(any_runtime) == 0
    # … the eager one, retrying at once, counts in the warehouse again
    assert eager.fail("192.0.2.10") is False and failures_stored(any_runtime) == 1
    said = [r.getMessage() for r in caplog.records if r.name == "writevue.limiter"]
    assert "counts in the warehouse again" in caplog.text
    assert not any("192.0.2" in line for line in said)


def test_a_process_over_budget_by_its_own_count_answers_without_writing(any_runtime):
    limiter = SharedLimiter(any_runtime, "links", 3)
    assert [limiter.fail("198.51.100.3") for _ in range(6)] == [False] * 3 + [True] * 3
    # its own failures are some of the shared ones: over here is over everywhere, so the
    # failures past the budget cost no write (the ring's numbering stopped at the budget)
    with any_runtime.db.session() as session:
        assert session.scalar(select(func.max(GuessFailure.seq))) == 3
    # another process (another limiter) spends the same budget: over at once
    assert SharedLimiter(any_runtime, "links", 3).fail("198.51.100.3") is True


def test_migration_0013_adds_and_removes_the_table(tmp_path):
    from alembic import command

    from writevue_pipelines.database import alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    command.upgrade(alembic_config(url), "0013")
    engine = make_engine(url)
    assert "guess_failures" in inspect(engine).get_table_names()
    command.downgrade(alembic_config(url), "0012")
    assert "guess_failures" not in inspect(engine).get_table_names()
    engine.dispose()


# -- the session secret from the environment ----------------------------------------------------


def test_the_session_secret_may_come_from_the_environment(tmp_path):
    secret = remember_secret(secrets.token_urlsafe(32))
    home = tmp_path / "home"
    settings = Settings.from_env({"WRITEVUE_HOME": str(home), "WRITEVUE_SESSION_SECRET": secret})
    assert secret not in repr(settings)
    init_home(settings)
    assert not settings.session_secret_file.exists()  # nothing written anywhere
    assert Runtime(settings).session_secret == secret
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env(
            {
                "WRITEVUE_HOME": str(home),
                "WRITEVUE_SESSION_SECRET": secret,
                "WRITEVUE_SESSION_SECRET_FILE": str(tmp_path / "secret"),
            }
        )
    short = Settings.from_env({"WRITEVUE_HOME": str(home), "WRITEVUE_SESSION_SECRET": "x" * 42})
    with pytest.raises(VaultError, match="too short") as refused:
        Runtime(short).session_secret  # noqa: B018
    assert "x" * 42 not in str(refused.value)


def test_a_secret_from_the_environment_is_not_rotated_by_the_command(tmp_path):
    secret = remember_secret(secrets.token_urlsafe(32))
    environ = {
        **os.environ,
        "WRITEVUE_HOME": str(tmp_path / "home"),
        "WRITEVUE_SESSION_SECRET": secret,
    }
    environ.pop("WRITEVUE_DATABASE_URL", None)
    environ.pop("DAGSTER_HOME", None)
    writevue = [sys.executable, "-m", "writevue_pipelines.cli"]
    made = subprocess.run([*writevue, "init"], env=environ, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    rotated = subprocess.run(
        [*writevue, "keys", "rotate-session-secret"], env=environ, capture_output=True, text=True
    )
    assert rotated.returncode != 0
    assert "WRITEVUE_SESSION_SECRET" in rotated.stderr and len(rotated.stderr.splitlines()) == 1
    assert not (tmp_path / "home" / "session-secret").exists()


# -- two dashboard processes, one warehouse -------------------------------------------------


def facts(days: int, charges: float) -> pl.DataFrame:
    day_list = [TODAY - dt.timedelta(days=i) for i in range(days)]
    return pl.DataFrame(
        {
            "metric": ["charges"] * days,
            "dimension": [""] * days,
            "day": day_list,
            "value": [charges + i for i in range(days)],
        }
    )


@dataclass
class Tier:
    """Two dashboard processes (``a`` and ``b``, their base URLs) on one PostgreSQL database,
    sharing the session secret through the environment, as a deployment gives it."""

    runtime: Runtime
    environ: dict[str, str]
    a: str
    b: str
    acme: str
    globex: str
    secret: str

    def link(self, tenant_id: str) -> tuple[links.LinkInfo, str]:
        with self.runtime.db.session() as session:
            return links.create_link(session, tenant_id)

    def writevue(self, *args: str) -> subprocess.CompletedProcess:
        """`writevue ARGS` as an operator runs it against this deployment."""
        return subprocess.run(
            [sys.executable, "-m", "writevue_pipelines.cli", *args],
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=120,
        )


def start_processes(home: Path, *envs: dict[str, str]) -> list[tuple[Child, str]]:
    """One dashboard process per ``envs`` entry (its settings), started side by side."""
    with concurrent.futures.ThreadPoolExecutor(len(envs)) as pool:
        started = [
            pool.submit(start_dashboard_server, home, home / f"serve-{n}.log", **env)
            for n, env in enumerate(envs)
        ]
        return [future.result() for future in started]


@pytest.fixture
def tier(tmp_path, postgres_url):
    secret = remember_secret(secrets.token_urlsafe(32))
    home = tmp_path / "home"
    environ = {
        "WRITEVUE_HOME": str(home),
        "WRITEVUE_DATABASE_URL": postgres_url,
        "WRITEVUE_SESSION_SECRET": secret,
        "WRITEVUE_GUESS_LIMIT": str(LIMIT),
    }
    settings = Settings.from_env(environ)
    init_home(settings)
    runtime = Runtime(settings)
    acme, _ = add_tenant_with_facts(runtime, "Acme Ltd", facts(30, 11.0))
    globex, _ = add_tenant_with_facts(runtime, "Globex Corp", facts(30, 90_001.0))
    server_env = {k: v for k, v in environ.items() if k != "WRITEVUE_HOME"}
    server_env["database_url"] = server_env.pop("WRITEVUE_DATABASE_URL")
    children = start_processes(home, server_env, server_env)
    try:
        yield Tier(
            runtime,
            {**os.environ, **environ},
            children[0][1],
            children[1][1],
            acme,
            globex,
            secret,
        )
    finally:
        for child, _ in children:
            child.stop()
        runtime.close()


async def document(ws_url: str, token: str) -> str | None:
    """The document a websocket hands out for ``token``, or None if it refuses."""
    try:
        socket = await DocumentSocket.open(ws_url, token)
    except (HTTPClientError, ConnectionError):
        return None
    try:
        return (await socket.pull()).text()
    except ConnectionError:
        return None
    finally:
        socket.close()


def test_guesses_spread_over_both_processes_spend_one_budget(tier):
    with tier.runtime.db.session() as session:
        _, invite_token = invites.create_invite(session, tier.acme)
    _, token = tier.link(tier.acme)
    with from_address("127.0.0.21") as client:
        statuses = []
        for n in range(LIMIT + 4):  # A, B, A, B, …
            base = (tier.a, tier.b)[n % 2]
            statuses.append(client.get(f"{base}/d/guess{n:040d}").status_code)
        assert statuses[:LIMIT] == [404] * LIMIT and statuses[LIMIT:] == [429] * 4
        for base in (tier.a, tier.b):
            assert client.get(f"{base}/d/{'G' * 43}").status_code == 429  # either process
            assert client.get(f"{base}/d/{token}").status_code == 200  # a live link opens
            # the invites' budget is another one, on both processes
            assert client.get(f"{base}/connect/{'N' * 43}").status_code == 404
            assert client.get(f"{base}/connect/{invite_token}").status_code == 200
    with from_address("127.0.0.22") as client:  # another address: a budget of its own
        assert client.get(f"{tier.b}/d/{'G' * 43}").status_code == 404


def test_a_link_revoked_once_stops_its_open_pages_on_every_process(tier):
    link, token = tier.link(tier.globex)
    # a page and its socket on A, on B, and a page from A whose socket went to B
    placed = [(tier.a, tier.a), (tier.b, tier.b), (tier.a, tier.b)]
    sessions = []
    for page_base, socket_base in placed:
        response = httpx.get(f"{page_base}/d/{token}", timeout=60)
        assert response.status_code == 200
        sessions.append((socket_url(f"{socket_base}/d/{token}"), session_token(response.text)))

    async def until_gone(socket: DocumentSocket, started: float) -> float | None:
        while (left := 2.0 - (time.monotonic() - started)) > 0:
            try:
                message = await socket.receive(left)
            except TimeoutError:
                return None
            if message is None:
                return None
            if GONE in message.text():
                return time.monotonic() - started
        return None

    async def revoke_while_open():
        sockets = [await DocumentSocket.open(url, token) for url, token in sessions]
        try:
            for socket in sockets:
                assert "Globex Corp" in (await socket.pull()).text()
            revoked = await asyncio.to_thread(tier.writevue, "link", "revoke", link.id)
            assert revoked.returncode == 0, revoked.stderr
            started = time.monotonic()
            return await asyncio.gather(*(until_gone(socket, started) for socket in sockets))
        finally:
            for socket in sockets:
                socket.close()

    took = run_sync(revoke_while_open())
    assert all(t is not None and t < 2.0 for t in took), took
    for base in (tier.a, tier.b):  # and neither process serves the link again
        assert httpx.get(f"{base}/d/{token}", timeout=60).status_code == 404


def test_a_page_from_one_process_works_with_its_socket_on_the_other(tier):
    _, acme_token = tier.link(tier.acme)
    _, globex_token = tier.link(tier.globex)
    page = httpx.get(f"{tier.a}/d/{acme_token}?range=7", timeout=60)
    assert page.status_code == 200
    session = session_token(page.text)
    on_b = run_sync(document(socket_url(f"{tier.b}/d/{acme_token}"), session))
    assert on_b is not None and "Acme Ltd" in on_b
    assert "data-days=&quot;7&quot;" in on_b  # the page's query came along in the token
    # the binding holds on B: A's session is refused under Globex's link there
    assert run_sync(document(socket_url(f"{tier.b}/d/{globex_token}"), session)) is None
    # and the other way round: a page from B, its socket on A
    page = httpx.get(f"{tier.b}/d/{globex_token}", timeout=60)
    on_a = run_sync(document(socket_url(f"{tier.a}/d/{globex_token}"), session_token(page.text)))
    assert on_a is not None and "Globex Corp" in on_a and "Acme Ltd" not in on_a


def test_a_process_with_another_secret_refuses_the_others_sessions(tmp_path, postgres_url):
    home = tmp_path / "home"
    environ = {"WRITEVUE_HOME": str(home), "WRITEVUE_DATABASE_URL": postgres_url}
    settings = Settings.from_env(environ)
    init_home(settings)
    runtime = Runtime(settings)
    try:
        tenant, _ = add_tenant_with_facts(runtime, "Acme Ltd", facts(30, 11.0))
        with runtime.db.session() as session:
            _, token = links.create_link(session, tenant)
        mine, other = (remember_secret(secrets.token_urlsafe(32)) for _ in range(2))
        (a, base_a), (b, base_b) = start_processes(
            home,
            *({"database_url": postgres_url, "WRITEVUE_SESSION_SECRET": s} for s in (mine, other)),
        )
        try:
            session = session_token(httpx.get(f"{base_a}/d/{token}", timeout=60).text)
            assert "Acme Ltd" in (
                run_sync(document(socket_url(f"{base_a}/d/{token}"), session)) or ""
            )
            # a deployment whose processes do not share the secret: B cannot check A's token
            assert run_sync(document(socket_url(f"{base_b}/d/{token}"), session)) is None
        finally:
            a.stop()
            b.stop()
    finally:
        runtime.close()
