"""Benchmark: refresh N connections against a sandboxed provider, fetch to warehouse.

    python -m bench.refresh --connections 1000

Every connection is a declarative REST connection reading the sandbox's fixed-size
``/bench/events`` endpoint (10 pages of 100 records, 50 ms injected latency per request;
served by ``bench.provider``, the sandbox's pages and answers from a lean HTTP/1.1 server
rather than Tornado, see there; ``--provider sandbox`` serves them from the Tornado
sandbox instead) through WriteVue's whole path: fetch, staging, polars
aggregation and the warehouse upsert. WriteVue runs in worker processes (one per core by
default), each refreshing its share of the connections with
``refresh.refresh_connections`` as one of the concurrent batch runs of a scheduled
refresh does (every connection fetched concurrently, at most ``DEFAULT_MAX_IN_FLIGHT``
requests in flight per process, each connection loaded as soon as it is staged).

Baselines, measured in the same session on the same sandbox and the same accounts:

- floor: the same pages fetched with plain httpx at the same concurrency (as many
  processes, as many requests in flight per process, through the small connection pools
  plain httpx does best with) and parsed, nothing else: what any client must spend.
  ``cpu_ratio`` is WriteVue's CPU per connection over the floor's, both counting every
  CPU second their processes used, interpreter start and imports included;
- dlt: dlt's REST API source loading the same endpoint into SQLite, one pipeline per
  connection as its documentation shows, in as many parallel processes as WriteVue has
  workers (run in ``bench/.venv-dlt``, created on first use, because dlt's pins are not
  ours). Each process first runs a few warm-up pipelines on other accounts (untimed),
  then times its pipelines; when it times fewer than its share of the N connections
  (``--dlt-sample`` per process), its wall time for the whole share is its mean time
  per pipeline after warm-up times the share, and the table says so.

CPU is read from the kernel for every process involved (``RUSAGE_CHILDREN`` after the
workers are waited for), so a busy machine slows the wall figures but not the CPU
ones: targets are checked on the CPU ratios. The provider runs in its own process and
makes its accounts' pages before it listens (a provider's data exists before anyone
reads it); its CPU time while each client ran is shown, since it shares the cores, but
counted for nobody.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procfs import cpu_s
from bench.sandbox_pages import bench_key
from bench.sandbox_process import start_provider, start_sandbox
from bench.workers import children_usage, run_workers

LATENCY_S = 0.05
PAGES = 10
PER_PAGE = 100
HERE = Path(__file__).resolve().parent
DLT_VENV = HERE / ".venv-dlt"
#: dlt pipelines each dlt process runs (untimed) before it times any
DLT_WARMUP = 3

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


def keys(n: int, first: int = 0) -> list[str]:
    return [bench_key(index) for index in range(first, first + n)]


def in_flight_per_process() -> int:
    """The in-flight limit each WriteVue worker process applies to this benchmark's source."""
    from writevue_pipelines.sources.http import DEFAULT_MAX_IN_FLIGHT

    return DEFAULT_MAX_IN_FLIGHT


def ideal_s(n: int, processes: int, in_flight: int) -> float:
    """The fastest any client could be: every request waits its latency, at most
    ``in_flight`` per process in flight, and a connection's pages follow one another."""
    return max(PAGES * LATENCY_S, PAGES * n * LATENCY_S / (in_flight * processes))


@dataclass
class Measured:
    """One side of the comparison: its processes' wall time and CPU."""

    wall_s: float
    #: CPU seconds of all its processes (interpreter start and imports included)
    cpu_s: float
    #: CPU seconds spent in the work itself (after start-up), summed over processes
    work_cpu_s: float
    startup_s: float
    requests: int
    peak_rss_mb: float
    total_rss_mb: float
    facts: int = 0


def _measure(module_argvs: list[list[str]], what: str) -> tuple[float, float, list[dict]]:
    """Run the workers; (wall seconds, CPU seconds of all of them, their reports)."""
    before = children_usage()
    started = time.perf_counter()
    reports = run_workers("bench.refresh", module_argvs, what)
    wall = time.perf_counter() - started
    return wall, children_usage() - before, reports


