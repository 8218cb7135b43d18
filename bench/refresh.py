"""Benchmark: refresh N connections against the sandbox, fetch to warehouse.

    python -m bench.refresh --connections 1000

Every connection is a declarative REST connection reading the sandbox's fixed-size
``/bench/events`` endpoint (10 pages of 100 records, 50 ms injected latency per
request) through WriteVue's whole path: fetch, staging, polars aggregation and the
warehouse upsert. Baselines measured in the same session on the same sandbox:

- sequential: the same pages fetched one after another with plain httpx;
- dlt: dlt's REST API source loading the same endpoint into SQLite, one pipeline
  per connection as its documentation shows (run in ``bench/.venv-dlt``, created on
  first use, because dlt's pins are not ours).

Slow baselines are timed on a sample of connections and scaled; the table says so.
The sandbox runs in its own process and makes its accounts' pages before it listens (a
provider's data exists before anyone reads it); its CPU time is shown, since it shares the
cores. WriteVue runs in worker processes (one per core by default), each refreshing its
share of the connections with ``refresh.refresh_connections`` as one of the concurrent
batch runs of a scheduled refresh does (every connection fetched concurrently, each
loaded as soon as it is staged); wall time runs from starting them to the last one done.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.procfs import cpu_s
from bench.sandbox_pages import bench_key
from bench.sandbox_process import start_sandbox
from bench.workers import run_workers

LATENCY_S = 0.05
PAGES = 10
PER_PAGE = 100
IN_FLIGHT_FOR_IDEAL = 50
HERE = Path(__file__).resolve().parent
DLT_VENV = HERE / ".venv-dlt"

#: the benchmark endpoint's connection, up to its metrics (bench.notifications adds its own)
SPEC_HEAD = """\
base_url = "{base_url}"
endpoint = "/bench/events"
records_path = "data"

[params]
per_page = {per_page}

[auth]
type = "bearer"

[paginator]
type = "page_number"
page_param = "page"
start = 1
total_pages_path = "total_pages"

[mapping]
date_field = "created_at"
date_format = "iso_datetime"
"""
SPEC = (
    SPEC_HEAD
    + """\
dimension = {{ field = "category", categorical = true }}

[[mapping.metrics]]
name = "amount"
field = "amount"
agg = "sum"

