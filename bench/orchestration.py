"""Benchmark: a scheduled refresh of N connections through a real Dagster daemon.

    python -m bench.orchestration --connections 1000

A fresh WRITEVUE_HOME (``writevue init``: SQLite warehouse, queued run coordinator, the
default run launcher) gets N Stripe connections on the sandbox (its own process). The
``stripe_refresh`` schedule is set to fire at the next whole minute; ``dagster-daemon``
evaluates it and launches the batched runs. wall_s runs from the scheduled tick to the
end of the last run. The baseline is the same work without Dagster, measured in the
same session on N other connections of the same sandbox: fetch (async, in batches of
the same size) and load, in this process. overhead_s = wall_s - that baseline.
peak_rss_mb is the largest summed RSS of the daemon's process tree (daemon, code
server, run workers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.procfs import rss_mb, stat_fields
from bench.sandbox_process import start_sandbox
from writevue_pipelines.processes import spawn

REPO = Path(__file__).resolve().parents[1]
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def tree_rss_mb(root: int) -> float:
    """Summed RSS of a process and its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0.0
    for pid in tree:
        try:
            total += rss_mb(pid)
        except OSError:
            continue
    return total


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


def pure_refresh(runtime, connection_ids: list[str], batch: int) -> float:
    """The same work without Dagster: what each run's step does, one batch after another."""
    from writevue_pipelines import refresh

    start = time.perf_counter()
    for first in range(0, len(connection_ids), batch):
        refresh.refresh_connections(runtime, connection_ids[first : first + batch])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds to wait for the runs")
    args = parser.parse_args(argv)
    n = args.connections

    workdir = Path(tempfile.mkdtemp(prefix="writevue-bench-orchestration-"))
    home = workdir / "home"
    env = {
        "WRITEVUE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "WRITEVUE_HISTORY_DAYS": str(args.history_days),
    }
    # A kill of the bench still stops the daemon tree and the sandbox (see finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    os.environ.update(env)
    os.environ.pop("WRITEVUE_DATABASE_URL", None)

    from dagster import AssetKey, DagsterInstance, RunsFilter
    from sqlalchemy import select

    from writevue_pipelines.home import init_home
    from writevue_pipelines.models import Connection
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    settings = Settings.from_env()
    init_home(settings)
    runtime = Runtime(settings)
    batch = settings.refresh_batch
    sandbox, url = start_sandbox()
    daemon = None
    try:
        baseline_ids = add_connections(runtime, url, n, "base")
        dagster_ids = add_connections(runtime, url, n, "dags")
        pure_s = pure_refresh(runtime, baseline_ids, batch)
        # Out of the schedule's way: only the measured connections are partitions.
        with runtime.db.session() as session:
            for row in session.scalars(select(Connection).where(Connection.id.in_(baseline_ids))):
                row.status = "disabled"

        (workdir / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n      module_name: writevue_pipelines.defs\n"
            f"      location_name: writevue\n      working_directory: {REPO}\n"
        )
        # The schedule fires at the first whole minute that leaves the daemon time to start.
        tick = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=75)).replace(second=0, microsecond=0)
        env["WRITEVUE_REFRESH_CRON_STRIPE"] = f"{tick.minute} {tick.hour} * * *"
        with DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            instance.add_dynamic_partitions("stripe_connections", dagster_ids)
            daemon = spawn(
                "the daemon",
                [
                    str(Path(sys.executable).parent / "dagster-daemon"),
                    "run",
                    "-w",
                    "workspace.yaml",
                ],
                log_path=workdir / "daemon.log",
                env=os.environ | env,
                cwd=workdir,
            )
            expected = math.ceil(n / batch)
            peak_rss = 0.0
            deadline = time.time() + args.timeout + 120
            records = []
            while time.time() < deadline:
                peak_rss = max(peak_rss, tree_rss_mb(daemon.process.pid))
                records = instance.get_run_records(
                    filters=RunsFilter(tags={"dagster/schedule_name": "stripe_refresh"})
                )
                if len(records) >= expected and all(
                    r.dagster_run.status.value in FINISHED for r in records
                ):
                    break
                if not daemon.alive():
                    raise SystemExit(f"the daemon exited; see {workdir / 'daemon.log'}")
                time.sleep(1)
            else:
                raise SystemExit(f"the runs did not finish in time; see {workdir}")
            end = max(r.end_time for r in records)
            wall_s = end - tick.timestamp()
            succeeded = sum(r.dagster_run.status.value == "SUCCESS" for r in records)
            materialised = len(
                instance.get_materialized_partitions(AssetKey("stripe_daily_metrics"))
            )
    finally:
        if daemon is not None:
            # The daemon, its code server and any run worker share the daemon's process
            # group: stop() leaves none of them behind.
            daemon.stop(timeout=15)
        sandbox.stop()
        runtime.close()

    overhead_s = wall_s - pure_s
    rows = [
        ("connections", f"{n}"),
        ("batch (connections per run)", f"{batch}"),
        ("history days", f"{args.history_days}"),
        ("runs launched by the schedule", f"{len(records)} (succeeded {succeeded})"),
        ("partitions materialised", f"{materialised}"),
        ("baseline: fetch and load without Dagster (s)", f"{pure_s:.1f}"),
        ("scheduled tick to last run end (s)", f"{wall_s:.1f}"),
        ("overhead (s)", f"{overhead_s:.1f}"),
        ("overhead per run (s)", f"{overhead_s / max(len(records), 1):.1f}"),
        ("peak RSS, daemon + code server + runs (MB)", f"{peak_rss:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>16}")
    print(
        f"connections={n} runs={len(records)} wall_s={wall_s:.1f} "
        f"overhead_s={overhead_s:.1f} peak_rss_mb={peak_rss:.0f}"
    )


if __name__ == "__main__":
    main()