def _summarise(wall: float, cpu: float, reports: list[dict]) -> Measured:
    return Measured(
        wall_s=wall,
        cpu_s=cpu,
        work_cpu_s=sum(r["work_cpu_s"] for r in reports),
        startup_s=max(r["startup_s"] for r in reports),
        requests=sum(r["requests"] for r in reports),
        peak_rss_mb=max(r["peak_rss_mb"] for r in reports),
        total_rss_mb=sum(r["peak_rss_mb"] for r in reports),
        facts=sum(r.get("facts", 0) for r in reports),
    )


def _shares(items: list[str], processes: int, workdir: str, name: str) -> list[Path]:
    files = []
    for index in range(processes):
        path = Path(workdir) / f"{name}-{index}.json"
        path.write_text(json.dumps(items[index::processes]))
        files.append(path)
    return files


def _report(started_cpu: float, started: float, requests: int, **extra) -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "startup_s": started - float(os.environ["BENCH_SPAWNED_AT"]),
        "work_cpu_s": time.process_time() - started_cpu,
        "requests": requests,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        **extra,
    }


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
    started, started_cpu = time.time(), time.process_time()
    # What a batch run does: every connection fetched concurrently, each loaded as soon
    # as its records are staged.
    outcomes = refresh.refresh_connections(runtime, ids)
    failures = [o.error for o in outcomes.values() if o.error is not None]
    if failures:
        raise SystemExit(f"{len(failures)} connections failed: {refresh.safe_error(failures[0])}")
    return _report(
        started_cpu,
        started,
        sum(o.fetched.requests for o in outcomes.values()),
        facts=sum(o.loaded.facts for o in outcomes.values()),
    )


def run_writevue(base_url: str, n: int, workdir: str, processes: int) -> Measured:
    home = str(Path(workdir) / "home")
    ids = prepare(base_url, n, home)
    files = _shares(ids, processes, workdir, "ids")
    wall, cpu, reports = _measure(
        [["--worker", home, str(path)] for path in files], "WriteVue refresh"
    )
    return _summarise(wall, cpu, reports)


# -- the floor: plain httpx, same concurrency, parsed, nothing else --------------------------


def floor_worker(base_url: str, keys_file: str, layout: str) -> dict:
    """The same pages with plain httpx: as many in flight as a WriteVue worker, through
    the connection pools plain httpx does best with (``FLOOR_POOL_SIZE``).

    ``layout`` is "IN_FLIGHT,SHARDS,POOL" (worked out by the parent), so this process
    imports httpx and nothing of WriteVue.
    """
    in_flight, shards, pool = (int(part) for part in layout.split(","))
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    share = json.loads(Path(keys_file).read_text())
    started, started_cpu = time.time(), time.process_time()
    requests = asyncio.run(_floor_fetch(base_url, share, in_flight, shards, limits))
    return _report(started_cpu, started, requests)


async def _floor_fetch(
    base_url: str, share: list[str], limit: int, shards: int, limits: httpx.Limits
) -> int:
    in_flight = asyncio.Semaphore(limit)
    clients = [
        httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) for _ in range(shards)
    ]
    requests = 0

    async def one(index: int, key: str) -> None:
        nonlocal requests
        client = clients[index % shards]
        page, records = 1, 0
        while True:
            async with in_flight:
                response = await client.get(
                    "/bench/events",
                    params={"page": page, "per_page": PER_PAGE},
                    headers={"Authorization": f"Bearer {key}"},
                )
            response.raise_for_status()
            body = response.json()
            requests += 1
            records += len(body["data"])
            if page >= body["total_pages"]:
                break
            page += 1
        assert records == PAGES * PER_PAGE, records

    try:
        await asyncio.gather(*(one(index, key) for index, key in enumerate(share)))
    finally:
        for client in clients:
            await client.aclose()
    return requests


#: the floor's connections: plain httpx spends least with many small pools (httpcore scans
#: a pool's connections for every queued request: measured 7.6 ms of CPU a request with
#: one pool of 50, 0.95 ms with 25 pools of 2), so that is what it gets
FLOOR_POOL_SIZE = 2


