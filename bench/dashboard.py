"""Benchmark the client dashboard against a bare Panel page and a naive Panel dashboard.

    python -m bench.dashboard [--tenants 1000] [--sessions 1000] [--no-postgres] [--no-browser]

Builds a throwaway warehouse (tenants x 20 metrics x 730 days; ``bench.dashboard_warehouse``)
on SQLite and on PostgreSQL, then measures in one run:

- the per-view warehouse query (p95) on both databases;
- server views per second per process with a protocol-level viewer (the page's GET,
  then the Bokeh document pulled over the websocket, offering per-message deflate as
  browsers do) at 1 and 20 concurrent viewers, for the dashboard (run as in production:
  ``writevue serve``), a bare Panel page (the floor, with the product's server tuning)
  and a naive Panel dashboard (both in ``bench.dashboard_baselines``); the ratios use
  the 20-viewer figures, when the server process is saturated. The floor and the
  dashboard run side by side and take turns (``WINDOWS`` windows each), so that on a
  shared machine both see the same load; each has shown every tenant once before its
  views are counted; the dashboard also on tenants it has not cached yet;
- each server's CPU per view at 20 viewers, read from /proc: unlike views per second,
  it does not depend on what else the machine runs (the viewers included), so
  ``cpu_per_view_ratio`` (dashboard ÷ bare page) carries the target on a busy machine;
- time until the Bokeh document is idle with the charts drawn in headless Chromium,
  one viewer at a time, cold (new browser context; a tenant the server has not shown
  yet) and warm (the same page again), against the bare page, and the bytes each load
  transferred, counted by a relay between the browser and each server: what crossed
  the network (HTTP headers and bodies as sent, websocket frames compressed as sent;
  what the browser's cache served is not transferred), and beside it what DevTools
  shows (websocket messages decompressed);
- the dashboard server's RSS growth after N sessions opened and closed.

Prints a table; the last line is the machine-readable summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from bench.dashboard_warehouse import DAYS, METRICS, ScratchWarehouse, scratch_warehouse
from bench.procfs import cpu_s, rss_mb
from bench.scratch import PostgresUnavailable
from writevue_devtools.peers import CHROMIUM, CHROMIUM_ARGS
from writevue_pipelines.processes import Child, free_port, spawn_and_wait

#: a row of the printed table: (what, figure)
Rows = list[tuple[str, str]]

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


def start_server(kind: str, env: dict[str, str], public: str | None = None) -> tuple[Child, str]:
    """The dashboard (``writevue serve``) or a baseline on a free port: (child, base URL).

    ``public``: another address the browser reaches it by (a ``WireCounter``'s), whose
    pages' websockets it must accept too."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if kind == "dashboard":  # the production entry point, its logging included
        command = ["-m", "writevue_pipelines.cli", "serve", "--port", str(port)]
        env = {**env, "WRITEVUE_DASHBOARD_URL": public or base}
    else:
        command = ["-m", "bench.dashboard_baselines", kind, "--port", str(port)]
        if public:
            command += ["--origin", urlsplit(public).netloc]
    child = spawn_and_wait(
        f"the {kind} server",
        [sys.executable, *command],
        f"{base}/robots.txt",
        status=None,  # any answer: the server is up
        env={**os.environ, **env},
    )
    return child, base


# -- the protocol-level viewer ----------------------------------------------------------------

_TOKEN = re.compile(r'"token":\s*"([^"]+)"')
#: what a browser offers on a websocket: per-message deflate, the server's choice of level
VIEWER_COMPRESSION: dict = {}


async def view_once(client: httpx.AsyncClient, url: str) -> float:
    """GET the page, then pull its Bokeh document over the websocket, as a browser would."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    started = time.perf_counter()
    page = await client.get(url)
    page.raise_for_status()
    token = _TOKEN.search(page.text).group(1)
    ws_url = url.replace("http", "ws", 1).split("?")[0] + "/ws"
    request = HTTPRequest(ws_url, connect_timeout=600, request_timeout=600)
    # Offering per-message deflate, as every browser does: a server that compresses its
    # messages pays for it here too.
    socket = await websocket_connect(
        request, subprotocols=["bokeh", token], compression_options=VIEWER_COMPRESSION
    )
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
) -> tuple[float, float, int]:
    """(views per second, p95 seconds per view, views) with ``concurrency`` viewers in a loop.

    The viewers take the URLs in turn, round and round; with ``once``, each URL is
    viewed at most once (the run ends early when they are used up).
    """
    latencies, elapsed = await viewing(urls, concurrency, seconds, once=once)
    return len(latencies) / elapsed, _p95(latencies), len(latencies)


async def viewing(
    urls: list[str], concurrency: int, seconds: float, *, once: bool = False
) -> tuple[list[float], float]:
    """``throughput``'s views: (seconds each view took, seconds they all took)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency * 2)
    turn = itertools.count()
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def viewer(n: int) -> None:
            while time.perf_counter() < deadline:
                i = next(turn)
                if once and i >= len(urls):
                    return
                latencies.append(await view_once(client, urls[i % len(urls)]))

        started = time.perf_counter()
        await asyncio.gather(*(viewer(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


# -- the browser ---------------------------------------------------------------------------

_IDLE = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"


@dataclass
class Render:
    """Median seconds until idle with charts drawn, and KB transferred (on the network,
    and as DevTools shows them), cold and warm."""

    cold_s: float
    warm_s: float
    cold_kb: float
    warm_kb: float
    cold_decoded_kb: float = float("nan")
    warm_decoded_kb: float = float("nan")


def render_times(
    pages: dict[str, list[str]], rounds: int, wires: dict[str, WireCounter]
) -> dict[str, Render]:
    """Per page: median (cold, warm) seconds until the document is idle and charts drawn,
    and the bytes each load transferred.

    ``pages`` gives each kind one URL per round plus one for a first, discarded round
    (it warms the servers' code paths and their static files). Cold: a new browser
    context (empty browser cache) opening that round's URL; for the dashboard, a
    tenant the server has not shown yet, so its facts and page are not cached either.
    Warm: the same URL again in the same context. Bytes: what each kind's server sent
    through its ``wires`` relay, as on the network (compressed websocket frames
    compressed); beside them what DevTools shows (websocket messages decompressed).
    """
    from playwright.sync_api import sync_playwright

    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pages}
    transferred: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pages}
    decoded: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pages}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for round_ in range(rounds + 1):
                for kind, urls in pages.items():  # alternate, so both see the same load
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    page = context.new_page()
                    counter = ByteCounter(context.new_cdp_session(page))
                    for temperature in (0, 1):  # cold (empty cache), then warm
                        counter.bytes = 0
                        wires[kind].reset()
                        started = time.perf_counter()
                        page.goto(urls[round_ % len(urls)])
                        page.wait_for_function(_IDLE, timeout=60_000)
                        if kind == "dashboard":
                            page.locator("svg.wv-chart-svg").first.wait_for(timeout=60_000)
                        if round_:
                            results[kind][temperature].append(time.perf_counter() - started)
                            page.wait_for_timeout(200)  # the last events' byte counts
                            transferred[kind][temperature].append(wires[kind].received / 1024)
                            decoded[kind][temperature].append(counter.bytes / 1024)
                    context.close()
        finally:
            browser.close()
    return {
        k: Render(
            statistics.median(results[k][0]),
            statistics.median(results[k][1]),
            statistics.median(transferred[k][0]),
            statistics.median(transferred[k][1]),
            statistics.median(decoded[k][0]),
            statistics.median(decoded[k][1]),
        )
        for k in pages
    }


class WireCounter:
    """A TCP relay in front of a server, counting the bytes the server sends through it:
    what a browser downloads as it crosses the network (HTTP headers and bodies as sent,
    websocket frames as sent, compressed when both ends agreed to deflate; nothing for
    what the browser's cache served). Runs its own event loop in a thread."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.target: int | None = None
        self.received = 0
        self._loop = asyncio.new_event_loop()
        self._server = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port)
        )
        started.set()
        self._loop.run_forever()
        # Stopped (``close``): end the relays still open before the loop closes, so none
        # is left to be finalised against a closed loop.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def reset(self) -> None:
        self.received = 0

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.close()
            return

        async def pipe(source, sink, count: bool) -> None:
            try:
                while data := await source.read(65536):
                    if count:
                        self.received += len(data)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, False), pipe(upstream_reader, writer, True)
        )

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


class ByteCounter:
    """Bytes a page received as DevTools reports them: each HTTP response as sent
    (headers and compressed body; nothing for what the cache served) and each websocket
    message's payload, decompressed."""

    def __init__(self, cdp):
        self.bytes = 0
        cdp.send("Network.enable")
        cdp.on("Network.loadingFinished", self._http)
        cdp.on("Network.webSocketFrameReceived", self._frame)

    def _http(self, event: dict) -> None:
        self.bytes += event.get("encodedDataLength", 0)

    def _frame(self, event: dict) -> None:
        self.bytes += len(event.get("response", {}).get("payloadData", ""))


# -- RSS -------------------------------------------------------------------------------------

# Bokeh discards a session whose websocket closed once it has been unused for
# unused_session_lifetime (15 s), checked every check_unused_sessions (17 s): a closed
# session is gone at most 32 s later. Both RSS readings wait longer than that.
SESSION_CLEANUP_WAIT_S = 40


def rss_growth(
    pid: int, urls: list[str], sessions: int, rows: Rows, settle: float = SESSION_CLEANUP_WAIT_S
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


async def _sessions(urls: list[str], count: int) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        for batch in range(0, count, 10):
            await asyncio.gather(
                *(
                    view_once(client, urls[(batch + i) % len(urls)])
                    for i in range(min(10, count - batch))
                )
            )


# -- the run, step by step -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=1000, help="for the RSS measurement")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    parser.add_argument("--rounds", type=int, default=5, help="browser loads per page")
    parser.add_argument(
        "--viewers", type=int, default=VIEWERS, help="concurrent viewers when saturating a server"
    )
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
    return parser.parse_args(argv)


def measure_query(database: str, warehouse: ScratchWarehouse, rows: Rows) -> float:
    """How long the load took, and the per-view query's p95 in ms, on one database."""
    rows.append(
        (f"{database}: facts loaded", f"{warehouse.facts:,} rows in {warehouse.load_s:.0f} s")
    )
    p95 = query_p95_ms(warehouse.runtime, warehouse.tenants)
    rows.append((f"{database}: per-view query p95", f"{p95:.1f} ms"))
    return p95


def measure_postgres_query(tenant_count: int, today: dt.date, rows: Rows) -> float | None:
    """The same tenants on a scratch PostgreSQL database; None when the server is missing."""
    try:
        with scratch_warehouse(tenant_count, today, postgres=True) as warehouse:
            return measure_query("postgres", warehouse, rows)
    except PostgresUnavailable as exc:
        rows.append(("postgres", f"skipped: {exc}"))
        return None


@dataclass
class Links:
    """Dashboard link tokens, by how the run views them."""

    #: 50 tenants viewed round and round, as returning clients do
    hot: list[str]
    #: one tenant per browser round (the discarded first one included), not viewed before it
    fresh: list[str]
    #: the rest, each viewed once, uncached
    cold: list[str]
    fresh_wanted: int


def make_links(warehouse: ScratchWarehouse, rounds: int) -> Links:
    """A link per tenant; then the runtime is closed, so the servers have the warehouse."""
    from writevue_pipelines import links

    hot, render_count = 50, rounds + 1
    with warehouse.runtime.db.session() as session:
        tokens = [links.create_link(session, t)[1] for t, _ in warehouse.tenants]
    warehouse.runtime.close()
    return Links(
        hot=tokens[:hot],
        fresh=tokens[hot : hot + render_count] or tokens[:1],
        cold=tokens[hot + render_count :],
        fresh_wanted=render_count,
    )


#: concurrent viewers of the saturated-server figures (``--viewers``)
VIEWERS = 20


def viewed(pid: int, urls: list[str], seconds: float, *, once: bool = False) -> dict:
    """VIEWERS viewers for ``seconds``: views/s, p95, and the server's and the viewers' CPU
    milliseconds per view (the server's from /proc, so the viewers' share of the
    machine does not change it)."""
    server, client = cpu_s(pid), time.process_time()
    rate, p95, views = asyncio.run(throughput(urls, VIEWERS, seconds, once=once))
    server, client = cpu_s(pid) - server, time.process_time() - client
    return {
        "twenty": rate,
        "p95_20": p95,
        "cpu_ms": server / max(views, 1) * 1000,
        "viewer_cpu_ms": client / max(views, 1) * 1000,
    }


def measure_views(
    child: Child, base: str, kind: str, tokens: list[str], seconds: float, rows: Rows
) -> dict:
    """Views per second at 1 and 20 viewers, the p95 and server CPU per view at 20, on a
    warmed-up server."""
    urls = [f"{base}/d/{token}" for token in tokens]
    asyncio.run(throughput(urls[:2], 1, 2.0))  # warm up
    one, _, _ = asyncio.run(throughput(urls, 1, seconds))
    figures = {"one": one, **viewed(child.process.pid, urls, seconds)}
    _view_rows(kind, figures, rows)
    return figures


#: windows each of the floor and the dashboard gets, taking turns, per measurement
WINDOWS = 4


@dataclass
class Tally:
    """Views of one server over its windows: how many, how long, and the CPU they took."""

    latencies: list[float]
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    viewer_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")


def measure_side_by_side(
    servers: dict[str, tuple[Child, str]], tokens: list[str], seconds: float, rows: Rows
) -> dict[str, dict]:
    """``measure_views`` for servers running side by side, which take turns: each gets
    ``WINDOWS`` windows of ``seconds / WINDOWS`` at 1 viewer, then at 20, one after the
    other's, so that on a shared machine both see the same load (the figures are the
    windows' totals). Each server has first shown every URL once: the views measured
    are of tenants it has shown before, as returning clients' are."""
    urls = {kind: [f"{base}/d/{token}" for token in tokens] for kind, (_, base) in servers.items()}
    for kind in servers:
        asyncio.run(viewing(urls[kind], 5, 600, once=True))
    tallies = {(kind, n): Tally([]) for kind in servers for n in (1, VIEWERS)}
    for viewers in (1, VIEWERS):
        for _ in range(WINDOWS):
            for kind, (child, _) in servers.items():
                tally = tallies[kind, viewers]
                server, client = cpu_s(child.process.pid), time.process_time()
                latencies, elapsed = asyncio.run(viewing(urls[kind], viewers, seconds / WINDOWS))
                tally.server_cpu_s += cpu_s(child.process.pid) - server
                tally.viewer_cpu_s += time.process_time() - client
                tally.latencies += latencies
                tally.seconds += elapsed
    figures = {}
    for kind in servers:
        one, twenty = tallies[kind, 1], tallies[kind, VIEWERS]
        views = max(len(twenty.latencies), 1)
        figures[kind] = {
            "one": one.rate,
            "twenty": twenty.rate,
            "p95_20": _p95(twenty.latencies),
            "cpu_ms": twenty.server_cpu_s / views * 1000,
            "viewer_cpu_ms": twenty.viewer_cpu_s / views * 1000,
        }
        _view_rows(kind, figures[kind], rows)
    return figures


def _view_rows(kind: str, figures: dict, rows: Rows) -> None:
    rows.append((f"{kind}: views/s at 1 viewer", f"{figures['one']:.1f}"))
    rows.append((f"{kind}: views/s at {VIEWERS} viewers", f"{figures['twenty']:.1f}"))
    rows.append((f"{kind}: view p95 at {VIEWERS} viewers", f"{figures['p95_20'] * 1000:.0f} ms"))
    rows.append(
        (
            f"{kind}: server CPU per view at {VIEWERS} viewers",
            f"{figures['cpu_ms']:.1f} ms  (the viewers' own: {figures['viewer_cpu_ms']:.1f} ms)",
        )
    )


def measure_uncached_views(
    child: Child, base: str, tokens: list[str], seconds: float, rows: Rows
) -> dict:
    """Dashboard views at 20 viewers, each of a tenant the server has not shown yet."""
    figures = viewed(
        child.process.pid, [f"{base}/d/{token}" for token in tokens], seconds, once=True
    )
    rows.append(
        (
            f"dashboard: views/s at {VIEWERS} viewers, each a tenant not cached yet",
            f"{figures['twenty']:.1f}  (p95 {figures['p95_20'] * 1000:.0f} ms; "
            f"server CPU {figures['cpu_ms']:.1f} ms per view)",
        )
    )
    return figures


def measure_renders(
    bases: dict[str, str], wires: dict[str, WireCounter], links: Links, rounds: int
) -> dict[str, Render]:
    """Chromium loads of the dashboard (fresh tenants) against the bare page, each through
    its server's ``WireCounter`` (the browser loads the pages by the relays' addresses)."""
    for kind, base in bases.items():
        wires[kind].target = urlsplit(base).port
    return render_times(
        {
            "bare": [f"{wires['bare'].base}/d/{token}" for token in links.hot[:1]],
            "dashboard": [f"{wires['dashboard'].base}/d/{token}" for token in links.fresh],
        },
        rounds,
        wires,
    )


@dataclass
class Measured:
    views: dict[str, dict[str, float]]
    rss_growth_mb: float
    renders: dict[str, Render] | None
    uncached: dict[str, float] | None = None


def measure_servers(args, env: dict[str, str], links: Links, rows: Rows) -> Measured:
    """The naive dashboard's views alone; then the bare page's and the dashboard's side by
    side (``measure_side_by_side``); the dashboard's uncached views and RSS; the renders."""
    views: dict[str, dict[str, float]] = {}
    child, base = start_server("naive", env)
    with child:
        views["naive"] = measure_views(child, base, "naive", links.hot, args.seconds, rows)
    wires = {kind: WireCounter() for kind in ("bare", "dashboard")}  # the browser's way in
    with contextlib.ExitStack() as stack:
        for wire in wires.values():
            stack.enter_context(contextlib.closing(wire))
        servers = {}
        for kind in ("bare", "dashboard"):
            servers[kind] = start_server(kind, env, public=wires[kind].base)
            stack.enter_context(servers[kind][0])
        views.update(measure_side_by_side(servers, links.hot, args.seconds, rows))
        child, base = servers["dashboard"]
        uncached = None
        if links.cold:
            uncached = measure_uncached_views(child, base, links.cold, args.seconds, rows)
        urls = [f"{base}/d/{token}" for token in links.hot]
        growth = rss_growth(child.process.pid, urls, args.sessions, rows, args.settle)
        renders = None
        if not args.no_browser:
            bases = {kind: base for kind, (_, base) in servers.items()}
            renders = measure_renders(bases, wires, links, args.rounds)
    return Measured(views, growth, renders, uncached)


def add_ratios(measured: Measured, links: Links, rows: Rows) -> dict[str, float]:
    """The dashboard against the baselines; the figures of the summary line."""
    # Server cost per view is measured with 20 viewers, when the one server process is
    # saturated: with one viewer, a view's time is mostly round trips and waiting (the
    # baselines, plain Panel servers, also wait ~40 ms per message on Nagle's algorithm),
    # not the server's work. The 1-viewer figures are printed for the record.
    d, bare, naive = (measured.views[k] for k in ("dashboard", "bare", "naive"))
    floor_ratio = d["twenty"] / bare["twenty"]
    vs_naive = d["twenty"] / naive["twenty"]
    cpu_ratio = d["cpu_ms"] / bare["cpu_ms"]
    rows.append(
        (f"floor_ratio (dashboard ÷ bare, {VIEWERS} viewers)", f"{floor_ratio:.2f}  (target ≥ 0.5)")
    )
    rows.append(
        (
            "cpu_per_view_ratio (dashboard ÷ bare, server CPU)",
            f"{cpu_ratio:.2f}  (target ≤ 2; naive ÷ bare {naive['cpu_ms'] / bare['cpu_ms']:.1f})",
        )
    )
    rows.append((f"vs_naive (dashboard ÷ naive, {VIEWERS} viewers)", f"{vs_naive:.1f}x"))
    vs_naive_uncached = float("nan")
    if measured.uncached is not None:
        vs_naive_uncached = measured.uncached["twenty"] / naive["twenty"]
        rows.append(
            (
                "vs_naive, the dashboard on tenants not cached yet",
                f"{vs_naive_uncached:.1f}x  (server CPU per view "
                f"{naive['cpu_ms'] / measured.uncached['cpu_ms']:.1f}x less)",
            )
        )
    rows.append(
        (
            "at 1 viewer: dashboard ÷ bare, ÷ naive",
            f"{d['one'] / bare['one']:.2f}, {d['one'] / naive['one']:.1f}x",
        )
    )
    cold = warm = warm_kb = float("nan")
    if measured.renders is not None:
        renders = measured.renders
        fresh = "a tenant not viewed before" if len(links.fresh) == links.fresh_wanted else "reused"
        for kind, r in renders.items():
            rows.append(
                (
                    f"{kind}: idle with charts in Chromium, cold / warm",
                    f"{r.cold_s:.2f} s / {r.warm_s:.2f} s",
                )
            )
            rows.append(
                (
                    f"{kind}: transferred, cold / warm (repeat view)",
                    f"{r.cold_kb:.0f} KB / {r.warm_kb:.0f} KB on the network  "
                    f"(DevTools, websocket decompressed: {r.cold_decoded_kb:.0f} KB / "
                    f"{r.warm_decoded_kb:.0f} KB)",
                )
            )
        rows.append(("dashboard: cold loads' tenants", fresh))
        cold = renders["dashboard"].cold_s / renders["bare"].cold_s
        warm = renders["dashboard"].warm_s / renders["bare"].warm_s
        warm_kb = renders["dashboard"].warm_kb
        rows.append(("render_ratio cold / warm (target ≤ 1.2)", f"{cold:.2f} / {warm:.2f}"))
        rows.append(("warm_kb (dashboard's repeat view; target ≤ 100)", f"{warm_kb:.0f}"))
    return {
        "floor_ratio": floor_ratio,
        "vs_naive": vs_naive,
        "vs_naive_uncached": vs_naive_uncached,
        "cpu_per_view_ratio": cpu_ratio,
        "cold": cold,
        "warm": warm,
        "warm_kb": warm_kb,
    }


def print_report(
    tenants: int, rows: Rows, query_p95: float, measured: Measured, ratios: dict[str, float]
) -> None:
    d = measured.views["dashboard"]
    width = max(len(name) for name, _ in rows)
    print(
        f"\nWriteVue dashboard benchmark: {tenants} tenants x {len(METRICS)} metrics x {DAYS} days"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(
        f"query_p95_ms={query_p95:.1f} "
        f"views_per_s={d['twenty']:.1f} floor_ratio={ratios['floor_ratio']:.2f} "
        f"vs_naive={ratios['vs_naive']:.1f} vs_naive_uncached={ratios['vs_naive_uncached']:.1f} "
        f"cpu_per_view_ratio={ratios['cpu_per_view_ratio']:.2f} "
        f"viewers={VIEWERS} view_p95_ms={d['p95_20'] * 1000:.0f} "
        f"render_ratio_cold={ratios['cold']:.2f} "
        f"render_ratio_warm={ratios['warm']:.2f} warm_kb={ratios['warm_kb']:.0f} "
        f"rss_growth_mb={measured.rss_growth_mb:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global VIEWERS
    VIEWERS = args.viewers
    if args.rss_only:
        return rss_only(args)

    rows: Rows = []
    today = dt.datetime.now(dt.UTC).date()
    with scratch_warehouse(args.tenants, today) as warehouse:
        query_p95 = measure_query("sqlite", warehouse, rows)
        if not args.no_postgres:
            query_p95 = max(query_p95, measure_postgres_query(args.tenants, today, rows) or 0)
        links = make_links(warehouse, args.rounds)
        measured = measure_servers(args, warehouse.env, links, rows)
    ratios = add_ratios(measured, links, rows)
    print_report(args.tenants, rows, query_p95, measured, ratios)
    return 0


def rss_only(args) -> int:
    """The RSS measurement alone, against a small warehouse."""
    from writevue_pipelines import links

    rows: Rows = []
    today = dt.datetime.now(dt.UTC).date()
    with scratch_warehouse(args.tenants, today) as warehouse:
        with warehouse.runtime.db.session() as session:
            tokens = [links.create_link(session, t)[1] for t, _ in warehouse.tenants[:50]]
        warehouse.runtime.close()
        child, base = start_server("dashboard", warehouse.env)
        with child:
            urls = [f"{base}/d/{token}" for token in tokens]
            asyncio.run(throughput(urls, 1, 2.0))  # warm up: every tenant's page once or more
            growth = rss_growth(child.process.pid, urls, args.sessions, rows, args.settle)
    for name, value in rows:
        print(f"  {name}  {value}")
    print(f"rss_growth_mb={growth:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
