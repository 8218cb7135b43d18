"""Benchmark: judging alerts and rendering scorecards against refreshing, and sending.

    python -m bench.notifications --tenants 1000

N tenants, each with one declarative REST connection to the benchmark sandbox (10 pages
of 100 records, 50 ms latency per request) whose spec names 20 metrics. In one run:

1. **refresh**: every connection fetched, aggregated and loaded, in worker processes
   (one per core, as concurrent batch runs are): ``bench.refresh``'s worker.
2. **evaluation**: what a ``notifications`` run does before it sends, for every tenant:
   unusual days of all 20 metrics, 5 alert rules (above, below, change, two anomaly rules), and
   a 15-metric scorecard compared with the previous period, rendered and queued for
   one recipient. Each tenant also holds 60 days of older history (inserted after the
   refresh, not fetched: the same weekdays' values four or eight weeks later), so the
   anomaly method has every weekday's history to read.
3. **sending**: the N queued scorecards over SMTP to a local mail catcher (aiosmtpd, in
   its own process), over as many connections at once as a run uses (``delivery.CONNECTIONS``).

Targets: evaluation ≤ 10% of the refresh (eval_ratio, wall time; CPU beside it), and
≥ 50 messages/s sent. The last line is machine-readable.

Fair to both sides: the same tenants and connections, each side in as many processes as
there are cores, every CPU second of those processes counted (the sandbox, which plays
the data's provider, counted for neither). Each process starts as the product's runs
start (``--start``): by default forked from a process that imported what ``writevue
code-server``'s forkserver imports (``writevue_pipelines.run_preload``: Dagster, the
definitions, and the modules a run imports when it starts), its CPU counted from the
fork; the preload, paid once per code server, is shown apart and counted for neither.
``--start spawn`` starts each as a new interpreter that imports everything itself (as
runs started before the code server forked them), its CPU counted from the interpreter's
start. Both start from compiled bytecode, as an installed WriteVue does (a
``PYTHONPYCACHEPREFIX`` in the work directory, filled before anything is timed), not from
source each time as a shell with ``PYTHONDONTWRITEBYTECODE`` would make them.

The evaluation takes seconds, all of them CPU, and a busy neighbour on a shared machine
moves such a figure by a fifth or more: it runs ``--repeat`` times (5) from the same
warehouse (copied before the first and put back before each other) and the medians of
its wall and CPU times are reported, each trial's beside them. The refresh, minutes of
mostly waiting, runs once. The machine's load (1-minute average) is shown for each step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procfs import cpu_s
from bench.workers import Forkserver, children_usage, run_workers

# ``bench.refresh`` and the sandbox's process helpers (httpx, Tornado) are imported where
# they are used: an evaluation worker is this module too, and a notifications run imports
# neither, so neither is counted in the evaluation's start-up.

METRICS = 20
AGGS = ("sum", "count", "mean", "last", "first")
#: tenants per notifications run (WRITEVUE_NOTIFY_BATCH's default)
BATCH = 500
#: days of older history per metric, before the 30 days the sandbox serves
HISTORY_DAYS = 60


def spec(base_url: str) -> str:
    from bench.refresh import PER_PAGE, SPEC_HEAD

    parts = [SPEC_HEAD.format(base_url=base_url, per_page=PER_PAGE)]
    for index in range(METRICS):
        agg = AGGS[index % len(AGGS)]
        field = "" if agg == "count" else 'field = "amount"\n'
        kind = 'kind = "gauge"\n' if agg in ("last", "first") else ""
        parts.append(f'[[mapping.metrics]]\nname = "m{index:02d}"\n{field}agg = "{agg}"\n{kind}')
    return "\n".join(parts)


def prepare(base_url: str, n: int, home: str) -> tuple[list[str], list[str]]:
    """N tenants with one connection each."""
    from bench.refresh import keys

    os.environ["WRITEVUE_HOME"] = home
    os.environ.pop("WRITEVUE_DATABASE_URL", None)
    from writevue_pipelines import registry
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import get_settings

    init_home(get_settings())
    runtime = Runtime.from_env()
    spec_path = Path(home) / "bench-spec.toml"
    spec_path.write_text(spec(base_url))
    tenants, connections = [], []
    with runtime.db.session() as session:
        for index, key in enumerate(keys(n)):
            tenant_id = registry.add_tenant(
                session, runtime.keys, f"Bench tenant {index}", f"t{index}@bench.test"
            )
            connection_id = registry.add_connection(
                session,
                runtime.keys,
                tenant_id,
                "rest",
                "api_key",
                {"spec": str(spec_path)},
                {"api_key": key},
            )
            tenants.append(tenant_id)
            connections.append(connection_id)
    runtime.close()
    return tenants, connections


def add_history(connections: list[str]) -> None:
    """60 days of older history per metric, before the 30 days the sandbox serves: each
    day the value of the same weekday four (or eight, twelve) weeks later, so the history
    looks like the metric's present (a history of another scale would make every recent
    day look unusual). Inserted after the refresh: a first refresh makes the connection's
    facts equal what the source reports over its whole window, which would remove them."""
    import polars as pl
    from sqlalchemy import select

    from writevue_pipelines import registry, warehouse
    from writevue_pipelines.models import Fact
    from writevue_pipelines.runtime import Runtime

    runtime = Runtime.from_env()
    today = dt.datetime.now(dt.UTC).date()
    with runtime.db.session() as session:
        for connection_id in connections:
            connection = registry.get_connection(session, connection_id)
            served = {
                (metric, dimension, day): value
                for metric, dimension, day, value in session.execute(
                    select(Fact.metric, Fact.dimension, Fact.day, Fact.value).where(
                        Fact.tenant_id == connection.tenant_id,
                        Fact.connection_id == connection_id,
                        Fact.day < today,
                    )
                )
            }
            first = min((day for _, _, day in served), default=today)
            rows = []
            for metric, dimension in {(m, d) for m, d, _ in served}:
                for back in range(HISTORY_DAYS):
                    day = first - dt.timedelta(days=1 + back)
                    later = day + dt.timedelta(days=28)
                    while later < first:
                        later += dt.timedelta(days=28)
                    value = served.get((metric, dimension, later))
                    if value is not None:
                        rows.append((metric, dimension, day, value))
            history = pl.DataFrame(
                rows, schema=["metric", "dimension", "day", "value"], orient="row"
            )
            warehouse.upsert_facts(session, connection, history, window_start=None)
    runtime.close()


def configure(tenants: list[str]) -> None:
    """A 15-metric scorecard and 5 alert rules per tenant (after the refresh: a metric
    ref is checked against what the tenant's connections report)."""
    from writevue_pipelines.notifications import config
    from writevue_pipelines.runtime import Runtime

    runtime = Runtime.from_env()
    with runtime.db.session() as session:
        for index, tenant_id in enumerate(tenants):
            config.add_scorecard(
                session,
                runtime.keys,
                tenant_id,
                name="Weekly",
                metrics=[f"rest.m{m:02d}" for m in range(15)],
                period="last_7_days",
                comparison="previous",
                cadence="weekly",
                weekday=0,
                emails=[f"client{index}@bench.test"],
            )
            rules = [
                ("m15", "above", 1e9),
                ("m16", "below", -1.0),
                ("m17", "change", 50.0),
                ("m18", "anomaly", None),
                ("m19", "anomaly", None),
            ]
            for metric, condition, threshold in rules:
                config.add_alert(
                    session,
                    runtime.keys,
                    tenant_id,
                    metric=f"rest.{metric}",
                    condition=condition,
                    threshold=threshold,
                    emails=[f"client{index}@bench.test"],
                )
    runtime.close()


def refresh(
    home: str, connections: list[str], workdir: str, processes: int, forkserver: Forkserver | None
) -> dict:
    from bench import refresh as refresh_bench

    files = []
    for index in range(processes):
        path = Path(workdir) / f"ids-{index}.json"
        path.write_text(json.dumps(connections[index::processes]))
        files.append(path)
    started = time.perf_counter()
    shares = [(home, str(path)) for path in files]
    reports, cpu_s = _workers(
        forkserver, refresh_bench.worker, ("bench.refresh", "--worker"), shares, "refresh"
    )
    return {
        "wall_s": time.perf_counter() - started,
        # every CPU second the workers used, from their fork (or interpreter start) on
        "cpu_s": cpu_s,
        # the refresh itself (``refresh.refresh_connections``), summed over the workers
        "work_cpu_s": sum(r["work_cpu_s"] for r in reports),
        "facts": sum(r["facts"] for r in reports),
    }


def evaluate_worker(home: str, ids_file: str) -> dict:
    """One ``notifications`` run's evaluation: judge its tenants, render their scorecards."""
    os.environ["WRITEVUE_HOME"] = home
    from sqlalchemy import select

    from writevue_pipelines.models import Scorecard
    from writevue_pipelines.notifications import runner
    from writevue_pipelines.runtime import Runtime

    tenants, due_at = json.loads(Path(ids_file).read_text())
    due_at = dt.datetime.fromisoformat(due_at)
    runtime = Runtime.from_env()
    startup_s = time.time() - float(os.environ["BENCH_SPAWNED_AT"])
    with runtime.db.session() as session:
        due = [
            (card, due_at)
            for card in session.scalars(
                select(Scorecard.id).where(Scorecard.tenant_id.in_(tenants))
            )
        ]
    report = runner.RunReport()
    now = dt.datetime.now(dt.UTC)
    started, started_cpu = time.perf_counter(), time.process_time()
    runner.evaluate_batch(runtime, tenant_ids=tenants, scorecards=due, now=now, report=report)
    wall = time.perf_counter() - started
    work_cpu = time.process_time() - started_cpu
    runtime.close()
    if report.errors:
        raise SystemExit(f"{len(report.errors)} not judged, first: {report.errors[0]}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "startup_s": startup_s,
        "eval_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "work_cpu_s": work_cpu,
        "scorecards": report.scorecards,
        "queued": report.queued,
        "alerts": report.alerts_fired,
        "anomalies": report.anomalies,
    }


def evaluate(
    home: str, tenants: list[str], workdir: str, processes: int, forkserver: Forkserver | None
) -> dict:
    """Evaluation as the sensor requests it: one ``notifications`` run per
    ``WRITEVUE_NOTIFY_BATCH`` (500) tenants, at most one per core at once (the refresh
    above had as many workers), each in its own process (``_workers``)."""
    from sqlalchemy import update

    from writevue_pipelines.models import Scorecard
    from writevue_pipelines.runtime import Runtime

    runtime = Runtime.from_env()
    # every scorecard due now, as on a Monday morning
    due_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    with runtime.db.session() as session:
        session.execute(update(Scorecard).values(next_due_at=due_at))
    runtime.close()
    runs = max(processes, -(-len(tenants) // BATCH))
    files = []
    for index in range(runs):
        path = Path(workdir) / f"eval-{index}.json"
        path.write_text(json.dumps([tenants[index::runs], due_at.isoformat()]))
        files.append(path)
    started, cpu_s = time.perf_counter(), 0.0
    reports = []
    for wave in range(0, runs, processes):
        shares = [(home, str(path)) for path in files[wave : wave + processes]]
        done, cpu = _workers(
            forkserver,
            evaluate_worker,
            ("bench.notifications", "--eval-worker"),
            shares,
            "evaluation",
        )
        reports += done
        cpu_s += cpu
    return {
        "wall_s": time.perf_counter() - started,
        "runs": runs,
        "startup_s": max(r["startup_s"] for r in reports),
        # the evaluation itself (``runner.evaluate_batch``), summed over the runs
        "work_cpu_s": sum(r["work_cpu_s"] for r in reports),
        # as the refresh's: every CPU second of the runs' processes
        "cpu_s": cpu_s,
        **{
            key: sum(r[key] for r in reports)
            for key in ("scorecards", "queued", "alerts", "anomalies")
        },
    }


def _workers(
    forkserver: Forkserver | None,
    function,
    command: tuple[str, str],
    shares: list[tuple[str, ...]],
    what: str,
) -> tuple[list[dict], float]:
    """``function(*share)`` for each share at once, each in its own process: forked from
    ``forkserver``, or (None) spawned as ``python -m <module> <flag> *share`` (``command``:
    the module and flag whose command line calls ``function``);
    their reports, and every CPU second their processes used (from the fork, or from the
    interpreter's start)."""
    if forkserver is not None:
        reports = forkserver.run([(function, share) for share in shares], what)
        return reports, sum(r["cpu_s"] for r in reports)
    before = children_usage()
    module, flag = command
    reports = run_workers(module, [[flag, *share] for share in shares], what)
    return reports, children_usage() - before


def _save_warehouse(home: str, workdir: str) -> Path:
    """A copy of the warehouse (no process has it open) to evaluate again from."""
    import shutil

    saved = Path(workdir) / "warehouse-before-evaluation"
    saved.mkdir()
    for path in Path(home).glob("warehouse.db*"):
        shutil.copy2(path, saved / path.name)
    return saved


def _restore_warehouse(home: str, saved: Path) -> None:
    import shutil

    for path in Path(home).glob("warehouse.db*"):
        path.unlink()
    for path in saved.iterdir():
        shutil.copy2(path, Path(home) / path.name)


def _median_trial(trials: list[dict]) -> dict:
    """The trials' median wall and CPU times (each its own median), the rest as the
    first trial found it (every trial judges the same warehouse the same way)."""
    import statistics

    for trial in trials[1:]:
        for key in ("scorecards", "queued", "alerts", "anomalies"):
            if trial[key] != trials[0][key]:
                raise SystemExit(f"evaluations differ in {key}: {trial[key]} != {trials[0][key]}")
    median = dict(trials[0])
    for key in ("wall_s", "cpu_s", "work_cpu_s", "startup_s"):
        median[key] = statistics.median(t[key] for t in trials)
    median["trials"] = [(t["wall_s"], t["cpu_s"]) for t in trials]
    return median


def send(mail_dir: str) -> dict:
    from writevue_pipelines.notifications import delivery
    from writevue_pipelines.processes import free_port, spawn_and_wait
    from writevue_pipelines.runtime import Runtime

    smtp_port, http_port = free_port(), free_port()
    catcher = spawn_and_wait(
        "the mail catcher",
        [
            sys.executable,
            "-m",
            "writevue_sandbox.mail",
            "--smtp-port",
            str(smtp_port),
            "--http-port",
            str(http_port),
            "--dir",
            mail_dir,
        ],
        f"http://127.0.0.1:{http_port}/",
        timeout=30,
    )
    os.environ["WRITEVUE_SMTP_URL"] = f"smtp://127.0.0.1:{smtp_port}"
    os.environ["WRITEVUE_MAIL_FROM"] = "bench@writevue.test"
    try:
        runtime = Runtime.from_env()
        catcher_cpu = cpu_s(catcher.process.pid)
        cpu = time.process_time()
        started = time.perf_counter()
        report = delivery.send_due(runtime, run_id="bench")
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        catcher_cpu = cpu_s(catcher.process.pid) - catcher_cpu
        runtime.close()
    finally:
        catcher.stop()
    received = len(list(Path(mail_dir).glob("*.eml")))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "catcher_cpu_s": catcher_cpu,
        "sent": report.counts.get("sent", 0),
        "received": received,
        "counts": report.counts,
    }


def warm_bytecode(workdir: str) -> None:
    """Compiled bytecode for every process the benchmark starts, written once now (not
    timed) into the work directory, as an installation has it."""
    os.environ["PYTHONPYCACHEPREFIX"] = str(Path(workdir) / "pycache")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import bench.refresh, bench.notifications, writevue_sandbox.mail;"
            "from writevue_pipelines import refresh;"
            "from writevue_pipelines.notifications import runner, delivery, messages;"
            # imported only once a process reads the database or merges series
            "import sqlite3, numpy",
        ],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def load() -> float:
    """The machine's 1-minute load average now."""
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--start",
        choices=("fork", "spawn"),
        default="fork",
        help="how a run's process starts: forked from a process that imported what the "
        "code server's forkserver imports, as the product's runs are (default), or spawned "
        "as a new interpreter that imports everything itself",
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="evaluations, the median reported (default 5)"
    )
    parser.add_argument("--eval-worker", nargs=2, metavar=("HOME", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.eval_worker:
        print(json.dumps(evaluate_worker(*args.eval_worker)))
        return
    from bench.refresh import LATENCY_S, PAGES, PER_PAGE
    from bench.sandbox_process import start_sandbox

    n = args.tenants
    sandbox, base_url = start_sandbox(
        latency_s=LATENCY_S, bench_records=PAGES * PER_PAGE, bench_accounts=n
    )
    loads: dict[str, tuple[float, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="writevue-bench-notify-") as workdir:
            warm_bytecode(workdir)
            home = str(Path(workdir) / "home")
            tenants, connections = prepare(base_url, n, home)
            forkserver, preload_cpu = None, 0.0
            if args.start == "fork":
                forkserver = Forkserver(["writevue_pipelines.run_preload"])
                preload_cpu = forkserver.start()
            before = load()
            refreshed = refresh(home, connections, workdir, max(1, args.processes), forkserver)
            loads["refresh"] = (before, load())
            add_history(connections)
            configure(tenants)
            # the evaluation is short (seconds, all CPU) and a busy neighbour moves it by a
            # fifth or more: evaluated --repeat times from the same warehouse, the median taken
            saved = _save_warehouse(home, workdir)
            trials = []
            before = load()
            for trial in range(max(1, args.repeat)):
                if trial:
                    _restore_warehouse(home, saved)
                trials.append(evaluate(home, tenants, workdir, max(1, args.processes), forkserver))
            loads["evaluation"] = (before, load())
            judged = _median_trial(trials)
            before = load()
            sent = send(str(Path(workdir) / "mail"))
            loads["send"] = (before, load())
    finally:
        sandbox.stop()
    eval_ratio = judged["wall_s"] / refreshed["wall_s"]
    cpu_ratio = judged["cpu_s"] / refreshed["cpu_s"]
    per_s = sent["sent"] / sent["wall_s"] if sent["wall_s"] else 0.0

    def during(step: str) -> str:
        return "load {:.1f} to {:.1f}".format(*loads[step])

    rows = [
        ("tenants", f"{n}", f"1 connection each, {METRICS} metrics, {PAGES}x{PER_PAGE} records"),
        (
            "runs start",
            args.start,
            (
                f"forked from a process that imported run_preload ({preload_cpu:.2f} s of "
                "CPU, once per code server, counted for neither side)"
                if args.start == "fork"
                else "a new interpreter each, importing everything itself"
            ),
        ),
        (
            "refresh wall",
            f"{refreshed['wall_s']:.2f} s",
            f"{args.processes} worker(s); {refreshed['facts']} facts loaded; {during('refresh')}",
        ),
        (
            "refresh CPU",
            f"{refreshed['cpu_s']:.2f} s",
            f"all workers; {1000 * refreshed['cpu_s'] / n:.1f} ms a tenant, "
            f"{refreshed['work_cpu_s']:.2f} s of it refreshing (the rest starting)",
        ),
        (
            "evaluation wall",
            f"{judged['wall_s']:.2f} s",
            f"{judged['anomalies']} unusual days, {judged['alerts']} alerts, "
            f"{judged['scorecards']} scorecards, {judged['queued']} messages queued; "
            f"{judged['runs']} runs of <= {BATCH} tenants, "
            f"slowest start {judged['startup_s']:.2f} s; median of "
            + ", ".join(f"{wall:.2f}" for wall, _ in judged["trials"])
            + f"; {during('evaluation')}",
        ),
        (
            "evaluation CPU",
            f"{judged['cpu_s']:.2f} s",
            "all runs, median of "
            + ", ".join(f"{cpu:.2f}" for _, cpu in judged["trials"])
            + f"; {1000 * judged['cpu_s'] / n:.1f} ms a tenant, "
            f"{judged['work_cpu_s']:.2f} s of it evaluating (work ratio "
            f"{judged['work_cpu_s'] / refreshed['work_cpu_s']:.3f}); cpu ratio {cpu_ratio:.3f}",
        ),
        (
            "send wall",
            f"{sent['wall_s']:.2f} s",
            f"{sent['sent']} sent, {sent['received']} received; {sent['counts']}; {during('send')}",
        ),
        (
            "send CPU",
            f"{sent['cpu_s']:.2f} s",
            f"the mail catcher used {sent['catcher_cpu_s']:.2f} s more",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    print(
        f"tenants={n} eval_s={judged['wall_s']:.2f} refresh_s={refreshed['wall_s']:.2f} "
        f"eval_ratio={eval_ratio:.3f} eval_cpu_ratio={cpu_ratio:.3f} send_per_s={per_s:.1f}"
    )


if __name__ == "__main__":
    main()
