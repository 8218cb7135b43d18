"""Crash consistency: a refresh, an erasure or a key rotation killed with SIGKILL at random
points and at named phases, then run again, leaves nothing half-written.

Each kill is a real ``kill -9`` of the process group of a real command (``writevue
refresh``, the Dagster run a launcher starts: ``dagster job execute``, ``writevue tenant
erase``, ``writevue keys rotate``) against a real SQLite file or the PostgreSQL server
and the sandbox on loopback. Where the kill lands is chosen by watching the peers, not by
hooks in the product: the sandbox's request counters (mid-fetch), a staging manifest
appearing (after staging), the warehouse holding a write transaction open (PostgreSQL: a
backend of the database with a transaction id; SQLite: the write lock taken), or a
random delay within the command's measured duration.

Old and new are told apart by the data: before each kill every connection's API key is
swapped for a new sandbox account's, whose charges differ on every day, so a refresh
that committed holds the new account's figures and one that did not the old one's, and
anything in between is a mix. The figures are compared on the days every refresh's
window covers (``_COMPARED_DAYS``: today is still growing and the window's first day
depends on the cursor's).

The short form (a few kills per scenario and database) runs in the normal suite; the
long form is marked ``soak``: ``make soak``, or ``pytest -m soak``, with
``WRITEVUE_SOAK_KILLS`` kills per scenario and database (50 by default).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from support import add_tenant_with_facts, new_stripe_key, remember_secret, stripe_connection

from writevue_pipelines import cli, registry
from writevue_pipelines.defs.refresh_now import refresh_now
from writevue_pipelines.defs.scaleout import run_config
from writevue_pipelines.models import Credential, DeletionRequest, Fact, Tenant
from writevue_pipelines.privacy import keys as key_rotation
from writevue_pipelines.refresh import RECORDS_FILE
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SOAK_KILLS = int(os.environ.get("WRITEVUE_SOAK_KILLS", "50"))
HISTORY_DAYS = 20
#: every window starts on or before today - LOOKBACK_DAYS + 1 (the cursor is today's or
#: yesterday's newest transaction), so a refresh rewrites every day in _COMPARED_DAYS
LOOKBACK_DAYS = HISTORY_DAYS + 2
CONNECTIONS = 3
SEALED = b"WVSEAL1\n"  # refresh._SEALED: what a sealed staging file starts with
PHASES = ("mid-fetch", "staged", "in-transaction", "random")


def _compared_days() -> tuple[dt.date, dt.date]:
    today = dt.datetime.now(dt.UTC).date()
    return today - dt.timedelta(days=HISTORY_DAYS - 1), today - dt.timedelta(days=1)


@pytest.fixture(autouse=True)
def windows(monkeypatch):
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", str(HISTORY_DAYS))
    monkeypatch.setenv("WRITEVUE_LOOKBACK_DAYS", str(LOOKBACK_DAYS))


def fresh(runtime: Runtime) -> Runtime:
    """The runtime as another process would see it now (its key ring read again)."""
    return Runtime(Settings.from_env())


# -- the killed command and where it is killed ----------------------------------------------


@dataclass
class Tally:
    """What the kills did: phase -> kills that landed, and runs that finished first."""

    killed: Counter = field(default_factory=Counter)
    finished: Counter = field(default_factory=Counter)

    def line(self) -> str:
        landed = ", ".join(f"{p} {n}" for p, n in sorted(self.killed.items()))
        early = sum(self.finished.values())
        return f"{sum(self.killed.values())} kills ({landed}); {early} runs finished first"


def start(argv: list[str], *, staged_on_disk: bool = False) -> subprocess.Popen:
    """A command in a process group of its own (so the kill takes any child with it).

    ``staged_on_disk``: every fetched connection's records wait for their load on disk,
    as they do once a run's loads fall behind (``WRITEVUE_STAGING_MEMORY_MB``), so a kill
    can land between the two with records staged."""
    memory = {"WRITEVUE_STAGING_MEMORY_MB": "0"} if staged_on_disk else {}
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **memory},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def kill_when(process: subprocess.Popen, ready, *, timeout: float = 120.0) -> bool:
    """SIGKILL the process group as soon as ``ready()``; False if it exited first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            return True
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            pytest.fail("the command neither finished nor reached its kill point")
        time.sleep(0.002)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return False


def after(seconds: float):
    """A ``ready`` that turns true ``seconds`` from now."""
    at = time.monotonic() + seconds
    return lambda: time.monotonic() >= at


