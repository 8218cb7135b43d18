"""Restarts: a dashboard server killed with SIGKILL under load, and a Dagster daemon killed
with a schedule due, each started again.

- **The dashboard**: 30 protocol-level viewers (``soak_viewers``) on one `writevue serve`
  process; it is killed (``kill -9`` of its process group) while they read, and started
  again on the same port. Every open page's socket is closed at once by the kill (a
  page never hangs on a dead server); after the restart every link serves its own
  tenant's dashboard again, a page opened before the kill gets its dashboard back over a
  new socket with its old session token (what a reconnecting client does: the token is
  signed with the home's session secret, which survives), and the viewers, still running,
  see no error once the server is back.
- **The daemon**: a real `dagster-daemon run` on a temporary instance with the Stripe
  refresh schedule every minute. After one tick has run, the daemon is killed before the
  next, left dead past it, then started again: the missed tick's run is launched (Dagster's
  scheduler catches up the ticks it missed, up to ``max_catchup_runs``) and refreshes the
  connection.
- **The reader's browser** (Chromium): a dashboard page open while the server is killed
  says the connection was lost, reconnects by itself once the server is back (its period
  buttons work again, nothing refused by the CSP), and says to reload if the server
  stays down past Bokeh's last try.

They take minutes and are marked ``soak`` (``make soak``; CI runs them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from soak_viewers import Tally, open_page, run_viewers, tenants_with_links, tls_context
from support import add_stripe_connection, new_stripe_key, start_dashboard_server

from dashboard_server.probe import DocumentSocket, session_token, socket_url
from writevue_pipelines import registry, warehouse
from writevue_pipelines.defs.partitions import CONNECTION_PARTITIONS
from writevue_pipelines.home import init_home
from writevue_pipelines.processes import Child, spawn, wait_until
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[1]
VIEWERS = 30
TENANTS = 10


def kill_group(child: Child) -> None:
    """``kill -9`` of the child's whole process group, as a crash or the OOM killer would."""
    os.killpg(child.process.pid, signal.SIGKILL)
    child.process.wait(10)


# -- the dashboard -----------------------------------------------------------------------------


async def closed_within(socket: DocumentSocket, seconds: float) -> float | None:
    """Seconds until the server's end of ``socket`` is gone, or None if it stays open."""
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            if await socket.receive(left) is None:
                return time.monotonic() - started
        except TimeoutError:
            return None
        except Exception:  # a connection reset is a close too
            return time.monotonic() - started
    return None


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_a_dashboard_server_killed_under_load_serves_every_link_again(home, tmp_path):
    settings = Settings.from_env()
    init_home(settings)
    runtime = Runtime(settings)
    tokens = tenants_with_links(runtime, TENANTS)
    server, base = start_dashboard_server(home, tmp_path / "serve-1.log")
    port = int(base.rsplit(":", 1)[1])
    urls = [f"{base}/d/{token}" for token in tokens]
    restarted: list[Child] = []

    async def scenario() -> tuple[Tally, float | None, str, Tally]:
        load = asyncio.create_task(run_viewers(VIEWERS, urls, 40))
        await asyncio.sleep(12)  # the readers are in, pages open
        async with httpx.AsyncClient(verify=tls_context(None), timeout=60) as client:
            socket, _ = await open_page(client, urls[0])
            old_page = await client.get(urls[1])
        kill_group(server)
        closed = await closed_within(socket, 5)
        socket.close()
        await asyncio.sleep(3)  # the readers meet the dead server
        child, _ = await asyncio.to_thread(
            start_dashboard_server, home, tmp_path / "serve-2.log", port=port
        )
        restarted.append(child)
        # The page loaded before the kill, its socket opened now with its old session token.
        reconnected = await DocumentSocket.open(socket_url(urls[1]), session_token(old_page.text))
        try:
            again = (await reconnected.pull()).text()
        finally:
            reconnected.close()
        during = await load
        after = await run_viewers(VIEWERS, urls, 15)
        return during, closed, again, after

    try:
        during, closed, again, after = asyncio.run(scenario())
        # every link serves its own tenant again, page and document
        for n, url in enumerate(urls):
            page = httpx.get(url, timeout=60)
            assert page.status_code == 200, n
        assert closed is not None and closed < 5, closed  # open pages learn at once
        assert "Soak Client 1" in again  # the reconnected page's own tenant
        assert during.errors, "the kill went unnoticed: was the server under load?"
        assert not after.errors, after.errors[:5]
        print(
            f"dashboard restart: open socket closed {closed:.2f} s after the kill; during the "
            f"outage {len(during.errors)} failed actions ({sorted(set(during.errors))[:3]}); "
            f"after the restart {after.summary()}"
        )
    finally:
        for child in restarted:
            child.stop()
        server.stop()
        runtime.close()


# -- the daemon -------------------------------------------------------------------------------


