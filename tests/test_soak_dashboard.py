"""Dashboard soak: 50 protocol-level viewers for minutes against one `writevue serve`
process (SQLite) and against the production layout (two processes on one PostgreSQL
warehouse behind nginx over TLS, ``deploy/nginx.conf`` rendered as the production check
renders it).

The viewers (``soak_viewers``) open pages, pull their documents over the websocket and
pick other periods, pausing as readers do. Every 2 s each dashboard process's VmRSS,
thread count and open file descriptors are read from /proc.

What must hold, and why these bounds:

- no error at all: every page 200, every document pulled, every period answered;
- RSS flat: the least-squares slope over the soak (after its first fifth, while the 50
  readers arrive and the caches fill) at most ``RSS_SLOPE_LIMIT_MB_MIN``. A Bokeh session
  holds ~1-2 MB; a leak of one session per page opened (~2 a second) would grow by
  hundreds of MB a minute, a leak of one query result per view by tens. 3 MB/min is
  far below those and above what the allocator's arenas wander on this machine (measured
  in ``docs/RELIABILITY.md``). A run shorter than ``SLOPE_MIN_WINDOW_S`` reports the
  slope without judging it: over seconds, one garbage collection moves it more than that;
- no file descriptor or thread growth: idle (no page open, 5 s after the last closed)
  after the soak, each process has at most ``FD_SLACK`` more descriptors and
  ``THREAD_SLACK`` more threads than idle after the warm-up;
- p95 latency within the soak's targets (``VIEW_P95_TARGET_S``, ``CHANGE_P95_TARGET_S``).
  The dashboard benchmark's own targets are ratios against a bare Panel page measured in
  the same run (``bench.dashboard``); it states no absolute latency. These targets are the
  latencies a reader tolerates; a measurement on a machine shared with other work.

Marked ``soak`` (``make soak``): ``WRITEVUE_SOAK_SECONDS`` per layout (300 by default; CI
runs 30). The figures go to the test's output and ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import statistics
import time
from pathlib import Path

import httpx
import pytest
from soak_viewers import (
    Sample,
    Tally,
    p95,
    run_viewers,
    sample,
    slope_per_minute,
    tenants_with_links,
    tls_context,
)
from support import remember_secret, start_dashboard_server

from writevue_devtools.production_check import NGINX, render_nginx
from writevue_devtools.tls import make_tls_cert
from writevue_pipelines.home import init_home
from writevue_pipelines.processes import Child, free_port, spawn, wait_until
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

SOAK_SECONDS = float(os.environ.get("WRITEVUE_SOAK_SECONDS", "300"))
VIEWERS = 50
TENANTS = 20
WARMUP_S = 15.0
SAMPLE_EVERY_S = 2.0
RSS_SLOPE_LIMIT_MB_MIN = 3.0
SLOPE_MIN_WINDOW_S = 120.0
FD_SLACK = 3
THREAD_SLACK = 2
#: the readers arrive over their first pause (``soak_viewers.THINK_S``): 50 pages opened
#: within 10 s, the server's whole capacity; latency is judged after it
ARRIVAL_S = 10.0
VIEW_P95_TARGET_S = 3.0
CHANGE_P95_TARGET_S = 1.5


class Layout:
    """The dashboard processes under test, the URL readers use, and the CA to trust."""

    def __init__(self, base: str, children: list[Child], verify: Path | None, extra=()):
        self.base, self.children, self.verify = base, children, verify
        self._extra = list(extra)

    def stop(self) -> None:
        for child in [*self.children, *self._extra]:
            child.stop()


def one_process(tmp_path: Path) -> tuple[Runtime, Layout]:
    home = tmp_path / "home"
    settings = Settings.from_env({"WRITEVUE_HOME": str(home)})
    init_home(settings)
    runtime = Runtime(settings)
    child, base = start_dashboard_server(home, tmp_path / "serve.log")
    return runtime, Layout(base, [child], None)


def two_processes_behind_nginx(tmp_path: Path, postgres_url: str) -> tuple[Runtime, Layout]:
    """As ``deploy/`` lays it out: two processes sharing the warehouse and the session
    secret, nginx (``deploy/nginx.conf``, rendered by the production check's function)
    hashing each link to one of them, over TLS."""
    home = tmp_path / "home"
    secret = remember_secret(secrets.token_urlsafe(32))
    settings = Settings.from_env(
        {"WRITEVUE_HOME": str(home), "WRITEVUE_DATABASE_URL": postgres_url}
    )
    init_home(settings)
    runtime = Runtime(settings)
    port = free_port()
    public = f"https://127.0.0.1:{port}"
    env = {
        "WRITEVUE_SESSION_SECRET": secret,
        "WRITEVUE_DASHBOARD_URL": public,
        "WRITEVUE_TRUSTED_PROXIES": "127.0.0.1",
    }
    children, bases = [], []
    for n in range(2):
        child, base = start_dashboard_server(
            home, tmp_path / f"serve-{n}.log", database_url=postgres_url, **env
        )
        children.append(child)
        bases.append(base)
    cert, key = make_tls_cert(tmp_path / "tls")
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    shutil.chown(prefix / "tmp", user="nobody") if os.geteuid() == 0 else None
    config = prefix / "nginx.conf"
    config.write_text(
        render_nginx(
            Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf",
            listen=f"127.0.0.1:{port}",
            server_name="127.0.0.1",
            cert=cert,
            key=key,
            upstreams=[base.removeprefix("http://") for base in bases],
        )
    )
    nginx = spawn(
        "nginx",
        [NGINX, "-e", "stderr", "-p", str(prefix), "-c", str(config)],
        log_path=tmp_path / "nginx.log",
    )

    def up() -> bool:
        answer = httpx.get(f"{public}/robots.txt", verify=tls_context(cert), timeout=2)
        return answer.status_code == 200

    wait_until(up, timeout=30, what="nginx", child=nginx)
    return runtime, Layout(public, children, cert, extra=[nginx])


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="one-process"),
        pytest.param("postgres", id="two-processes-nginx"),
    ]
)
def layout(request, tmp_path):
    if request.param == "postgres":
        runtime, layout = two_processes_behind_nginx(
            tmp_path, request.getfixturevalue("postgres_url")
        )
    else:
        runtime, layout = one_process(tmp_path)
    try:
        layout.tokens = tenants_with_links(runtime, TENANTS)
        yield layout
    finally:
        layout.stop()
        runtime.close()


async def soak(layout: Layout, seconds: float) -> tuple[Tally, dict[int, list[Sample]]]:
    """The viewers for ``seconds`` while every process is sampled every 2 s."""
    urls = [f"{layout.base}/d/{token}" for token in layout.tokens]
    pids = [child.process.pid for child in layout.children]
    samples: dict[int, list[Sample]] = {pid: [] for pid in pids}
    started = time.monotonic()

    async def sampler(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for pid in pids:
                samples[pid].append(sample(pid, started))
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
            except TimeoutError:
                pass

    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop))
    tally = await run_viewers(VIEWERS, urls, seconds, verify=layout.verify)
    stop.set()
    await sampling
    return tally, samples


def idle(layout: Layout) -> dict[int, Sample]:
    time.sleep(5)  # every page closed; its socket's descriptors go at once
    return {child.process.pid: sample(child.process.pid, 0) for child in layout.children}


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 900)
def test_soak_fifty_viewers(layout, record_property):
    urls = [f"{layout.base}/d/{token}" for token in layout.tokens]
    warm = asyncio.run(run_viewers(VIEWERS, urls, WARMUP_S, verify=layout.verify))
    before = idle(layout)
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    tally, samples = asyncio.run(soak(layout, SOAK_SECONDS))
    after = idle(layout)
    loads, cores = (load_before, os.getloadavg()[0]), os.cpu_count() or 1
    busy = (
        f"load average {loads[0]:.1f} / {loads[1]:.1f} (start / end) on {cores} cores"
        if max(loads) > cores
        else ""
    )
    ramp = began + ARRIVAL_S
    steady_views = p95(
        [v for v, at in zip(tally.views, tally.opened_at, strict=True) if at - v >= ramp]
    )
    steady_changes = p95(
        [c for c, at in zip(tally.changes, tally.changed_at, strict=True) if at - c >= ramp]
    )

    lines = [
        f"dashboard soak ({len(layout.children)} process(es), {SOAK_SECONDS:.0f} s, "
        f"{VIEWERS} viewers): {tally.summary()} (warm-up: {warm.summary()})"
    ]
    slopes = {}
    for pid, series in samples.items():
        window = [s for s in series if s.at >= SOAK_SECONDS / 5]
        slopes[pid] = slope_per_minute(window)
        rss = [s.rss_mb for s in series]
        lines.append(
            f"  process {pid}: RSS {min(rss):.0f}-{max(rss):.0f} MB "
            f"(median {statistics.median(rss):.0f}), slope {slopes[pid]:+.2f} MB/min over "
            f"{window[-1].at - window[0].at:.0f} s; idle before/after: "
            f"fds {before[pid].fds}/{after[pid].fds}, threads "
            f"{before[pid].threads}/{after[pid].threads}, RSS "
            f"{before[pid].rss_mb:.0f}/{after[pid].rss_mb:.0f} MB"
        )
    lines.append(f"  slowest views: {tally.slowest(began)}")
    lines.append(
        f"  after the readers' arrival (+{ARRIVAL_S:.0f} s): "
        f"view p95 {steady_views * 1000:.0f} ms, period p95 {steady_changes * 1000:.0f} ms; "
        f"load average {loads[0]:.1f} / {loads[1]:.1f} (start / end) on {cores} cores"
    )
    lines.append(
        f"  targets: view p95 <= {VIEW_P95_TARGET_S} s, period p95 <= {CHANGE_P95_TARGET_S} s, "
        f"RSS slope <= {RSS_SLOPE_LIMIT_MB_MIN} MB/min (judged over >= {SLOPE_MIN_WINDOW_S:.0f} s)"
    )
    report = "\n".join(lines)
    print(report)
    record_property("soak", report)

    assert not warm.errors and not tally.errors, (warm.errors + tally.errors)[:10]
    assert tally.views and tally.changes
    for pid in samples:
        assert after[pid].fds <= before[pid].fds + FD_SLACK, report
        assert after[pid].threads <= before[pid].threads + THREAD_SLACK, report
        window = SOAK_SECONDS * 4 / 5
        if window >= SLOPE_MIN_WINDOW_S:
            assert slopes[pid] <= RSS_SLOPE_LIMIT_MB_MIN, report
    # A measurement run: the latency targets are judged here (never in the normal suite),
    # on the steady state after the readers' arrival, and only on a machine not busy
    # with other work (its load average at most its cores, at the start and the end).
    if busy:
        pytest.skip(f"latency not judged: {busy}\n{report}")
    assert steady_views <= VIEW_P95_TARGET_S, report
    assert steady_changes <= CHANGE_P95_TARGET_S, report