def writing(runtime: Runtime):
    """A ``ready`` that is true while another process holds a write transaction open in
    the warehouse: on PostgreSQL a backend of this database with a transaction id, on
    SQLite the write lock taken (a BEGIN IMMEDIATE that cannot get it at once)."""
    url = runtime.db.engine.url
    if runtime.db.is_sqlite:
        path = url.database

        def locked() -> bool:
            probe = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                return True
            finally:
                probe.close()

        return locked
    import psycopg

    probe = psycopg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False), autocommit=True
    )

    def in_transaction() -> bool:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        ).fetchone()
        return row[0] > 0

    in_transaction.close = probe.close
    return in_transaction


# -- refresh: the warehouse as each connection holds it ------------------------------------


def stripe_requests(sandbox) -> int:
    return sum(n for name, n in sandbox.counters.items() if name.startswith("stripe."))


def state(runtime: Runtime, ids: list[str]) -> dict[str, tuple[frozenset, str | None]]:
    """Each connection's facts on the compared days, and its cursor."""
    first, last = _compared_days()
    out = {}
    with runtime.db.session() as session:
        for cid in ids:
            rows = session.execute(
                select(Fact.day, Fact.metric, Fact.dimension, Fact.value).where(
                    Fact.connection_id == cid, Fact.day >= first, Fact.day <= last
                )
            ).all()
            out[cid] = (
                frozenset(map(tuple, rows)),
                registry.get_cursor(session, cid, "balance_transactions"),
            )
    return out


def staging_is_sealed(runtime: Runtime) -> None:
    """No raw record readable on disk: every staged records file is sealed ciphertext
    (its key died with the killed run), the manifest holds counts only."""
    staging = runtime.settings.staging_dir
    if not staging.exists():
        return
    for path in staging.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        assert b"PAR1" not in data[:4] + data[-4:], f"readable parquet left in {path}"
        if path.name.startswith(RECORDS_FILE):
            assert data == b"" or data.startswith(SEALED), f"{path} is not sealed"
        else:
            assert path.name.startswith("manifest.json"), f"unexpected staging file {path}"


def swap_keys(runtime: Runtime, ids: list[str]) -> None:
    """Every connection reads a new sandbox account from now on: different figures."""
    with runtime.db.session() as session:
        for cid in ids:
            connection = registry.get_connection(session, cid)
            registry.put_secret(
                session,
                runtime.keys,
                connection.tenant_id,
                cid,
                "api_key",
                remember_secret(new_stripe_key()),
            )


def refresh_setup(runtime: Runtime, sandbox) -> list[str]:
    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, "Crash Co", "ops@crash.test")
        ids = [
            stripe_connection(
                session, runtime, tenant_id, sandbox.url, remember_secret(new_stripe_key())
            )
            for _ in range(CONNECTIONS)
        ]
    rerun(runtime, ids)
    return ids


def rerun(runtime: Runtime, ids: list[str]) -> None:
    report = refresh_now(runtime)
    assert report.ok and {c.connection_id for c in report.connections} == set(ids), [
        c.line() for c in report.failures
    ]


def cli_refresh() -> list[str]:
    return [sys.executable, "-m", "writevue_pipelines.cli", "refresh"]


def dagster_run(folder: Path, ids: list[str]) -> list[str]:
    """What a run launcher executes for a steps run of these connections."""
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump(run_config("stripe", ids)))
    return [
        str(BIN / "dagster"),
        "job",
        "execute",
        "-m",
        "writevue_pipelines.defs",
        "-a",
        "defs",
        "-j",
        "stripe_refresh_steps",
        "-c",
        str(config),
    ]


def measure(runtime: Runtime, sandbox, argv: list[str]) -> float:
    """Seconds from a run's first request to the sandbox to its exit (a run that is not
    killed)."""
    process = start(argv)
    before = stripe_requests(sandbox)
    while stripe_requests(sandbox) == before and process.poll() is None:
        time.sleep(0.002)
    began = time.monotonic()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return time.monotonic() - began