def _next_minute(after: float) -> float:
    return (int(after) // 60 + 1) * 60


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_a_daemon_killed_before_a_tick_runs_it_once_restarted(home, sandbox, tmp_path, monkeypatch):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    monkeypatch.setenv("WRITEVUE_REFRESH_CRON_STRIPE", "* * * * *")
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", "5")
    settings = Settings.from_env()
    init_home(settings)
    runtime = Runtime(settings)
    _, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    env = {**os.environ}
    daemon_argv = [
        str(Path(sys.executable).with_name("dagster-daemon")),
        "run",
        "-w",
        str(REPO / "workspace.yaml"),
    ]

    def start(n: int) -> Child:
        return spawn(
            "dagster-daemon", daemon_argv, env=env, cwd=REPO, log_path=tmp_path / f"daemon-{n}.log"
        )

    def scheduled_runs(instance) -> dict[str, DagsterRunStatus]:
        """The schedule's runs: their tick (UTC, to the second) and status; one run a tick
        (the batch is one connection), and a tick launched twice would be counted."""
        runs = instance.get_runs(
            filters=RunsFilter(tags={"dagster/schedule_name": "stripe_refresh"})
        )
        ticks = [r.tags.get(".dagster/scheduled_execution_time", "")[:19] for r in runs]
        twice = [t for t, n in Counter(ticks).items() if n > 1]
        assert not twice, f"ticks launched twice: {twice}"
        return {t: r.status for t, r in zip(ticks, runs, strict=True)}

    def tick(at: float) -> str:
        return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()[:19]

    daemons: list[Child] = [start(1)]
    try:
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            # The connection's partition now, not when the daemon's sensor gets to it.
            instance.add_dynamic_partitions(CONNECTION_PARTITIONS["stripe"].name, [connection])

            def first_run_done() -> bool:
                return DagsterRunStatus.SUCCESS in scheduled_runs(instance).values()

            wait_until(
                first_run_done, timeout=300, what="the first scheduled run", child=daemons[0]
            )
            # Killed at least 10 s before the next tick; its run is over (a process of its own).
            missed = _next_minute(time.time() + 10)
            kill_group(daemons[0])
            time.sleep(max(0.0, missed + 10 - time.time()))  # the tick passes, nobody there
            assert tick(missed) not in scheduled_runs(instance)
            daemons.append(start(2))

            def missed_tick_ran() -> bool:
                return scheduled_runs(instance).get(tick(missed)) == DagsterRunStatus.SUCCESS

            wait_until(missed_tick_ran, timeout=300, what="the missed tick's run", child=daemons[1])
            runs = scheduled_runs(instance)
        with runtime.db.session() as session:
            refreshed = registry.get_connection(session, connection).last_refreshed_at
            facts = warehouse.connection_fact_count(session, connection)
        assert facts > 0 and refreshed is not None
        assert refreshed.timestamp() >= missed
        print(f"daemon restart: the missed tick {tick(missed)} ran; the schedule's runs {runs}")
    finally:
        for child in daemons:
            child.stop()
        runtime.close()


# -- what a reader's browser shows ------------------------------------------------------------


@pytest.mark.soak
def test_in_chromium_an_open_page_says_so_and_recovers_after_a_restart(home, tmp_path, browser):
    settings = Settings.from_env()
    init_home(settings)
    runtime = Runtime(settings)
    (token,) = tenants_with_links(runtime, 1)
    server, base = start_dashboard_server(home, tmp_path / "serve-1.log")
    restarted: list[Child] = []
    tab = browser.new_page()
    # what the page's CSP refused, or the server had not (a reconnected page's styles)
    blocked: list[str] = []
    tab.on("console", lambda m: blocked.append(m.text) if "Security Policy" in m.text else None)
    tab.on(
        "response",
        lambda r: (
            blocked.append(f"{r.status} {r.url}")
            if r.status >= 400 and "/d/" not in r.url
            else None
        ),
    )
    try:
        tab.goto(f"{base}/d/{token}")
        tab.locator(".wv-card").first.wait_for(timeout=60_000)
        kill_group(server)
        # While the server is down the page says so (screens.js, the document's
        # connection_lost event) instead of keeping its old figures silently.
        banner = tab.locator(".wv-connection")
        banner.wait_for(timeout=15_000)
        assert "The connection to the dashboard was lost." in banner.inner_text()
        child, _ = start_dashboard_server(
            home, tmp_path / "serve-2.log", port=int(base.rsplit(":", 1)[1])
        )
        restarted.append(child)
        # Bokeh reconnects with the page's session token (the last try ~30 s after the
        # kill); the banner goes, and the period buttons work on the new session.
        banner.wait_for(state="detached", timeout=40_000)
        tab.get_by_text("7 days", exact=True).click()
        today = dt.datetime.now(dt.UTC).date()
        seven_days = f"{today - dt.timedelta(days=6):%d %b %Y} to {today:%d %b %Y}"
        # (locators see into the shadow roots Bokeh renders in; page text does not)
        tab.get_by_text(seven_days).first.wait_for(timeout=15_000)
        title = tab.title()  # (the page's own tenant; its URL would carry the token)
        assert title == "Soak Client 0", title
        assert not blocked, blocked[:3]
    finally:
        tab.close()
        for child in restarted:
            child.stop()
        server.stop()
        runtime.close()


@pytest.mark.soak
def test_in_chromium_a_page_whose_server_stays_down_says_reload(home, tmp_path, browser):
    settings = Settings.from_env()
    init_home(settings)
    runtime = Runtime(settings)
    (token,) = tenants_with_links(runtime, 1)
    server, base = start_dashboard_server(home, tmp_path / "serve-1.log")
    tab = browser.new_page()
    try:
        tab.goto(f"{base}/d/{token}")
        tab.locator(".wv-card").first.wait_for(timeout=60_000)
        kill_group(server)
        # Bokeh's last try is ~30 s after the kill; then the page says what to do.
        reload = tab.locator(".wv-connection", has_text="Reload the page.")
        reload.wait_for(timeout=60_000)
        assert reload.get_by_role("button", name="Reload").is_visible()
    finally:
        tab.close()
        server.stop()
        runtime.close()
