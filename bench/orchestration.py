"""Benchmark: a scheduled refresh of N connections through a real Dagster daemon.

    python -m bench.orchestration --connections 1000 [--instance postgres] [--repeat 3]

A fresh WRITEVUE_HOME (``writevue init``: SQLite warehouse, queued run coordinator, the
default run launcher) gets N Stripe connections on the sandbox (its own process). The
``stripe_refresh`` schedule is set to fire at the next whole minute; ``dagster-daemon``
evaluates it and launches the batched runs, at most as many at once as the instance
allows one provider (its pool limit, within ``max_concurrent_runs``). wall_s runs from
the scheduled tick to the end of the last run. The code location is served as in
production (deploy/: ``writevue code-server``, Dagster's ``dagster api grpc`` whose runs
are forked from a forkserver that imported the code once, the daemon's workspace pointing
at it); ``--code-server dagster`` uses Dagster's own ``dagster code-server start`` instead
(each run a new interpreter, importing everything again); ``--code-server daemon`` lets
the daemon start one from a ``python_module`` workspace instead, as the repository's
workspace.yaml does, where the daemon replaces it every 60 s (Dagster's
``RELOAD_WORKSPACE_INTERVAL``, not configurable), each new one importing the code again.
The embedded instance's storage is ``writevue init``'s: Dagster's SQLite files, kept open
(``dagster_storage.PooledSqliteStorage``).

The instance is ``writevue init``'s embedded one (SQLite files under DAGSTER_HOME) by
default; ``--instance postgres`` uses deploy/dagster.yaml, the production instance, on a
PostgreSQL server of the benchmark's own (``initdb`` in its folder), so that the server's
CPU (its backends included) is known and counted as Dagster's.

The baseline is the same work without Dagster, on the same connections after Dagster
is done (their cursors and facts reset, so it reads and writes exactly what the runs
did; the sandbox serves the same accounts, already warm), at the same concurrency: as
many worker processes as the instance runs at once, each taking the same batches one
after another and doing what a run's step does: ``refresh.refresh_connections`` and then
the in-run data checks (``checks.evaluate``), whose time is reported apart. The checks
are WriteVue's work, not Dagster's overhead; storing their results is Dagster's, and is
reported apart too: the check results the runs stored, times the CPU one stored result
costs this instance (measured after the runs, in this process and, with PostgreSQL, its
server).

CPU is read from /proc for every process of the daemon's tree (daemon, code server, run
workers, PostgreSQL; ended ones through their parents' children times) from the tick to
the last run's end, and for the baseline's workers with ``RUSAGE_CHILDREN`` (the work
only, not their interpreters' start: Dagster's imports in each run are its overhead).
``cpu_per_run_s`` is Dagster's CPU less the baseline's, per run. Its background, what the
daemon and the code server spend while no run is under way (sensor ticks, the run queue,
workspace refreshes), is measured before the tick and shown as a rate. Every Dagster
process imports compiled bytecode, as an installed release does (a cache folder of the
benchmark's own, filled before the tick), not the checkout's sources compiled again in
each run (PYTHONDONTWRITEBYTECODE). peak_rss_mb is the largest summed RSS of the daemon's
process tree (with the code server and PostgreSQL).

The two phases run one after the other, and on a shared machine each may run 15-20%
faster or slower than the other for reasons of the machine's own. ``--repeat N`` takes N
measurements, each Dagster's and then its baseline's from a new home, prints each one's
report, and ends with the median of each figure (and every measurement's ``wall_ratio``).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.procfs import rss_mb, stat_fields
from bench.sandbox_process import start_sandbox
from bench.workers import run_workers
from writevue_pipelines.processes import Child, free_port, spawn

REPO = Path(__file__).resolve().parents[1]
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
_CLOCK = os.sysconf("SC_CLK_TCK")
DAEMON = str(Path(sys.executable).parent / "dagster-daemon")
DAGSTER = str(Path(sys.executable).parent / "dagster")
WRITEVUE = str(Path(sys.executable).parent / "writevue")
#: seconds allowed for a separate code server to load the code, before the daemon starts
CODE_SERVER_START_S = 45
#: seconds after the daemon starts before its background CPU is measured (until the tick)
SETTLE_S = 20
#: check results stored (after the runs) to measure what storing one costs
CALIBRATION_RESULTS = 100
#: where Debian-style packages put PostgreSQL's server binaries, one folder per version
POSTGRES_BINARIES = Path("/usr/lib/postgresql")


def process_parents() -> dict[int, int]:
    """Every process's parent, from /proc: {pid: parent pid}."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