def kill_refreshes(
    runtime: Runtime, sandbox, argv, ids: list[str], kills: int, *, first_phase: int = 0
) -> Tally:
    """Kill ``argv`` ``kills`` times, at each phase in turn (from ``PHASES[first_phase]``),
    checking after every kill."""
    rng = random.Random(os.environ.get("WRITEVUE_SOAK_SEED"))
    duration = None  # measured when the first random kill needs it
    per_connection = 0
    tally = Tally()
    attempts = 0
    while sum(tally.killed.values()) < kills:
        attempts += 1
        assert attempts <= kills * 4, tally.line()
        phase = PHASES[(first_phase + attempts - 1) % len(PHASES)]
        swap_keys(runtime, ids)
        old = state(runtime, ids)
        before = stripe_requests(sandbox)
        staging = runtime.settings.staging_dir
        if phase == "mid-fetch":
            at = before + rng.randint(1, max(1, per_connection * len(ids) or 2 * len(ids)))
            ready = lambda at=at: stripe_requests(sandbox) >= at  # noqa: E731
        elif phase == "staged":
            ready = lambda staging=staging: any(staging.glob("*/manifest.json"))  # noqa: E731
        elif phase == "in-transaction":
            ready = writing(runtime)
        else:
            duration = duration or measure(runtime, sandbox, argv)
            started = [None]

            def ready(started=started, delay=rng.uniform(0, duration), before=before):
                if started[0] is None:
                    if stripe_requests(sandbox) == before:
                        return False
                    started[0] = time.monotonic()
                return time.monotonic() - started[0] >= delay

        try:
            killed = kill_when(start(argv, staged_on_disk=phase == "staged"), ready)
        finally:
            getattr(ready, "close", lambda: None)()
        (tally.killed if killed else tally.finished)[phase] += 1
        per_connection = max(per_connection, (stripe_requests(sandbox) - before) // len(ids))
        after_kill = state(runtime, ids)
        staging_is_sealed(runtime)
        rerun(runtime, ids)  # the rerun completes
        new = state(runtime, ids)
        for cid in ids:
            (old_facts, old_cursor), (facts, cursor) = old[cid], after_kill[cid]
            new_facts, new_cursor = new[cid]
            assert old_facts != new_facts, "the swapped account must change the figures"
            assert facts in (old_facts, new_facts), (
                f"{phase}: connection holds a mix of old and new aggregates"
            )
            if facts == old_facts:
                # the cursor never points past what was committed
                assert cursor == old_cursor, f"{phase}: cursor moved without its facts"
            else:
                assert cursor != old_cursor and cursor <= new_cursor, phase
        # The rerun loaded every connection, so nothing of any run is left in staging.
        assert not any(runtime.settings.staging_dir.glob("*/*")), "staging left behind"
    return tally


def check_no_duplicates(runtime: Runtime) -> None:
    with runtime.db.session() as session:
        total = session.scalar(select(func.count()).select_from(Fact))
        keys = session.scalar(
            select(func.count()).select_from(
                select(Fact.connection_id, Fact.day, Fact.metric, Fact.dimension)
                .distinct()
                .subquery()
            )
        )
    assert total == keys


def _refresh_case(
    any_runtime, sandbox, tmp_path, how: str, kills: int, record, first_phase: int = 0
) -> None:
    runtime = any_runtime
    ids = refresh_setup(runtime, sandbox)
    argv = cli_refresh() if how == "cli" else dagster_run(tmp_path, ids)
    tally = kill_refreshes(runtime, sandbox, argv, ids, kills, first_phase=first_phase)
    check_no_duplicates(runtime)
    record(f"refresh ({how})", tally)


@pytest.fixture
def record(request):
    """Print what the kills did (the figures docs/RELIABILITY.md quotes)."""
    database = "postgres" if "postgres" in request.node.name else "sqlite"

    def show(what: str, tally: Tally) -> None:
        print(f"\n[crash] {what} on {database}: {tally.line()}")

    return show


@pytest.mark.parametrize("how", ["cli", "dagster"])
def test_a_killed_refresh_leaves_old_or_new_aggregates_and_the_rerun_completes(
    any_runtime, sandbox, tmp_path, how, record
):
    # Short form: one kill each, inside the warehouse transaction (the CLI's) or right
    # after staging (the Dagster run's); the soak takes every phase in turn.
    phase = PHASES.index("in-transaction" if how == "cli" else "staged")
    _refresh_case(any_runtime, sandbox, tmp_path, how, 1, record, phase)


@pytest.mark.soak
@pytest.mark.timeout(3 * 3600)  # grows with WRITEVUE_SOAK_KILLS / examples
@pytest.mark.parametrize("how", ["cli", "dagster"])
def test_soak_refresh_killed_many_times(any_runtime, sandbox, tmp_path, how, record):
    _refresh_case(any_runtime, sandbox, tmp_path, how, SOAK_KILLS, record)


# -- erasure -------------------------------------------------------------------------------


def erase_argv(tenant_id: str) -> list[str]:
    return [sys.executable, "-m", "writevue_pipelines.cli", "tenant", "erase", tenant_id, "--yes"]


def new_client(runtime: Runtime, n: int) -> str:
    import polars as pl

    day = dt.date.today() - dt.timedelta(days=1)
    facts = pl.DataFrame(
        {"metric": ["charges"], "dimension": [""], "day": [day], "value": [float(n)]}
    )
    tenant_id, connection_id = add_tenant_with_facts(runtime, f"Erased Client {n}", facts)
    folder = runtime.settings.staging_dir / connection_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text("{}")
    return tenant_id


def check_erased(runtime: Runtime, tenant_id: str) -> None:
    with runtime.db.session() as session:
        assert session.get(Tenant, tenant_id) is None
        assert session.scalar(select(func.count()).where(Fact.tenant_id == tenant_id)) == 0
        requests = session.scalars(
            select(DeletionRequest).where(DeletionRequest.tenant_id == tenant_id)
        ).all()
    assert len(requests) == 1
    assert requests[0].status == "done" and requests[0].verified is True


def _erasure_done(runtime: Runtime, tenant_id: str) -> bool:
    with runtime.db.session() as session:
        request = session.scalars(
            select(DeletionRequest).where(DeletionRequest.tenant_id == tenant_id)
        ).one_or_none()
    return request is not None and request.status == "done" and bool(request.verified)


def _erasure_case(runtime: Runtime, kills: int, record) -> None:
    rng = random.Random(os.environ.get("WRITEVUE_SOAK_SEED"))
    calibration = new_client(runtime, 0)
    began = time.monotonic()
    assert kill_when(start(erase_argv(calibration)), lambda: False) is False
    duration = time.monotonic() - began
    check_erased(runtime, calibration)
    tally = Tally()
    for n in range(1, kills * 4):
        if sum(tally.killed.values()) >= kills:
            break
        tenant_id = new_client(runtime, n)
        killed = kill_when(start(erase_argv(tenant_id)), after(rng.uniform(0, duration)))
        (tally.killed if killed else tally.finished)["random"] += 1
        # The operator's rerun (or the sensor's) finishes it and proves it. A kill that
        # landed after the proof was committed leaves nothing to finish: the rerun then
        # answers "already erased, and verified" (exit 2), and the record must say so.
        if _erasure_done(runtime, tenant_id):
            assert cli.main(["tenant", "erase", tenant_id, "--yes"]) == 2
        else:
            assert cli.main(["tenant", "erase", tenant_id, "--yes"]) == 0
        check_erased(runtime, tenant_id)
    assert sum(tally.killed.values()) >= kills, tally.line()
    record("erasure", tally)


def test_a_killed_erasure_is_finished_and_verified_by_its_rerun(any_runtime, record):
    _erasure_case(any_runtime, 1, record)


@pytest.mark.soak
@pytest.mark.timeout(3 * 3600)  # grows with WRITEVUE_SOAK_KILLS / examples
def test_soak_erasure_killed_many_times(any_runtime, record):
    _erasure_case(any_runtime, SOAK_KILLS, record)


# -- key rotation ---------------------------------------------------------------------------


def rotate_argv() -> list[str]:
    return [sys.executable, "-m", "writevue_pipelines.cli", "keys", "rotate", "--batch", "3"]


def credentials(runtime: Runtime) -> dict[tuple[str, str], str]:
    """Every stored credential, decrypted with the ring as it is on disk now."""
    runtime = fresh(runtime)
    try:
        out = {}
        with runtime.db.session() as session:
            for cid in session.scalars(select(Credential.connection_id).distinct()):
                connection = registry.get_connection(session, cid)
                for name, value in registry.get_secrets(session, runtime.keys, connection).items():
                    out[(cid, name)] = value
        return out
    finally:
        runtime.close()


def _rotation_case(runtime: Runtime, sandbox_url: str, kills: int, record) -> None:
    rng = random.Random(os.environ.get("WRITEVUE_SOAK_SEED"))
    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, "Keys Co", "ops@keys.test")
        for _ in range(12):
            stripe_connection(
                session, runtime, tenant_id, sandbox_url, remember_secret(new_stripe_key())
            )
    expected = credentials(runtime)
    began = time.monotonic()
    assert kill_when(start(rotate_argv()), lambda: False) is False
    duration = time.monotonic() - began
    tally = Tally()
    for _ in range(kills * 4):
        if sum(tally.killed.values()) >= kills:
            break
        killed = kill_when(start(rotate_argv()), after(rng.uniform(0, duration)))
        (tally.killed if killed else tally.finished)["random"] += 1
        assert credentials(runtime) == expected  # every credential decrypts, mid-rotation too
        current = fresh(runtime)
        try:
            key_rotation.rotate_keys(current, batch_size=3)  # the rerun completes
            versions = key_rotation.count_by_version(current)
            ring = current.settings.key_file
            primary = key_rotation.load_key_ring(ring).primary
        finally:
            current.close()
        # every ciphertext under the one newest key: none left under an older one
        assert set(versions) == {primary}, versions
        assert credentials(runtime) == expected
    assert sum(tally.killed.values()) >= kills, tally.line()
    record("key rotation", tally)


def test_a_killed_key_rotation_resumes_and_every_credential_decrypts(any_runtime, sandbox, record):
    _rotation_case(any_runtime, sandbox.url, 1, record)


@pytest.mark.soak
@pytest.mark.timeout(3 * 3600)  # grows with WRITEVUE_SOAK_KILLS / examples
def test_soak_key_rotation_killed_many_times(any_runtime, sandbox, record):
    _rotation_case(any_runtime, sandbox.url, SOAK_KILLS, record)
