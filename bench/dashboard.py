"""Benchmark the client dashboard against a bare Panel page and a naive Panel dashboard.

    python -m bench.dashboard [--tenants 1000] [--sessions 1000] [--no-postgres] [--no-browser]

Builds a throwaway warehouse (tenants x 20 metrics x 730 days) on SQLite
(executemany in big transactions) and on PostgreSQL (COPY), then measures in one run:

- the per-view warehouse query (p95) on both databases;
- server views per second per process with a protocol-level viewer (the page's GET,
  then the Bokeh document pulled over the websocket) at 1 and 20 concurrent viewers,
  for the dashboard (run as in production: ``writevue serve``), a bare Panel page (the
  floor) and a naive Panel dashboard; the ratios use the 20-viewer figures, when the
  server process is saturated;
- time until the Bokeh document is idle with the charts drawn in headless Chromium,
  one viewer at a time, cold (new browser context; a tenant the server has not shown
  yet) and warm (the same page again), against the bare page;
- the dashboard server's RSS growth after N sessions opened and closed.

Prints a table; the last line is the machine-readable summary.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from writevue_devtools.peers import CHROMIUM, CHROMIUM_ARGS, POSTGRES_ADMIN_URL
from bench.procfs import rss_mb

METRICS = [f"metric_{i:02d}" for i in range(20)]
DAYS = 730

# -- building the warehouse -------------------------------------------------------------


def _value(tenant: int, metric: int, day: int) -> float:
    return float((tenant * 7919 + metric * 104_729 + day * 31) % 10_000) / 10


def make_tenants(runtime, count: int) -> list[tuple[str, str]]:
    """(tenant id, connection id) per tenant; names encrypted as in production."""
    from writevue_pipelines import registry

    made = []
    with runtime.db.session() as session:
        for n in range(count):
            tenant_id = registry.add_tenant(
                session, runtime.keys, f"Bench tenant {n}", f"t{n}@bench.test"
            )
            connection_id = registry.add_connection(
                session,
                runtime.keys,
                tenant_id,
                "stripe",
                "api_key",
                {"base_url": "http://127.0.0.1:9"},
                {"api_key": f"rk_bench_{n:06d}_xxxxxxxx"},
            )
            registry.record_refresh_result(session, connection_id, error=None)
            made.append((tenant_id, connection_id))
    return made


def _rows(tenants: list[tuple[str, str]], today: dt.date, stamp: str):
    for t, (tenant_id, connection_id) in enumerate(tenants):
        for m, metric in enumerate(METRICS):
            for d in range(DAYS):
                day = (today - dt.timedelta(days=d)).isoformat()
                yield tenant_id, connection_id, metric, "", day, _value(t, m, d), stamp


def fill_sqlite(path: Path, tenants, today: dt.date) -> int:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    written, batch = 0, []
    insert = (
        "INSERT INTO facts (tenant_id, connection_id, metric, dimension, day, value, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    for row in _rows(tenants, today, stamp):
        batch.append(row)
        if len(batch) >= 200_000:
            with connection:
                connection.executemany(insert, batch)
            written += len(batch)
            batch = []
    with connection:
        connection.executemany(insert, batch)
    written += len(batch)
    connection.execute("ANALYZE")
    connection.close()
    return written


def fill_postgres(url: str, tenants, today: dt.date) -> int:
    import psycopg

    stamp = dt.datetime.now(dt.UTC)
    written = 0
    with psycopg.connect(url) as connection:
        with connection.cursor() as cursor:
            with cursor.copy(
                "COPY facts (tenant_id, connection_id, metric, dimension, day, value, updated_at)"
                " FROM STDIN"
            ) as copy:
                for row in _rows(tenants, today, ""):
                    copy.write_row((*row[:6], stamp))
                    written += 1
        connection.execute("ANALYZE facts")
    return written


# -- the per-view query -------------------------------------------------------------------


def query_p95_ms(runtime, tenants, samples: int = 200) -> float:
    from dashboard_server.data import Period, load_facts, load_header

    period = Period.last(30)
    timings = []
    for i in range(samples):
        tenant_id, _ = tenants[(i * 7) % len(tenants)]
        header = load_header(runtime, tenant_id)
        started = time.perf_counter()
        facts = load_facts(runtime, tenant_id, period, header.version, cache=None)
        timings.append((time.perf_counter() - started) * 1000)
        assert facts.height == 60 * len(METRICS), facts.height
    return _p95(timings)


def _p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


# -- the servers under test -----------------------------------------------------------------


def serve(kind: str, port: int) -> None:
    """Run a baseline server in this process: the bare page or the naive dashboard.

    The dashboard itself is run as in production, by ``writevue serve`` (``start_server``).
    """
    import logging

    import panel as pn

    from writevue_pipelines.runtime import Runtime

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    runtime = Runtime.from_env()
    app = _bare if kind == "bare" else _naive_app(runtime)
    pn.extension(notifications=False)
    server = pn.serve(
        {"/d/{token}": app},
        port=port,
        address="127.0.0.1",
        show=False,
        start=False,
        threaded=False,
        verbose=False,
        websocket_origin=[f"127.0.0.1:{port}"],
    )
    server.start()
    server.io_loop.start()


def _bare():
    import panel as pn

    return pn.pane.Markdown("# Hello")


def _naive_app(runtime):
    """The naive build: a template, a figure per metric, Tabulator, KPI indicators."""
    import panel as pn
    import polars as pl
    from bokeh.plotting import figure

    from dashboard_server.data import load_dashboard
    from writevue_pipelines import links

    def app():
        token = pn.state.route_params.get("token", "")
        with runtime.db.session() as session:
            link = links.resolve_token(session, token)
        data = load_dashboard(runtime, link.tenant_id)
        template = pn.template.BootstrapTemplate(title=data.tenant_name)
        template.main.append(
            pn.FlexBox(
                *[pn.indicators.Number(name=k.label, value=k.value, format="{value:,.0f}")
                  for k in data.kpis]
            )
        )  # fmt: skip
        for metric in sorted(data.series["metric"].unique().to_list()):
            rows = data.series.filter(pl.col("metric") == metric).sort("day")
            plot = figure(
                title=metric, x_axis_type="datetime", height=250, sizing_mode="stretch_width"
            )
            plot.line(rows["day"].to_list(), rows["value"].to_list())
            template.main.append(pn.pane.Bokeh(plot))
        template.main.append(pn.widgets.Tabulator(data.series.to_pandas(), pagination="remote"))
        return template

    return app


def start_server(kind: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    from writevue_pipelines.demo import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if kind == "dashboard":  # the production entry point, its logging included
        command = ["-m", "writevue_pipelines.cli", "serve", "--port", str(port)]
        env = {**env, "WRITEVUE_DASHBOARD_URL": base}
    else:
        command = ["-m", "bench.dashboard", "--serve", kind, "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, *command],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/robots.txt", timeout=2)
            return process, base
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the {kind} server did not start")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# -- the protocol-level viewer ----------------------------------------------------------------

_TOKEN = re.compile(r'"token":\s*"([^"]+)"')


async def view_once(client: httpx.AsyncClient, url: str) -> float:
    """GET the page, then pull its Bokeh document over the websocket, as a browser would."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    started = time.perf_counter()
    page = await client.get(url)
    page.raise_for_status()
    token = _TOKEN.search(page.text).group(1)
    ws_url = url.replace("http", "ws", 1).split("?")[0] + "/ws"
    request = HTTPRequest(ws_url, connect_timeout=120, request_timeout=120)
    socket = await websocket_connect(request, subprotocols=["bokeh", token])
    # Browsers send without Nagle's delay (Chromium sets TCP_NODELAY on every socket);
    # without it, each multi-frame request here would wait ~40 ms for the server's ACK.
    socket.protocol.set_nodelay(True)
    try:
        for _ in range(3):  # ACK: header, metadata, content
            await socket.read_message()
        msgid = uuid.uuid4().hex
        for frame in ({"msgid": msgid, "msgtype": "PULL-DOC-REQ"}, {}, {}):
            await socket.write_message(json.dumps(frame))
        header = json.loads(await socket.read_message())
        await socket.read_message()  # metadata
        await socket.read_message()  # content: the document
        for _ in range(header.get("num_buffers", 0)):
            await socket.read_message()
        assert header["msgtype"] == "PULL-DOC-REPLY", header
    finally:
        socket.close()
    return time.perf_counter() - started