def run_floor(base_url: str, n: int, workdir: str, processes: int) -> Measured:
    in_flight = in_flight_per_process()
    layout = f"{in_flight},{max(1, in_flight // FLOOR_POOL_SIZE)},{FLOOR_POOL_SIZE}"
    files = _shares(keys(n), processes, workdir, "floor")
    wall, cpu, reports = _measure(
        [["--floor", base_url, str(path), layout] for path in files], "the floor"
    )
    return _summarise(wall, cpu, reports)


# -- dlt: one pipeline per connection, as many processes as WriteVue workers ------------------


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


@dataclass
class DltMeasured:
    #: wall time for all N connections at equal concurrency (projected when sampled)
    wall_s: float
    #: CPU seconds per connection after warm-up, all of dlt's processes and threads
    cpu_per_connection_s: float
    timed_per_process: int
    share_per_process: int
    #: CPU seconds of the dlt processes as run (imports and warm-up included)
    cpu_s: float


def run_dlt(base_url: str, n: int, workdir: str, processes: int, sample: int) -> DltMeasured | None:
    python = ensure_dlt()
    if python is None:
        return None
    share = math.ceil(n / processes)
    timed = min(share, sample)
    # Warm-up pipelines read accounts after the N measured ones (made up front too).
    argvs = []
    for index in range(processes):
        warmup = keys(DLT_WARMUP, first=n + index * DLT_WARMUP)
        mine = keys(n)[index::processes][:timed]
        argvs.append(
            [str(python), str(HERE / "dlt_baseline.py"), base_url,
             str(Path(workdir) / f"dlt-{index}"), str(DLT_WARMUP), *warmup, *mine]
        )  # fmt: skip
    before = children_usage()
    children = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    reports = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            print(f"dlt baseline failed:\n{err[-2000:]}", file=sys.stderr)
            return None
        reports.append(json.loads(out.strip().splitlines()[-1]))
    cpu = children_usage() - before
    seconds = [s for r in reports for s in r["seconds"]]
    cpus = [c for r in reports for c in r["cpu_s"]]
    # Processes run side by side, each its share one pipeline after another.
    wall = max(sum(r["seconds"]) / len(r["seconds"]) * share for r in reports)
    if timed == share:
        wall = max(sum(r["seconds"]) for r in reports)
    return DltMeasured(wall, sum(cpus) / len(seconds), timed, share, cpu)


# -- the report --------------------------------------------------------------------------