[[mapping.metrics]]
name = "events"
agg = "count"
"""
)


def keys(n: int) -> list[str]:
    return [bench_key(index) for index in range(n)]


# -- WriteVue: worker processes, as concurrent batch runs would be -------------------------


def prepare(base_url: str, n: int, home: str) -> list[str]:
    """The warehouse and N connections (not timed)."""
    os.environ["WRITEVUE_HOME"] = home
    os.environ.pop("WRITEVUE_DATABASE_URL", None)
    from writevue_pipelines import registry
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import get_settings

    init_home(get_settings())
    runtime = Runtime.from_env()
    spec_path = Path(home) / "bench-spec.toml"
    spec_path.write_text(SPEC.format(base_url=base_url, per_page=PER_PAGE))
    with runtime.db.session() as session:
        tenant = registry.add_tenant(session, runtime.keys, "Bench", "bench@example.test")
        ids = [
            registry.add_connection(
                session,
                runtime.keys,
                tenant,
                "rest",
                "api_key",
                {"spec": str(spec_path)},
                {"api_key": key},
            )
            for key in keys(n)
        ]
    runtime.close()
    return ids


def worker(home: str, ids_file: str) -> dict:
    """Fetch, aggregate and load a share of the connections, as one batch run does."""
    os.environ["WRITEVUE_HOME"] = home
    os.environ.pop("WRITEVUE_DATABASE_URL", None)
    from writevue_pipelines import refresh
    from writevue_pipelines.runtime import Runtime

    ids = json.loads(Path(ids_file).read_text())
    runtime = Runtime.from_env()
    startup_s = time.time() - float(os.environ["BENCH_SPAWNED_AT"])
    started = time.perf_counter()
    # What a batch run does: every connection fetched concurrently, each loaded as soon
    # as its records are staged.
    outcomes = refresh.refresh_connections(runtime, ids)
    done = time.perf_counter()
    failures = [o.error for o in outcomes.values() if o.error is not None]
    if failures:
        raise SystemExit(f"{len(failures)} connections failed: {refresh.safe_error(failures[0])}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "startup_s": startup_s,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "refresh_s": done - started,
        "requests": sum(o.fetched.requests for o in outcomes.values()),
        "facts": sum(o.loaded.facts for o in outcomes.values()),
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def run_writevue(base_url: str, n: int, workdir: str, processes: int) -> dict:
    home = str(Path(workdir) / "home")
    ids = prepare(base_url, n, home)
    files = []
    for index in range(processes):
        path = Path(workdir) / f"ids-{index}.json"
        path.write_text(json.dumps(ids[index::processes]))
        files.append(path)
    started = time.perf_counter()
    reports = run_workers(
        "bench.refresh", [["--worker", home, str(path)] for path in files], "WriteVue refresh"
    )
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "startup_s": max(r["startup_s"] for r in reports),
        "cpu_s": sum(r["cpu_s"] for r in reports),
        "refresh_s": max(r["refresh_s"] for r in reports),
        "requests": sum(r["requests"] for r in reports),
        "facts": sum(r["facts"] for r in reports),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
        "total_rss_mb": sum(r["peak_rss_mb"] for r in reports),
    }


# -- baselines ------------------------------------------------------------------------


def run_sequential(base_url: str, sample: list[str]) -> float:
    """The same pages, one request at a time, with plain httpx; seconds for the sample."""
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for key in sample:
            page = 1
            while True:
                response = client.get(
                    "/bench/events",
                    params={"page": page, "per_page": PER_PAGE},
                    headers={"Authorization": f"Bearer {key}"},
                )
                response.raise_for_status()
                body = response.json()
                if page >= body["total_pages"]:
                    break
                page += 1
    return time.perf_counter() - started


def ensure_dlt() -> Path | None:
    python = DLT_VENV / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(DLT_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "dlt[sqlalchemy]"], check=True
        )
    except (subprocess.CalledProcessError, OSError):
        return None
    return python


def run_dlt(base_url: str, sample: list[str], workdir: str) -> float | None:
    python = ensure_dlt()
    if python is None:
        return None
    out = subprocess.run(
        [str(python), str(HERE / "dlt_baseline.py"), base_url, workdir, *sample],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(f"dlt baseline failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    return sum(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--sequential-sample", type=int, default=50)
    parser.add_argument("--dlt-sample", type=int, default=20)
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per core, like concurrent batch runs)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("HOME", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return

    n = args.connections
    # The sandbox makes its accounts' data before it listens, as a provider has it already.
    sandbox, base_url = start_sandbox(
        latency_s=LATENCY_S, bench_records=PAGES * PER_PAGE, bench_accounts=n
    )
    try:
        with tempfile.TemporaryDirectory(prefix="writevue-bench-") as workdir:
            sandbox_cpu = cpu_s(sandbox.process.pid)
            ours = run_writevue(base_url, n, workdir, max(1, args.processes))
            sandbox_cpu = cpu_s(sandbox.process.pid) - sandbox_cpu
            seq_sample = keys(n)[: min(n, args.sequential_sample)]
            seq_s = run_sequential(base_url, seq_sample) * n / len(seq_sample)
            dlt_sample = keys(n)[: min(n, args.dlt_sample)]
            dlt_raw = run_dlt(base_url, dlt_sample, str(Path(workdir) / "dlt"))
            dlt_s = None if dlt_raw is None else dlt_raw * n / len(dlt_sample)
    finally:
        sandbox.stop()

    ideal = PAGES * n * LATENCY_S / IN_FLIGHT_FOR_IDEAL
    wall = ours["wall_s"]
    rows = [
        ("connections", f"{n}", f"{PAGES} pages x {PER_PAGE} records, {LATENCY_S * 1000:.0f} ms"),
        ("pages fetched", f"{ours['requests']}", f"expected {n * PAGES}"),
        (
            "WriteVue wall",
            f"{wall:.2f} s",
            f"{args.processes} worker process(es); slowest start {ours['startup_s']:.2f} s, "
            f"slowest fetch-and-load {ours['refresh_s']:.2f} s",
        ),
        (
            "CPU time",
            f"{ours['cpu_s']:.2f} s",
            f"all workers (imports included); the sandbox used {sandbox_cpu:.2f} s more "
            f"of the same {os.cpu_count()} cores",
        ),
        ("ideal (50 in flight)", f"{ideal:.2f} s", "pages x 50 ms / 50"),
        (
            "peak RSS",
            f"{ours['peak_rss_mb']:.0f} MB",
            f"largest worker; {ours['total_rss_mb']:.0f} MB for all workers together",
        ),
        ("sequential httpx", f"{seq_s:.2f} s", f"timed on {len(seq_sample)} connections, scaled"),
        (
            "dlt rest_api -> SQLite",
            "n/a" if dlt_s is None else f"{dlt_s:.2f} s",
            f"timed on {len(dlt_sample)} connections (1 pipeline each), scaled",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")
    vs_dlt = "n/a" if dlt_s is None else f"{dlt_s / wall:.2f}"
    print(
        f"connections={n} wall_s={wall:.2f} ideal_ratio={ideal / wall:.2f} "
        f"peak_rss_mb={ours['peak_rss_mb']:.0f} vs_sequential={seq_s / wall:.2f} vs_dlt={vs_dlt}"
    )


if __name__ == "__main__":
    main()
