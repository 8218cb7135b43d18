"""bench.orchestration's measuring helpers: what its report says it counts is counted.

Fast and without timing thresholds: CPU that the benchmark's own PostgreSQL server burned
for Dagster must be found in its process tree, and the check results it stores to price
one must be real, counted results.
"""

from __future__ import annotations

import shutil
import uuid

import pytest
from dagster import AssetCheckKey, AssetKey

from bench import orchestration


def test_storing_check_results_is_priced_on_real_stored_results(instance):
    partitions = [str(uuid.uuid4()) for _ in range(5)]

    per_result = orchestration.check_result_cpu_s(instance, partitions, set())

    assert per_result > 0
    runs = instance.get_runs()
    counts, phases = orchestration.events_by_type(instance, [r.run_id for r in runs])
    # and the run's next event, which WriteVue's storages wait for to store the results
    assert counts == {
        "ASSET_CHECK_EVALUATION_PLANNED": 1,
        "ASSET_CHECK_EVALUATION": 5,
        "ENGINE_EVENT": 1,
    }
    assert phases == {}  # a run of the benchmark's own: no run or step events to time
    key = AssetCheckKey(AssetKey("stripe_daily_metrics"), "refreshed")
    infos = instance.event_log_storage.get_asset_check_partition_info([key])
    assert {i.partition_key: i.latest_execution_status.value for i in infos} == dict.fromkeys(
        partitions, "SUCCEEDED"
    )


@pytest.mark.skipif(
    not any(orchestration.POSTGRES_BINARIES.glob("*/bin/initdb")) or not shutil.which("runuser"),
    reason="no PostgreSQL server binaries here",
)
def test_the_private_postgres_server_s_cpu_is_in_its_process_tree(tmp_path):
    import psycopg

    server, env, folder = orchestration.start_private_postgres(tmp_path)
    try:
        dsn = (
            f"host={env['DAGSTER_PG_HOST']} port={env['DAGSTER_PG_PORT']} "
            f"user={env['DAGSTER_PG_USERNAME']} dbname={env['DAGSTER_PG_DB']}"
        )
        before = orchestration.tree_cpu_s({server.process.pid})
        for _ in range(30):  # a connection each, as Dagster's storage opens them
            with psycopg.connect(dsn) as connection:
                connection.execute("SELECT count(*) FROM pg_class").fetchone()
        by_kind = orchestration.tree_cpu_by_kind({server.process.pid})
        assert sum(by_kind.values()) > before
        assert set(by_kind) <= {
            "PostgreSQL (Dagster's storage)",
            "ended, started by PostgreSQL (Dagster's storage)",
        }
    finally:
        server.stop(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    assert not server.alive()


def test_runs_at_once_counts_overlapping_spans_only():
    """The report's "runs under way at once": two runs back to back are one at a time (the
    next starts as the first ends); a third starting before either ends makes three."""
    assert orchestration.most_at_once([]) == 0
    assert orchestration.most_at_once([(0.0, 2.0), (2.0, 4.0)]) == 1
    assert orchestration.most_at_once([(0.0, 2.0), (1.0, 3.0), (2.5, 4.0)]) == 2
    assert orchestration.most_at_once([(0.0, 3.0), (1.0, 4.0), (2.0, 5.0), (4.5, 6.0)]) == 3


def test_repeated_measurements_end_with_each_figures_median(capsys):
    """``--repeat``: the last line gives each figure's median over the measurements (not
    the best, not the mean a single slow minute drags), every measurement's ratio, and the
    largest peak RSS."""
    figures = [
        {
            "runs": 20,
            "wall_s": w,
            "baseline_s": b,
            "wall_ratio": w / b,
            "cpu_per_run_s": c,
            "peak_rss_mb": rss,
        }
        for w, b, c, rss in ((30.0, 20.0, 1.1, 960), (36.0, 15.0, 1.6, 990), (27.0, 15.0, 1.2, 970))
    ]
    orchestration.summarise(1000, figures)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(pair.split("=") for pair in last.split())
    assert values["wall_ratio"] == "1.80"  # of 1.50, 2.40 and 1.80
    assert values["wall_ratios"] == "1.50,2.40,1.80"
    assert values["cpu_per_run_s"] == "1.20"
    assert values["wall_s"] == "30.0" and values["baseline_s"] == "15.0"
    assert values["peak_rss_mb"] == "990" and values["repeats"] == "3"