def print_table(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument(
        "--dlt-sample",
        type=int,
        default=25,
        help="dlt pipelines timed per process after warm-up (0: skip dlt)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per core, like concurrent batch runs)",
    )
    parser.add_argument(
        "--provider",
        choices=("lean", "sandbox"),
        default="lean",
        help="who serves the pages: bench.provider (default) or the Tornado sandbox",
    )
    parser.add_argument("--worker", nargs=2, metavar=("HOME", "IDS"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--floor", nargs=3, metavar=("URL", "KEYS", "LAYOUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    if args.floor:
        print(json.dumps(floor_worker(*args.floor)))
        return

    n, processes = args.connections, max(1, args.processes)
    # The provider makes its accounts' data before it listens, as a provider has it already.
    start = start_provider if args.provider == "lean" else start_sandbox
    sandbox, base_url = start(
        latency_s=LATENCY_S,
        bench_records=PAGES * PER_PAGE,
        bench_accounts=n + DLT_WARMUP * processes,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="writevue-bench-") as workdir:
            sandbox_cpu = cpu_s(sandbox.process.pid)
            ours = run_writevue(base_url, n, workdir, processes)
            sandbox_cpu = cpu_s(sandbox.process.pid) - sandbox_cpu
            floor_sandbox_cpu = cpu_s(sandbox.process.pid)
            floor = run_floor(base_url, n, workdir, processes)
            floor_sandbox_cpu = cpu_s(sandbox.process.pid) - floor_sandbox_cpu
            dlt = None
            if args.dlt_sample > 0:
                dlt = run_dlt(base_url, n, str(Path(workdir) / "dlt"), processes, args.dlt_sample)
    finally:
        sandbox.stop()

    in_flight = in_flight_per_process()
    ideal = ideal_s(n, processes, in_flight)
    cpu_ratio = ours.cpu_s / floor.cpu_s
    work_ratio = ours.work_cpu_s / floor.work_cpu_s
    per_conn_ms = ours.cpu_s / n * 1000
    rows = [
        ("connections", f"{n}", f"{PAGES} pages x {PER_PAGE} records, {LATENCY_S * 1000:.0f} ms"),
        ("pages fetched", f"{ours.requests}", f"expected {n * PAGES}; the floor {floor.requests}"),
        (
            "ideal",
            f"{ideal:.2f} s",
            f"{processes} processes x {in_flight} in flight, {LATENCY_S * 1000:.0f} ms a page",
        ),
        (
            "WriteVue wall",
            f"{ours.wall_s:.2f} s",
            f"{processes} worker process(es); slowest start {ours.startup_s:.2f} s",
        ),
        ("floor wall", f"{floor.wall_s:.2f} s", "plain httpx, same processes and in-flight limit"),
        (
            "WriteVue CPU",
            f"{ours.cpu_s:.2f} s",
            f"{per_conn_ms:.1f} ms per connection, all workers, start-up included "
            f"({ours.work_cpu_s:.2f} s in the refresh itself)",
        ),
        (
            "floor CPU",
            f"{floor.cpu_s:.2f} s",
            f"{floor.cpu_s / n * 1000:.1f} ms per connection, start-up included "
            f"({floor.work_cpu_s:.2f} s fetching and parsing)",
        ),
        (
            "cpu_ratio",
            f"{cpu_ratio:.2f}",
            f"WriteVue CPU per connection / the floor's (target <= 2.0); "
            f"{work_ratio:.2f} without start-up",
        ),
        (
            "provider CPU",
            f"{sandbox_cpu:.2f} s",
            f"while WriteVue ran ({floor_sandbox_cpu:.2f} s while the floor did); "
            "counted for nobody",
        ),
        (
            "peak RSS",
            f"{ours.peak_rss_mb:.0f} MB",
            f"largest worker; {ours.total_rss_mb:.0f} MB all workers (target < 400 MB)",
        ),
    ]
    vs_dlt = dlt_cpu = "n/a"
    if dlt is not None:
        sampled = (
            f"timed all {dlt.share_per_process} per process"
            if dlt.timed_per_process == dlt.share_per_process
            else f"mean of {dlt.timed_per_process} per process x its share of "
            f"{dlt.share_per_process}"
        )
        vs_dlt = f"{dlt.wall_s / ours.wall_s:.2f}"
        dlt_cpu = f"{dlt.cpu_per_connection_s / (ours.cpu_s / n):.1f}"
        rows += [
            (
                "dlt wall",
                f"{dlt.wall_s:.2f} s",
                f"{processes} processes, 1 pipeline per connection after {DLT_WARMUP} "
                f"warm-up each; {sampled}",
            ),
            (
                "dlt CPU",
                f"{dlt.cpu_per_connection_s * 1000:.0f} ms",
                f"per connection after warm-up ({dlt.cpu_s:.1f} s for its processes as run); "
                f"{dlt_cpu}x WriteVue's",
            ),
            ("vs_dlt", f"{vs_dlt}", "dlt wall / WriteVue wall at equal concurrency (target >= 5)"),
        ]
    print_table(rows)
    print(
        f"connections={n} wall_s={ours.wall_s:.2f} ideal_ratio={ideal / ours.wall_s:.2f} "
        f"floor_ideal_ratio={ideal / floor.wall_s:.2f} cpu_ratio={cpu_ratio:.2f} "
        f"cpu_ms_per_connection={per_conn_ms:.1f} peak_rss_mb={ours.peak_rss_mb:.0f} "
        f"vs_dlt={vs_dlt} dlt_cpu_ratio={dlt_cpu}"
    )


if __name__ == "__main__":
    main()