async def throughput(
    urls: list[str], concurrency: int, seconds: float, *, once: bool = False
) -> tuple[float, float]:
    """(views per second, p95 seconds per view) with ``concurrency`` viewers in a loop.

    The viewers take the URLs in turn, round and round; with ``once``, each URL is
    viewed at most once (the run ends early when they are used up).
    """
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2)
    turn = itertools.count()
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def viewer(n: int) -> None:
            while time.perf_counter() < deadline:
                i = next(turn)
                if once and i >= len(urls):
                    return
                latencies.append(await view_once(client, urls[i % len(urls)]))

        started = time.perf_counter()
        await asyncio.gather(*(viewer(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, _p95(latencies)


# -- the browser ---------------------------------------------------------------------------

_IDLE = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"


def render_times(pages: dict[str, list[str]], rounds: int) -> dict[str, tuple[float, float]]:
    """Per page: median (cold, warm) seconds until the document is idle and charts drawn.

    ``pages`` gives each kind one URL per round plus one for a first, discarded round
    (it warms the servers' code paths and their static files). Cold: a new browser
    context (empty browser cache) opening that round's URL; for the dashboard, a
    tenant the server has not shown yet, so its facts and page are not cached either.
    Warm: the same URL again in the same context.
    """
    from playwright.sync_api import sync_playwright

    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pages}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for round_ in range(rounds + 1):
                for kind, urls in pages.items():  # alternate, so both see the same load
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    for temperature in (0, 1):  # cold (empty cache), then warm
                        started = time.perf_counter()
                        page.goto(urls[round_ % len(urls)])
                        page.wait_for_function(_IDLE, timeout=60_000)
                        if kind == "dashboard":
                            page.locator("svg.wv-chart-svg").first.wait_for(timeout=60_000)
                        if round_:
                            results[kind][temperature].append(time.perf_counter() - started)
                    context.close()
        finally:
            browser.close()
    return {k: (statistics.median(c), statistics.median(w)) for k, (c, w) in results.items()}


# -- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=1000, help="for the RSS measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    parser.add_argument("--rounds", type=int, default=5, help="browser loads per page")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument(
        "--rss-only",
        action="store_true",
        help="only the dashboard server's RSS growth (no query, throughput or browser runs)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=40.0,
        help="seconds to wait before each RSS reading (at least Bokeh's 15 s + 17 s cleanup)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.rss_only:
        return rss_only(args)

    from writevue_pipelines import links
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    rows: list[tuple[str, str]] = []
    today = dt.datetime.now(dt.UTC).date()
    with tempfile.TemporaryDirectory(prefix="writevue-bench-") as scratch:
        home = Path(scratch) / "home"
        env = {"WRITEVUE_HOME": str(home), "WRITEVUE_DATABASE_URL": ""}
        settings = Settings.from_env(env)
        init_home(settings)
        runtime = Runtime(settings)
        started = time.perf_counter()
        tenants = make_tenants(runtime, args.tenants)
        count = fill_sqlite(home / "warehouse.db", tenants, today)
        rows.append(
            ("sqlite: facts loaded", f"{count:,} rows in {time.perf_counter() - started:.0f} s")
        )
        sqlite_p95 = query_p95_ms(runtime, tenants)
        rows.append(("sqlite: per-view query p95", f"{sqlite_p95:.1f} ms"))

        postgres_p95 = None
        if not args.no_postgres:
            postgres_p95 = _postgres_query(args.tenants, today, rows)

        # Links: 50 tenants viewed round and round (as returning clients do); one tenant
        # per browser round not viewed before it; the rest each viewed once, uncached.
        hot, render_count = 50, args.rounds + 1
        with runtime.db.session() as session:
            tokens = [links.create_link(session, t)[1] for t, _ in tenants]
        runtime.close()
        hot_tokens = tokens[:hot]
        fresh_tokens = tokens[hot : hot + render_count] or tokens[:1]
        cold_tokens = tokens[hot + render_count :]

        measured: dict[str, dict[str, float]] = {}
        for kind in ("bare", "naive", "dashboard"):
            process, base = start_server(kind, env)
            try:
                urls = [f"{base}/d/{token}" for token in hot_tokens]
                asyncio.run(throughput(urls[:2], 1, 2.0))  # warm up
                one, _ = asyncio.run(throughput(urls, 1, args.seconds))
                twenty, p95_20 = asyncio.run(throughput(urls, 20, args.seconds))
                measured[kind] = {"one": one, "twenty": twenty, "p95_20": p95_20}
                rows.append((f"{kind}: views/s at 1 viewer", f"{one:.1f}"))
                rows.append((f"{kind}: views/s at 20 viewers", f"{twenty:.1f}"))
                rows.append((f"{kind}: view p95 at 20 viewers", f"{p95_20 * 1000:.0f} ms"))
                if kind == "dashboard" and cold_tokens:
                    uncached, p95_uncached = asyncio.run(
                        throughput(
                            [f"{base}/d/{token}" for token in cold_tokens],
                            20,
                            args.seconds,
                            once=True,
                        )
                    )
                    rows.append(
                        (
                            "dashboard: views/s at 20 viewers, each a tenant not cached yet",
                            f"{uncached:.1f}  (p95 {p95_uncached * 1000:.0f} ms)",
                        )
                    )
                if kind == "dashboard":
                    growth = rss_growth(process.pid, urls, args.sessions, rows, args.settle)
                    if not args.no_browser:
                        bare_process, bare_base = start_server("bare", env)
                        try:
                            bare_urls = [f"{bare_base}/d/{token}" for token in hot_tokens]
                            asyncio.run(throughput(bare_urls[:2], 1, 2.0))  # warm up, as above
                            renders = render_times(
                                {
                                    "bare": bare_urls[:1],
                                    "dashboard": [f"{base}/d/{token}" for token in fresh_tokens],
                                },
                                args.rounds,
                            )
                        finally:
                            stop_server(bare_process)
            finally:
                stop_server(process)

    # Server cost per view is measured with 20 viewers, when the one server process is
    # saturated: with one viewer, a view's time is mostly round trips and waiting (the
    # baselines, plain Panel servers, also wait ~40 ms per message on Nagle's algorithm),
    # not the server's work. The 1-viewer figures are printed for the record.
    d, bare, naive = measured["dashboard"], measured["bare"], measured["naive"]
    floor_ratio = d["twenty"] / bare["twenty"]
    vs_naive = d["twenty"] / naive["twenty"]
    rows.append(
        ("floor_ratio (dashboard ÷ bare, 20 viewers)", f"{floor_ratio:.2f}  (target ≥ 0.4)")
    )
    rows.append(("vs_naive (dashboard ÷ naive, 20 viewers)", f"{vs_naive:.1f}x"))
    rows.append(
        (
            "at 1 viewer: dashboard ÷ bare, ÷ naive",
            f"{d['one'] / bare['one']:.2f}, {d['one'] / naive['one']:.1f}x",
        )
    )
    cold = warm = float("nan")
    if not args.no_browser:
        fresh = "a tenant not viewed before" if len(fresh_tokens) == render_count else "reused"
        for kind, (c, w) in renders.items():
            rows.append(
                (f"{kind}: idle with charts in Chromium, cold / warm", f"{c:.2f} s / {w:.2f} s")
            )
        rows.append(("dashboard: cold loads' tenants", fresh))
        cold = renders["dashboard"][0] / renders["bare"][0]
        warm = renders["dashboard"][1] / renders["bare"][1]
        rows.append(("render_ratio cold / warm (target ≤ 1.3)", f"{cold:.2f} / {warm:.2f}"))

    width = max(len(name) for name, _ in rows)
    print(
        f"\nWriteVue dashboard benchmark: {args.tenants} tenants x {len(METRICS)} metrics"
        f" x {DAYS} days"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(
        f"query_p95_ms={max(sqlite_p95, postgres_p95 or 0):.1f} "
        f"views_per_s={d['twenty']:.1f} floor_ratio={floor_ratio:.2f} vs_naive={vs_naive:.1f} "
        f"view_p95_ms_at_20={d['p95_20'] * 1000:.0f} render_ratio_cold={cold:.2f} "
        f"render_ratio_warm={warm:.2f} rss_growth_mb={growth:.1f}"
    )
    return 0


# Bokeh discards a session whose websocket closed once it has been unused for
# unused_session_lifetime (15 s), checked every check_unused_sessions (17 s): a closed
# session is gone at most 32 s later. Both RSS readings wait longer than that.
SESSION_CLEANUP_WAIT_S = 40


def rss_growth(
    pid: int, urls: list[str], sessions: int, rows: list, settle: float = SESSION_CLEANUP_WAIT_S
) -> float:
    """RSS after ``sessions`` sessions opened and closed, less RSS before, both settled."""
    time.sleep(settle)  # earlier sessions gone before the baseline
    before = rss_mb(pid)
    started = time.perf_counter()
    asyncio.run(_sessions(urls, sessions))
    opened = time.perf_counter() - started
    time.sleep(settle)
    growth = rss_mb(pid) - before
    rows.append(
        (
            f"dashboard: RSS growth after {sessions} sessions",
            f"{growth:.1f} MB  ({before:.0f} MB before; sessions opened in {opened:.0f} s, "
            f"read {settle:.0f} s after the last closed, past Bokeh's "
            "15 s + 17 s cleanup)",
        )
    )
    return growth


def rss_only(args) -> int:
    """The RSS measurement alone, against a small warehouse."""
    from writevue_pipelines import links
    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    rows: list[tuple[str, str]] = []
    today = dt.datetime.now(dt.UTC).date()
    with tempfile.TemporaryDirectory(prefix="writevue-bench-") as scratch:
        home = Path(scratch) / "home"
        env = {"WRITEVUE_HOME": str(home), "WRITEVUE_DATABASE_URL": ""}
        settings = Settings.from_env(env)
        init_home(settings)
        runtime = Runtime(settings)
        tenants = make_tenants(runtime, args.tenants)
        fill_sqlite(home / "warehouse.db", tenants, today)
        with runtime.db.session() as session:
            tokens = [links.create_link(session, t)[1] for t, _ in tenants[:50]]
        runtime.close()
        process, base = start_server("dashboard", env)
        try:
            urls = [f"{base}/d/{token}" for token in tokens]
            asyncio.run(throughput(urls, 1, 2.0))  # warm up: every tenant's page once or more
            growth = rss_growth(process.pid, urls, args.sessions, rows, args.settle)
        finally:
            stop_server(process)
    for name, value in rows:
        print(f"  {name}  {value}")
    print(f"rss_growth_mb={growth:.1f}")
    return 0


async def _sessions(urls: list[str], count: int) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for batch in range(0, count, 10):
            await asyncio.gather(
                *(
                    view_once(client, urls[(batch + i) % len(urls)])
                    for i in range(min(10, count - batch))
                )
            )


def _postgres_query(tenant_count: int, today: dt.date, rows: list) -> float | None:
    import psycopg

    from writevue_pipelines.home import init_home
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            name = f"writevue_bench_{uuid.uuid4().hex[:10]}"
            admin.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        rows.append(("postgres", f"skipped: {type(exc).__name__}"))
        return None
    url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="writevue-bench-pg-") as scratch:
            settings = Settings.from_env(
                {"WRITEVUE_HOME": str(Path(scratch) / "home"), "WRITEVUE_DATABASE_URL": url}
            )
            init_home(settings)
            runtime = Runtime(settings)
            started = time.perf_counter()
            tenants = make_tenants(runtime, tenant_count)
            count = fill_postgres(url, tenants, today)
            rows.append(
                (
                    "postgres: facts loaded",
                    f"{count:,} rows in {time.perf_counter() - started:.0f} s",
                )
            )
            p95 = query_p95_ms(runtime, tenants)
            rows.append(("postgres: per-view query p95", f"{p95:.1f} ms"))
            runtime.close()
            return p95
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