def descendants(root: int, parents: dict[int, int] | None = None) -> set[int]:
    """A process and its descendants (live or not yet reaped), from /proc."""
    parents = process_parents() if parents is None else parents
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def tree_rss_mb(root: int) -> float:
    """Summed RSS of a process and its descendants, from /proc."""
    total = 0.0
    for pid in descendants(root):
        try:
            total += rss_mb(pid)
        except OSError:
            continue
    return total


def kind_of(pid: int) -> str:
    """What a Dagster process is, from its command line."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    for marker, kind in _KINDS:
        if marker in command:
            return kind
    return "other"


_KINDS = (
    # The code server starts each run in a process of its own (multiprocessing, spawn).
    ("multiprocessing", "run workers"),
    ("execute_run", "run workers"),
    ("execute_step", "run workers"),
    ("api grpc", "code server"),
    ("writevue_pipelines.code_server", "code server"),
    ("code-server", "code server"),
    ("dagster-daemon", "daemon"),
    ("postgres", "PostgreSQL (Dagster's storage)"),
)


def _exited(pid: int) -> bool:
    """Whether this process has ended (a zombie, or gone)."""
    try:
        return not Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def tree_cpu_by_kind(roots: set[int]) -> dict[str, float]:
    """CPU seconds of these processes' trees by kind of process, ended children included.

    Each process counts its own user and system time; its waited-for children's
    (cutime, cstime) count as "ended, started by <its kind>", so a run worker that has
    ended and been reaped by the code server still counts, once.
    """
    parents = process_parents()
    pids = set().union(*(descendants(root, parents) for root in roots)) if roots else set()
    totals: dict[str, float] = {}
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except (OSError, IndexError):
            continue
        kind = kind_of(pid)
        if kind == "other" and _exited(pid):
            # An ended process not yet reaped (no command line any more) counts as what
            # started it, whose ended children it will be counted with once reaped.
            kind = kind_of(parents.get(pid, 0))
        own = (int(fields[11]) + int(fields[12])) / _CLOCK
        ended = (int(fields[13]) + int(fields[14])) / _CLOCK
        totals[kind] = totals.get(kind, 0.0) + own
        if ended:
            label = f"ended, started by {kind}"
            totals[label] = totals.get(label, 0.0) + ended
    return totals


def tree_cpu_s(roots: set[int]) -> float:
    """CPU seconds of these processes' trees, ended children included (see above)."""
    return sum(tree_cpu_by_kind(roots).values())


def become_subreaper() -> None:
    """Adopt orphaned descendants (a run worker whose parent died) so /proc still shows
    them under this process instead of init."""
    with_libc = ctypes.CDLL(None, use_errno=True)
    with_libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def dagster_roots(dagster_pids: set[int], sandbox_pid: int) -> set[int]:
    """The daemon, the code server and any descendant adopted by this process (never the
    sandbox)."""
    me = os.getpid()
    adopted = {pid for pid, parent in process_parents().items() if parent == me}
    return (adopted - {sandbox_pid}) | dagster_pids


def _loaded(client) -> bool:
    """Whether the code server answers with its code loaded (not an error, not silence)."""
    try:
        return "ListRepositoriesResponse" in client.list_repositories()
    except Exception:  # not listening yet
        return False


def start_code_server(workdir: Path, env: dict[str, str], kind: str = "separate"):
    """The code server as deploy/ runs it (``writevue code-server``), or with ``kind`` "dagster"
    Dagster's own ``dagster code-server start``, once its code is loaded: (child, port)."""
    from dagster._grpc.client import DagsterGrpcClient

    from writevue_pipelines.processes import free_port

    port = free_port()
    command = (
        [str(DAGSTER), "code-server", "start"]
        if kind == "dagster"
        else [str(WRITEVUE), "code-server"]
    )
    child = spawn(
        "the code server",
        [*command, "-m", "writevue_pipelines.defs",
         "--location-name", "writevue", "-h", "127.0.0.1", "-p", str(port), "-d", str(REPO)],
        log_path=workdir / "code-server.log",
        env=os.environ | env,
        cwd=REPO,
    )  # fmt: skip
    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    deadline = time.time() + 180
    while time.time() < deadline:
        if not child.alive():
            raise SystemExit(f"the code server exited; see {workdir / 'code-server.log'}")
        if _loaded(client):
            return child, port
        time.sleep(1)
    child.stop()
    raise SystemExit(f"the code server did not load in 180 s; see {workdir}")


