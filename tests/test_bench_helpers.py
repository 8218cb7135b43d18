"""The benchmarks' measuring helpers: what they count is what the report says they count.

Fast and without timing thresholds: CPU that a real child process burned must be found
(not how much time anything took), and the figures a ratio is built on must come from
the settings that actually apply.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

from sqlalchemy import func, select

from bench import orchestration, quick, refresh, warehouse
from bench.workers import children_usage
from writevue_pipelines.models import Fact
from writevue_pipelines.sources.http import DEFAULT_MAX_IN_FLIGHT

#: burns about a fifth of a second of CPU, then exits
BURN = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass\n"


def test_ideal_uses_the_in_flight_limit_of_every_worker_process():
    # 1,000 connections x 10 pages at 50 ms: each of 2 processes has its own limit.
    assert refresh.ideal_s(1000, 2, 50) == 10 * 1000 * 0.05 / 100
    assert refresh.ideal_s(1000, 1, 50) == 10 * 1000 * 0.05 / 50
    # ... and a connection's pages follow one another, whatever the limit.
    assert refresh.ideal_s(10, 2, 50) == 10 * 0.05
    assert refresh.in_flight_per_process() == DEFAULT_MAX_IN_FLIGHT


def test_children_usage_counts_what_a_waited_for_child_burned():
    before = children_usage()
    subprocess.run([sys.executable, "-c", BURN], check=True)
    assert children_usage() - before >= 0.1


def _burn_in_fork(module: str) -> dict:
    """A forked worker: burns a fifth of a second, says whether ``module`` was imported
    before it started and what ``BENCH_SPAWNED_AT`` it was given."""
    import os
    import time

    preloaded = module in sys.modules
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    return {"preloaded": preloaded, "pid": os.getpid(), "spawned": os.environ["BENCH_SPAWNED_AT"]}


def test_a_forked_worker_reports_its_cpu_from_the_fork_and_finds_the_preload():
    """``bench.workers.Forkserver`` (workers forked as the code server forks its runs):
    each worker's own CPU is counted (what it burned, not the preload it was forked
    with), and the preload was imported before it, once, in another process."""
    import os

    from bench.workers import Forkserver

    server = Forkserver(["xml.dom.minidom"])
    assert server.start() > 0  # the preload's CPU, apart
    reports = server.run([(_burn_in_fork, ("xml.dom.minidom",))] * 2, "the probe")
    assert [r["preloaded"] for r in reports] == [True, True]
    assert len({r["pid"] for r in reports} | {os.getpid()}) == 3
    assert all(0.15 <= r["cpu_s"] < 2 for r in reports), reports
    assert all(float(r["spawned"]) > 0 for r in reports)


def _fail_in_fork() -> dict:
    raise ValueError("the probe's own failure")


def test_a_forked_worker_that_fails_stops_the_benchmark_with_its_error():
    import pytest

    from bench.workers import Forkserver

    server = Forkserver([])
    with pytest.raises(SystemExit, match="the probe's own failure"):
        server.run([(_fail_in_fork, ())], "the probe")


def test_tree_cpu_counts_a_grandchild_that_has_ended_and_been_reaped():
    # As a run worker started and reaped by the code server: gone from /proc, but its
    # CPU is in its parent's children times.
    parent = textwrap.dedent(f"""
        import subprocess, sys
        subprocess.run([sys.executable, "-c", {BURN!r}], check=True)
        print("ready", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        assert orchestration.tree_cpu_s({child.pid}) >= 0.1
    finally:
        child.stdin.close()
        child.wait(10)


def test_baseline_concurrency_is_the_instance_s_pool_limit(runtime):
    # writevue init's dagster.yaml: 4 runs at once, 2 per provider's pool.
    assert orchestration.instance_concurrency(runtime.settings.dagster_home) == 2


def test_the_big_warehouse_fill_adds_distinct_facts_in_the_real_table(runtime, home):
    written = warehouse.fill_sqlite(home / "warehouse.db", 150_000)
    assert written == 2 * warehouse.FILLER_ROWS
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Fact)) == written
        assert session.scalar(select(func.count(func.distinct(Fact.connection_id)))) == 2
    with sqlite3.connect(home / "warehouse.db") as conn:  # the key is whole: no duplicates
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_big_fill_matches_the_shape_of_the_measured_facts():
    facts = warehouse.make_facts(warehouse.FILLER_ROWS)
    assert facts.height == warehouse.FILLER_ROWS
    assert facts["metric"].n_unique() == warehouse.METRICS
    assert facts["dimension"].n_unique() == warehouse.DIMENSIONS


def test_quick_runs_all_four_benchmarks():
    assert set(quick.QUICK) == {"refresh", "orchestration", "dashboard", "warehouse"}
