"""Protocol-level dashboard viewers for the soak and the restart tests, and /proc sampling.

A viewer does what a person with a dashboard link does, at the protocol level (no
browser): GET the page, open its Bokeh websocket with the session token the page embeds
(its ``Origin`` too, as a browser sends it), pull the document, then pick another period
a few times (the range picker's ``active`` changed, as Bokeh's client sends it) and wait
for the dashboard that answers it, pausing between actions as a reader does; then it
closes the page and, after a pause, opens one again. Each action's latency is recorded;
anything but the expected answer is an error, with what it was.

Reuses ``dashboard_server.probe`` (the message framing the benchmark and the production
check use too).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import polars as pl
from support import add_tenant_with_facts

from dashboard_server.probe import DocumentSocket, Message, models, session_token, socket_url
from writevue_pipelines import links
from writevue_pipelines.runtime import Runtime

#: seconds a reader pauses between actions (uniform): people read a dashboard before they
#: pick another period; 50 such viewers open ~2 pages and pick ~6 periods a second
THINK_S = (3.0, 10.0)
#: periods picked per page opened
CHANGES_PER_PAGE = 3
TIMEOUT_S = 60.0
TODAY = dt.datetime.now(dt.UTC).date()


@dataclass
class Tally:
    """What the viewers saw: latencies in seconds, and every error."""

    views: list[float] = field(default_factory=list)  # page GET + document pulled
    opened_at: list[float] = field(default_factory=list)  # when each page was up (monotonic)
    changes: list[float] = field(default_factory=list)  # period picked -> its dashboard
    changed_at: list[float] = field(default_factory=list)  # when each answer came
    errors: list[str] = field(default_factory=list)

    def slowest(self, since: float, count: int = 5) -> str:
        """The slowest views: when they began (s after ``since``) and how long they took."""
        views = sorted(zip(self.views, self.opened_at, strict=True), reverse=True)[:count]
        return ", ".join(f"{took:.2f} s at +{at - took - since:.0f} s" for took, at in views)

    def summary(self) -> str:
        return (
            f"{len(self.views)} pages opened (p95 {p95(self.views) * 1000:.0f} ms), "
            f"{len(self.changes)} periods picked (p95 {p95(self.changes) * 1000:.0f} ms), "
            f"{len(self.errors)} errors"
        )


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def open_page(
    client: httpx.AsyncClient, page_url: str, verify: Path | None = None
) -> tuple[DocumentSocket, Message]:
    """The page loaded, its websocket open (with the page's Origin), its document pulled."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    page = await client.get(page_url)
    if page.status_code != 200:
        raise ViewError(f"page answered {page.status_code}")
    origin = urlunsplit((*urlsplit(page_url)[:2], "", "", ""))
    request = HTTPRequest(
        socket_url(page_url),
        headers={"Origin": origin},
        ca_certs=str(verify) if verify else None,
        connect_timeout=TIMEOUT_S,
        request_timeout=TIMEOUT_S,
    )
    connection = await websocket_connect(request, subprotocols=["bokeh", session_token(page.text)])
    connection.protocol.set_nodelay(True)  # as browsers do (see bench.dashboard)
    socket = DocumentSocket(connection)
    try:
        ack = await socket.receive(TIMEOUT_S)
        if ack is None or ack.type != "ACK":
            raise ViewError("the websocket closed before its ACK")
        return socket, await socket.pull(TIMEOUT_S)
    except BaseException:
        socket.close()
        raise


class ViewError(Exception):
    """A viewer saw something else than a working dashboard."""


def range_choices(document: Message) -> tuple[str, dict[int, str], int | None]:
    """(picker model id, {index: days} of the preset periods, the index picked now)."""
    picker = next(models(document.content, "RadioButtonGroup"))
    labels = picker["attributes"]["labels"]
    days = {i: label.split()[0] for i, label in enumerate(labels) if label.endswith(" days")}
    return picker["id"], days, picker["attributes"].get("active")


async def pick_period(socket: DocumentSocket, picker: str, index: int, days: str) -> None:
    """Pick a period and wait for the dashboard of that many days."""
    await socket.change(picker, "active", index)
    wanted = f"data-days=&quot;{days}&quot;"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while (left := deadline - loop.time()) > 0:
        message = await socket.receive(left)
        if message is None:
            raise ViewError("the websocket closed while a period was picked")
        if wanted in message.text():
            return
    raise TimeoutError


async def viewer(
    n: int,
    urls: list[str],
    stop: asyncio.Event,
    tally: Tally,
    *,
    verify: Path | None = None,
    tls: ssl.SSLContext | None = None,
    think: tuple[float, float] = THINK_S,
) -> None:
    """One reader, until ``stop`` is set: open a page, pick periods, close, again.

    ``tls`` is the viewers' one TLS context (trusting ``verify``): made per viewer, its
    CA bundle's load (tens of ms of CPU each) would stall every other viewer's loop."""
    tls = tls or tls_context(verify)
    rng = random.Random(n)
    limits = httpx.Limits(max_connections=2)
    async with httpx.AsyncClient(verify=tls, timeout=TIMEOUT_S, limits=limits) as client:
        await _pause(stop, rng.uniform(0, think[1]))  # the readers arrive spread out
        while not stop.is_set():
            url = rng.choice(urls)
            started = time.perf_counter()
            try:
                socket, document = await open_page(client, url, verify)
            except Exception as exc:
                tally.errors.append(f"open: {describe(exc)}")
                await _pause(stop, rng.uniform(*think))
                continue
            tally.views.append(time.perf_counter() - started)
            tally.opened_at.append(time.monotonic())
            try:
                picker, choices, active = range_choices(document)
                for _ in range(CHANGES_PER_PAGE):
                    await _pause(stop, rng.uniform(*think))
                    if stop.is_set():
                        break
                    # another period than the one shown (picking it again changes nothing)
                    active = index = rng.choice(sorted(set(choices) - {active}))
                    began = time.perf_counter()
                    await pick_period(socket, picker, index, choices[index])
                    tally.changes.append(time.perf_counter() - began)
                    tally.changed_at.append(time.monotonic())
            except Exception as exc:
                tally.errors.append(f"pick: {describe(exc)}")
            finally:
                socket.close()
            await _pause(stop, rng.uniform(*think))


def tls_context(verify: Path | None) -> ssl.SSLContext:
    """A verifying TLS context trusting ``verify`` (a CA file), else the default CAs."""
    return ssl.create_default_context(cafile=str(verify) if verify else None)


def describe(exc: BaseException) -> str:
    """An error's kind and text, without the URL (a link's token is a secret)."""
    text = str(exc).split("http", 1)[0].strip()
    return f"{type(exc).__name__}: {text}"[:200]


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run_viewers(
    count: int, urls: list[str], seconds: float, *, verify: Path | None = None
) -> Tally:
    """``count`` viewers for ``seconds``, then each finishes what it was doing."""
    tally, stop, tls = Tally(), asyncio.Event(), tls_context(verify)
    tasks = [
        asyncio.create_task(viewer(n, urls, stop, tally, verify=verify, tls=tls))
        for n in range(count)
    ]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return tally


# -- the tenants they view ----------------------------------------------------------------------


def facts(days: int, base: float) -> pl.DataFrame:
    """A year and more of a few Stripe metrics, so every preset period has figures."""
    rows = []
    for i in range(days):
        day = TODAY - dt.timedelta(days=i)
        rows += [
            ("charges", "", day, base + i % 17),
            ("gross_volume", "usd", day, 100 * base + 13.5 * (i % 29)),
            ("new_customers", "", day, float(i % 5)),
        ]
    return pl.DataFrame(rows, schema=["metric", "dimension", "day", "value"], orient="row")


def tenants_with_links(runtime: Runtime, count: int) -> list[str]:
    """``count`` tenants with 400 days of facts; a dashboard link token for each."""
    tokens = []
    for n in range(count):
        tenant, _ = add_tenant_with_facts(runtime, f"Soak Client {n}", facts(400, 10.0 + n))
        with runtime.db.session() as session:
            tokens.append(links.create_link(session, tenant)[1])
    return tokens


# -- the server process, from /proc ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the soak started
    rss_mb: float
    threads: int
    fds: int


def sample(pid: int, since: float) -> Sample:
    """VmRSS and Threads from /proc/<pid>/status, and the open file descriptors."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Sample(
        at=time.monotonic() - since,
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        threads=int(status["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )


def slope_per_minute(samples: list[Sample]) -> float:
    """The least-squares slope of RSS over time, in MB per minute."""
    n = len(samples)
    if n < 2:
        return float("nan")
    mean_t = sum(s.at for s in samples) / n
    mean_r = sum(s.rss_mb for s in samples) / n
    spread = sum((s.at - mean_t) ** 2 for s in samples)
    if not spread:
        return float("nan")
    return 60 * sum((s.at - mean_t) * (s.rss_mb - mean_r) for s in samples) / spread