# -- the instance's storage and the code's bytecode ----------------------------------------


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL will not run as root: as root, run it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_private_postgres(workdir: Path) -> tuple[Child, dict[str, str], Path]:
    """A PostgreSQL server of the benchmark's own, so that all of its CPU is Dagster's:
    (child, the ``DAGSTER_PG_*`` variables deploy/dagster.yaml reads, its folder)."""
    import psycopg

    versions = sorted(
        (path for path in POSTGRES_BINARIES.glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not versions:
        raise SystemExit(f"--instance postgres needs PostgreSQL's server in {POSTGRES_BINARIES}")
    # A folder of its own in the temporary folder, which the postgres user can reach
    # (the benchmark's own is its owner's alone: it holds the key ring).
    binaries = versions[-1]
    folder = Path(tempfile.mkdtemp(prefix="writevue-bench-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = folder / "data"
    subprocess.run(
        _as_postgres_user(
            [str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = spawn(
        "PostgreSQL",
        _as_postgres_user(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
             "-c", "listen_addresses=127.0.0.1"]
        ),
        log_path=workdir / "postgres.log",
    )  # fmt: skip
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    deadline = time.time() + 60
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as connection:
                connection.execute("CREATE DATABASE dagster")
            break
        except psycopg.OperationalError:
            if time.time() > deadline or not server.alive():
                server.stop()
                log = workdir / "postgres.log"
                raise SystemExit(f"PostgreSQL did not start; see {log}") from None
            time.sleep(0.5)
    pg_env = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(port),
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
    }
    return server, pg_env, folder


def warm_bytecode(env: dict[str, str]) -> None:
    """Compile what a run imports into the benchmark's bytecode cache (``PYTHONPYCACHEPREFIX``
    in ``env``), as installing a release does, before anything is measured."""
    subprocess.run(
        [sys.executable, "-c",
         "import writevue_pipelines.defs, dagster._cli, dagster._grpc.impl, "
         "dagster._core.execution.api"],
        check=True, cwd=REPO, env=os.environ | env, capture_output=True,
    )  # fmt: skip


def add_connections(runtime, url: str, n: int, prefix: str) -> list[str]:
    from writevue_pipelines import registry

    with runtime.db.session() as session:
        tenant = registry.add_tenant(session, runtime.keys, f"Bench {prefix}", "bench@example.com")
        return [
            registry.add_connection(
                session,
                runtime.keys,
                tenant,
                "stripe",
                "api_key",
                {"base_url": url},
                {"api_key": f"sk_test_{prefix}{index:05d}"},
            )
            for index in range(n)
        ]


def reset_connections(runtime, connection_ids: list[str]) -> None:
    """Forget what the runs did (cursors, facts, status), so the baseline does the same."""
    from sqlalchemy import delete, update

    from writevue_pipelines.models import Connection, Fact, SyncCursor

    with runtime.db.session() as session:
        session.execute(delete(SyncCursor).where(SyncCursor.connection_id.in_(connection_ids)))
        session.execute(delete(Fact).where(Fact.connection_id.in_(connection_ids)))
        session.execute(
            update(Connection)
            .where(Connection.id.in_(connection_ids))
            .values(status="active", last_error=None, last_refreshed_at=None)
        )


def instance_concurrency(dagster_home: Path) -> int:
    """Runs of one provider the instance runs at once: its pool limit within the run limit."""
    import yaml

    config = yaml.safe_load((dagster_home / "dagster.yaml").read_text()) or {}
    concurrency = config.get("concurrency", {})
    runs = concurrency.get("runs", {}).get("max_concurrent_runs") or 10
    pool = concurrency.get("pools", {}).get("default_limit") or runs
    return max(1, min(runs, pool))


# -- the baseline: what a run's step does, without Dagster --------------------------------


def baseline_worker(home: str, batches_file: str) -> dict:
    """Refresh and check these batches one after another, as consecutive runs would."""
    os.environ["WRITEVUE_HOME"] = home
    os.environ.pop("WRITEVUE_DATABASE_URL", None)
    from dagster import AssetKey

    from writevue_pipelines import refresh
    from writevue_pipelines.defs import checks
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.sources import get_source

    batches = json.loads(Path(batches_file).read_text())
    runtime = Runtime.from_env()
    source, key = get_source("stripe"), AssetKey("stripe_daily_metrics")
    cpu_start, started = time.process_time(), time.perf_counter()
    checks_s = checks_cpu = 0.0
    failed = results = 0
    for batch in batches:
        before = checks.connection_states(runtime, batch)
        outcomes = refresh.refresh_connections(runtime, batch)
        failures = {cid: o.error for cid, o in outcomes.items() if o.error is not None}
        failed += len(failures)
        check_start, check_cpu = time.perf_counter(), time.process_time()
        results += sum(
            1
            for _ in checks.evaluate(
                runtime, source, key, before, failures, report_passes=runtime.settings.check_passes
            )
        )
        checks_s += time.perf_counter() - check_start
        checks_cpu += time.process_time() - check_cpu
    return {
        "work_s": time.perf_counter() - started,
        "work_cpu_s": time.process_time() - cpu_start,
        "checks_s": checks_s,
        "checks_cpu_s": checks_cpu,
        "failed": failed,
        "check_results": results,
    }


@dataclass
class Baseline:
    wall_s: float
    cpu_s: float
    checks_s: float
    checks_cpu_s: float
    failed: int
    check_results: int


def run_baseline(
    home: Path, workdir: Path, connection_ids: list[str], batch: int, concurrency: int
) -> Baseline:
    batches = [connection_ids[i : i + batch] for i in range(0, len(connection_ids), batch)]
    files = []
    for index in range(concurrency):
        path = workdir / f"baseline-{index}.json"
        path.write_text(json.dumps(batches[index::concurrency]))
        files.append(path)
    started = time.perf_counter()
    reports = run_workers(
        "bench.orchestration",
        [["--baseline-worker", str(home), str(path)] for path in files],
        "the baseline",
    )
    return Baseline(
        # From the first start to the last end, less the slowest worker's start-up
        # (imports, as the runs' own are Dagster's): the work at this concurrency.
        wall_s=max(r["work_s"] for r in reports) if reports else time.perf_counter() - started,
        cpu_s=sum(r["work_cpu_s"] for r in reports),
        checks_s=max(r["checks_s"] for r in reports),
        checks_cpu_s=sum(r["checks_cpu_s"] for r in reports),
        failed=sum(r["failed"] for r in reports),
        check_results=sum(r["check_results"] for r in reports),
    )


# -- Dagster ---------------------------------------------------------------------------------


@dataclass
class Scheduled:
    runs: int
    succeeded: int
    materialised: int
    wall_s: float
    cpu_s: float
    startup_cpu_s: float
    peak_rss_mb: float
    #: CPU seconds from the tick to the end, by kind of process
    cpu_by_kind: dict[str, float]
    #: seconds after the tick: the first run queued, the first started; runs' mean length
    first_queued_s: float
    first_started_s: float
    mean_run_s: float
    #: CPU seconds per minute the daemon and the code server spent before the tick, settled
    background_cpu_per_min: float | None = None
    #: the events the runs stored (the daemon's planned events included), by type
    events: Counter = field(default_factory=Counter)
    #: mean seconds of a run's phases (``PHASES``) and of a freed slot's wait
    phases: dict[str, float] = field(default_factory=dict)
    #: CPU seconds one stored check result cost, measured after the runs
    check_result_cpu_s: float = 0.0
    #: the largest summed RSS of the PostgreSQL server's processes (MB), when it is ours
    postgres_peak_rss_mb: float | None = None
    #: the most runs under way at once, from their start and end (the instance's limit
    #: holds them to ``concurrency``)
    most_at_once: int = 0

    @property
    def check_results(self) -> int:
        return self.events.get("ASSET_CHECK_EVALUATION", 0)


#: a run's phases, from its events: (name, the event it starts with, the one it ends with)
#: (Dagster's run events keep their old names: a run is a "pipeline" in its event types.)
PHASES = (
    ("launched: run starting to its process started", "PIPELINE_STARTING", "PIPELINE_START"),
    ("set up: process started to step started", "PIPELINE_START", "STEP_START"),
    ("the step (refresh, checks, their events)", "STEP_START", "STEP_SUCCESS"),
    ("wound up: step ended to run ended", "STEP_SUCCESS", "PIPELINE_SUCCESS"),
)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at any moment (one that ends as
    another starts does not overlap it)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = under_way = 0
    for _, step in edges:
        under_way += step
        most = max(most, under_way)
    return most


def events_by_type(instance, run_ids: list[str]) -> tuple[Counter, dict[str, float]]:
    """The events stored for these runs, by Dagster event type ("log" for plain lines),
    and the mean seconds of each of a run's ``PHASES`` and of a slot's wait: from a run's
    end to the next run's start in the slot it freed (the run queue's dequeue interval and
    the launch), over the runs that waited for one."""
    counts: Counter = Counter()
    spans: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    starts, ends = [], []
    for run_id in run_ids:
        first: dict[str, float] = {}
        for record in instance.get_records_for_run(run_id, limit=1_000_000).records:
            entry = record.event_log_entry
            event = entry.dagster_event
            kind = event.event_type_value if event is not None else "log"
            counts[kind] += 1
            first.setdefault(kind, entry.timestamp)
        for name, begin, end in PHASES:
            if begin in first and end in first:
                spans[name].append(first[end] - first[begin])
        if "PIPELINE_STARTING" in first:
            starts.append(first["PIPELINE_STARTING"])
        ended = first.get("PIPELINE_SUCCESS", first.get("PIPELINE_FAILURE"))
        if ended is not None:
            ends.append(ended)
    waits = []
    for start in sorted(starts):
        before = [end for end in ends if end <= start]
        if before:
            waits.append(start - max(before))
    phases = {name: sum(v) / len(v) for name, v in spans.items() if v}
    if waits:
        phases["a freed slot's wait for the next run"] = sum(waits) / len(waits)
    return counts, phases


def check_result_cpu_s(instance, partitions: list[str], server_pids: set[int]) -> float:
    """CPU seconds one stored check result costs this instance (this process, and the
    PostgreSQL server when it is ours): results of a run of the benchmark's own, planned
    then reported per partition as a refresh step stores them, and the run's next event."""
    from dagster import AssetCheckEvaluation, AssetKey
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationPlanned,
    )
    from dagster._core.definitions.partitions.subset import DefaultPartitionsSubset
    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.storage.dagster_run import DagsterRun, make_new_run_id

    key, step = AssetKey("stripe_daily_metrics"), "stripe_refresh"
    run = instance.add_run(DagsterRun(job_name="bench_calibration", run_id=make_new_run_id()))
    instance.report_dagster_event(
        DagsterEvent(
            DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value,
            run.job_name,
            event_specific_data=AssetCheckEvaluationPlanned(
                asset_key=key,
                check_name="refreshed",
                partitions_subset=DefaultPartitionsSubset(set(partitions)),
            ),
            step_key=step,
        ),
        run.run_id,
    )
    started = time.process_time() + tree_cpu_s(server_pids)
    for partition in partitions:
        evaluation = AssetCheckEvaluation(
            asset_key=key,
            check_name="refreshed",
            passed=True,
            partition=partition,
            description="refreshed",
            metadata={"facts": 60, "duplicates": 0},
        )
        instance.report_dagster_event(
            DagsterEvent(
                DagsterEventType.ASSET_CHECK_EVALUATION.value,
                run.job_name,
                event_specific_data=evaluation,
                step_key=step,
            ),
            run.run_id,
        )
    # The run's next event, which the embedded instance's storage waits for to store a
    # run's check results together (writevue_pipelines.dagster_storage), counted with them.
    instance.report_engine_event("calibrated", run)
    return (time.process_time() + tree_cpu_s(server_pids) - started) / len(partitions)


def run_dagster(
    settings,
    workdir: Path,
    env: dict[str, str],
    ids: list[str],
    sandbox_pid: int,
    args,
    server: Child | None = None,
) -> Scheduled:
    from dagster import AssetKey, DagsterInstance, RunsFilter

    # The schedule fires at the first whole minute that leaves the daemon (and a separate
    # code server, which reads the cadence when it loads the code) time to start.
    lead = args.tick_lead + (CODE_SERVER_START_S if args.code_server != "daemon" else 0)
    tick = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead + 59)).replace(
        second=0, microsecond=0
    )
    env["WRITEVUE_REFRESH_CRON_STRIPE"] = f"{tick.minute} {tick.hour} * * *"
    code_server = None
    if args.code_server != "daemon":
        code_server, port = start_code_server(workdir, env, args.code_server)
        (workdir / "workspace.yaml").write_text(
            "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
            f"      port: {port}\n      location_name: writevue\n"
        )
    else:
        (workdir / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n      module_name: writevue_pipelines.defs\n"
            f"      location_name: writevue\n      working_directory: {REPO}\n"
        )
    daemon = None
    dagster_pids = {code_server.process.pid} if code_server is not None else set()
    server_pids = {server.process.pid} if server is not None else set()
    with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        instance.add_dynamic_partitions("stripe_connections", ids)
        try:
            daemon = spawn(
                "the daemon",
                [DAEMON, "run", "-w", "workspace.yaml"],
                log_path=workdir / "daemon.log",
                env=os.environ | env,
                cwd=workdir,
            )
            daemon_started = time.time()
            dagster_pids.add(daemon.process.pid)
            if time.time() > tick.timestamp() - 5:
                raise SystemExit("the daemon started too close to the tick; raise --tick-lead")
            expected = math.ceil(len(ids) / settings.refresh_batch)
            peak_rss = peak_server_rss = 0.0
            cpu_at_tick = settled = None
            deadline = time.time() + args.timeout + args.tick_lead + 60
            records = []
            while time.time() < deadline:
                roots = dagster_roots(dagster_pids, sandbox_pid) | server_pids
                if settled is None and time.time() >= daemon_started + SETTLE_S:
                    settled = (time.time(), tree_cpu_s(roots))
                if cpu_at_tick is None and time.time() >= tick.timestamp():
                    # Before the tick: the daemon's and code server's start (reported
                    # apart); from it, what the scheduled refresh costs.
                    cpu_at_tick = tree_cpu_by_kind(roots)
                    tick_seen = time.time()
                peak_rss = max(peak_rss, sum(tree_rss_mb(pid) for pid in dagster_pids))
                if server_pids:
                    peak_server_rss = max(
                        peak_server_rss, sum(tree_rss_mb(pid) for pid in server_pids)
                    )
                records = instance.get_run_records(
                    filters=RunsFilter(tags={"dagster/schedule_name": "stripe_refresh"})
                )
                if len(records) >= expected and all(
                    r.dagster_run.status.value in FINISHED for r in records
                ):
                    break
                if not daemon.alive():
                    raise SystemExit(f"the daemon exited; see {workdir / 'daemon.log'}")
                time.sleep(0.5)
            else:
                raise SystemExit(f"the runs did not finish in time; see {workdir}")
            cpu_at_end = tree_cpu_by_kind(dagster_roots(dagster_pids, sandbox_pid) | server_pids)
            end = max(r.end_time for r in records)
            by_kind = {
                kind: cpu - (cpu_at_tick or {}).get(kind, 0.0) for kind, cpu in cpu_at_end.items()
            }
            materialised = len(
                instance.get_materialized_partitions(AssetKey("stripe_daily_metrics"))
            )
        finally:
            if daemon is not None:
                # The daemon, its code server and any run worker share the daemon's process
                # group: stop() leaves none of them behind.
                daemon.stop(timeout=15)
            if code_server is not None:  # and so do a separate one and its runs
                code_server.stop(timeout=15)
        events, phases = events_by_type(instance, [r.dagster_run.run_id for r in records])
        per_result = check_result_cpu_s(instance, ids[:CALIBRATION_RESULTS], server_pids)
    background = None
    if settled is not None and cpu_at_tick is not None and tick_seen - settled[0] >= 10:
        background = (sum(cpu_at_tick.values()) - settled[1]) / (tick_seen - settled[0]) * 60
    return Scheduled(
        runs=len(records),
        succeeded=sum(r.dagster_run.status.value == "SUCCESS" for r in records),
        materialised=materialised,
        wall_s=end - tick.timestamp(),
        cpu_s=sum(by_kind.values()),
        startup_cpu_s=sum((cpu_at_tick or {}).values()),
        cpu_by_kind=by_kind,
        peak_rss_mb=peak_rss,
        first_queued_s=min(r.create_timestamp.timestamp() for r in records) - tick.timestamp(),
        first_started_s=min(r.start_time for r in records) - tick.timestamp(),
        mean_run_s=sum(r.end_time - r.start_time for r in records) / len(records),
        background_cpu_per_min=background,
        events=events,
        phases=phases,
        check_result_cpu_s=per_result,
        postgres_peak_rss_mb=peak_server_rss if server_pids else None,
        most_at_once=most_at_once([(r.start_time, r.end_time) for r in records]),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds to wait for the runs")
    parser.add_argument(
        "--tick-lead",
        type=int,
        default=75,
        help="seconds at least between starting the daemon and the schedule's tick",
    )
    parser.add_argument(
        "--code-server",
        choices=("separate", "dagster", "daemon"),
        default="separate",
        help="a code server of its own as in production (`writevue code-server`, runs "
        "forked already imported; the default), Dagster's `dagster code-server start` (each "
        "run a new interpreter), or one the daemon starts",
    )
    parser.add_argument(
        "--instance",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="writevue init's embedded instance (default), or deploy/dagster.yaml on a "
        "PostgreSQL server of the benchmark's own",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measurements (each Dagster's and then the baseline's, from a new home) to take; "
        "with more than one, the last line gives the medians",
    )
    parser.add_argument(
        "--baseline-worker", nargs=2, metavar=("HOME", "BATCHES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.baseline_worker:
        print(json.dumps(baseline_worker(*args.baseline_worker)))
        return
    # A kill of the bench still stops the daemon tree and the sandbox (see measure's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    os.environ.pop("WRITEVUE_DATABASE_URL", None)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    become_subreaper()
    figures = []
    for repeat in range(args.repeat):
        if args.repeat > 1:
            print(f"-- measurement {repeat + 1} of {args.repeat}", flush=True)
        figures.append(measure(args))
    if args.repeat > 1:
        summarise(args.connections, figures)


def measure(args) -> dict[str, float]:
    """One measurement, Dagster's and then the baseline's, in a WRITEVUE_HOME of its own:
    prints its report and returns its key figures."""
    n = args.connections
    workdir = Path(tempfile.mkdtemp(prefix="writevue-bench-orchestration-"))
    home = workdir / "home"
    env = {
        "WRITEVUE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "WRITEVUE_HISTORY_DAYS": str(args.history_days),
        # bytecode as an installed release has it, in a cache of the benchmark's own
        "PYTHONPYCACHEPREFIX": str(workdir / "bytecode"),
    }
    os.environ.update(env)

    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    server = pg_folder = None
    if args.instance == "postgres":
        server, pg_env, pg_folder = start_private_postgres(workdir)
        env |= pg_env
        os.environ.update(pg_env)
        (home / "dagster").mkdir(parents=True)
        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster" / "dagster.yaml")
    try:
        settings = Settings.from_env()
        init_home(settings)  # leaves an existing dagster.yaml alone
        warm_bytecode(env)
        runtime = Runtime(settings)
        batch = settings.refresh_batch
        concurrency = instance_concurrency(settings.dagster_home)
        sandbox, url = start_sandbox()
        try:
            ids = add_connections(runtime, url, n, "bench")
            ran = run_dagster(settings, workdir, env, ids, sandbox.process.pid, args, server)
            reset_connections(runtime, ids)
            base = run_baseline(home, workdir, ids, batch, concurrency)
        finally:
            sandbox.stop()
            runtime.close()
    finally:
        if server is not None:
            server.stop(timeout=30)
            shutil.rmtree(pg_folder, ignore_errors=True)
    return report(n, batch, concurrency, args, ran, base)


def summarise(n: int, figures: list[dict[str, float]]) -> None:
    """The median of each key figure over the measurements, and every measurement's
    ratios: each ratio is Dagster's against the baseline measured right after it, so
    that a machine slower or faster for a minute moves both sides of one ratio."""
    print(f"-- {len(figures)} measurements: medians")
    middle = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
    for key in ("wall_ratio", "cpu_per_run_s"):
        each = ", ".join(f"{f[key]:.2f}" for f in figures)
        print(f"{key}: median {middle[key]:.2f} ({each})")
    ratios = ",".join(f"{f['wall_ratio']:.2f}" for f in figures)
    print(
        f"connections={n} repeats={len(figures)} runs={middle['runs']:.0f} "
        f"wall_s={middle['wall_s']:.1f} baseline_s={middle['baseline_s']:.1f} "
        f"wall_ratio={middle['wall_ratio']:.2f} "
        f"wall_ratios={ratios} "
        f"cpu_per_run_s={middle['cpu_per_run_s']:.2f} "
        f"peak_rss_mb={max(f['peak_rss_mb'] for f in figures):.0f}"
    )


def report(
    n: int, batch: int, concurrency: int, args, ran: Scheduled, base: Baseline
) -> dict[str, float]:
    runs = max(ran.runs, 1)
    wall_ratio = ran.wall_s / base.wall_s
    overhead_cpu = (ran.cpu_s - base.cpu_s) / runs
    storing_checks = ran.check_results * ran.check_result_cpu_s / runs
    background = ran.background_cpu_per_min
    stored = sum(ran.events.values())
    rows = [
        ("connections", f"{n}"),
        ("batch (connections per run)", f"{batch}"),
        ("runs at once (instance's limit)", f"{concurrency}"),
        (
            "instance",
            "writevue init (SQLite)" if args.instance == "sqlite" else "deploy (PostgreSQL)",
        ),
        ("code server", args.code_server),
        ("history days", f"{args.history_days}"),
        ("runs launched by the schedule", f"{ran.runs} (succeeded {ran.succeeded})"),
        ("partitions materialised", f"{ran.materialised}"),
        ("Dagster: scheduled tick to last run end (s)", f"{ran.wall_s:.1f}"),
        (
            "  first run queued, started (s after the tick)",
            f"{ran.first_queued_s:.1f}, {ran.first_started_s:.1f}",
        ),
        ("  a run's length, start to end, mean (s)", f"{ran.mean_run_s:.1f}"),
        ("  runs under way at once, most (start to end)", f"{ran.most_at_once}"),
        *((f"    {name} (s)", f"{seconds:.2f}") for name, seconds in ran.phases.items()),
        ("baseline: same batches, same concurrency (s)", f"{base.wall_s:.1f}"),
        ("  of which the in-run checks (s, slowest worker)", f"{base.checks_s:.1f}"),
        ("wall_ratio (Dagster / baseline; target <= 2)", f"{wall_ratio:.2f}"),
        ("Dagster CPU, tick to end, all its processes (s)", f"{ran.cpu_s:.1f}"),
        *(
            (f"  {kind} (s)", f"{cpu:.1f}")
            for kind, cpu in sorted(ran.cpu_by_kind.items(), key=lambda item: -item[1])
        ),
        ("  daemon and code server start, before the tick (s)", f"{ran.startup_cpu_s:.1f}"),
        (
            "  background before the tick (CPU s per minute)",
            f"{background:.2f}" if background is not None else "not measured",
        ),
        ("events stored per run (the daemon's included)", f"{stored / runs:.0f}"),
        *(
            (f"  {kind} per run", f"{count / runs:.0f}")
            for kind, count in ran.events.most_common(4)
        ),
        ("  CPU per stored check result (ms)", f"{ran.check_result_cpu_s * 1000:.1f}"),
        ("baseline CPU, work only (s)", f"{base.cpu_s:.1f}"),
        ("  of which the in-run checks (s)", f"{base.checks_cpu_s:.1f}"),
        ("Dagster CPU overhead per run (s; target <= 1.5)", f"{overhead_cpu:.2f}"),
        ("  of which storing check results (s, estimated)", f"{storing_checks:.2f}"),
        ("peak RSS, daemon + code server + runs (MB)", f"{ran.peak_rss_mb:.0f}"),
    ]
    if ran.postgres_peak_rss_mb is not None:
        rows.append(
            ("peak RSS, PostgreSQL (MB, shared buffers in each)", f"{ran.postgres_peak_rss_mb:.0f}")
        )
    if base.failed:
        rows.append(("baseline: connections failed", f"{base.failed}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>22}")
    print(
        f"connections={n} runs={ran.runs} wall_s={ran.wall_s:.1f} "
        f"baseline_s={base.wall_s:.1f} wall_ratio={wall_ratio:.2f} checks_s={base.checks_s:.1f} "
        f"cpu_per_run_s={overhead_cpu:.2f} check_store_s={storing_checks:.2f} "
        f"peak_rss_mb={ran.peak_rss_mb:.0f}"
    )
    return {
        "runs": ran.runs,
        "wall_s": ran.wall_s,
        "baseline_s": base.wall_s,
        "wall_ratio": wall_ratio,
        "cpu_per_run_s": overhead_cpu,
        "peak_rss_mb": ran.peak_rss_mb,
    }


if __name__ == "__main__":
    main()
