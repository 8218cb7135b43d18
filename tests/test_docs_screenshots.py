"""The README's tour, taken by the browser: a client's dashboard on a desktop and on a
phone, and the Dagster asset graph, each with something real asserted about it.

One world serves the module: a client with a Stripe connection on the sandbox, refreshed
by `writevue refresh` (so the figures and the materialisations are real), its dashboard
(`writevue serve`) and the Dagster UI (`dagster-webserver`) on the same home. The
screenshots always go to test-artifacts/; with ``WRITEVUE_UPDATE_SCREENSHOTS=1`` they
also replace the ones under docs/screenshots/ that the README shows, so an ordinary run
never dirties the tree.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from support import (
    add_stripe_connection,
    device,
    home_runtime,
    run_writevue,
    start_dashboard_server,
)

from writevue_pipelines import links
from writevue_pipelines.models import Fact
from writevue_pipelines.processes import Child, free_port, spawn_and_wait, wait_until
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.sources import SOURCES
from writevue_sandbox.server import SandboxServer

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "docs" / "screenshots"
ARTIFACTS = REPO / "test-artifacts"
UPDATE = os.environ.get("WRITEVUE_UPDATE_SCREENSHOTS") == "1"
#: a README picture must load fast on a slow connection
MAX_BYTES = 400_000
CLIENT = "Northwind Coffee"
#: the sandbox's account: its seeded data, the same at every run of a day
SANDBOX_KEY = "sk_test_northwind_coffee_tour"
TODAY = dt.datetime.now(dt.UTC).date()
START = TODAY - dt.timedelta(days=29)
#: the page's "30 days" (its default), spelled out for the export
PERIOD = f"from={START}&to={TODAY}"
#: the picture -> what it shows; the README references each of them
SCREENSHOTS = {
    "dashboard-desktop.png": "a client's dashboard, 1280 by 800 CSS pixels",
    "dashboard-phone.png": "the same dashboard on a Pixel 7 (device emulation)",
    "dagster-asset-graph.png": "a source's assets, checks and partitions after a refresh",
}


DAGSTER_WEBSERVER = [sys.executable, "-m", "dagster_webserver"]
#: the UI's own GraphQL: has the code location loaded, and with which assets?
LOADED = """{
  workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
    __typename ... on PythonError { message } } } } }
  assetNodes { assetKey { path } }
}"""


@dataclass
class Tour:
    runtime: Runtime
    tenant_id: str
    dashboard_url: str
    ui_url: str


def save(page, name: str, **options) -> Path:
    """Screenshot ``page`` to test-artifacts/, and to docs/screenshots/ when updating."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"docs-{name}"
    page.screenshot(path=str(path), **options)
    assert path.stat().st_size <= MAX_BYTES, f"{name}: {path.stat().st_size} bytes"
    if UPDATE:
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / name).write_bytes(path.read_bytes())
    return path


def start_dagster_ui(home: Path, log_path: Path) -> tuple[Child, str]:
    """`dagster-webserver` on the code location `writevue_pipelines.defs`, with the home's
    Dagster instance, once it lists the assets: (child, base URL)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    workspace = home.parent / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: writevue_pipelines.defs\n"
        "      location_name: writevue\n"
    )
    environ = {**os.environ, "WRITEVUE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    environ.pop("WRITEVUE_DATABASE_URL", None)
    ui = spawn_and_wait(
        "dagster-webserver",
        [*DAGSTER_WEBSERVER, "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
        f"{base}/server_info",
        timeout=240,
        log_path=log_path,
        env=environ,
    )

    def lists_assets() -> bool:
        data = httpx.post(f"{base}/graphql", json={"query": LOADED}, timeout=30).json()["data"]
        for entry in data["workspaceOrError"]["locationEntries"]:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "PythonError":
                raise AssertionError(f"the code location failed to load: {loaded['message']}")
        return bool(data["assetNodes"])

    try:
        wait_until(lists_assets, timeout=240, what="the code location", child=ui)
    except BaseException:
        ui.stop()
        raise
    return ui, base


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    root = tmp_path_factory.mktemp("tour")
    runtime = home_runtime(root)
    home = runtime.settings.home
    children: list[Child] = []
    with SandboxServer() as sandbox:
        try:
            tenant_id, _ = add_stripe_connection(
                runtime, sandbox.url, SANDBOX_KEY, name=CLIENT, email="ops@northwind.test"
            )
            refreshed = run_writevue(
                home, "refresh", env={"WRITEVUE_AUDIT_REASON": "docs screenshots"}, timeout=300
            )
            assert refreshed.returncode == 0, refreshed.stderr[-2000:]
            with runtime.db.session() as session:
                _, token = links.create_link(session, tenant_id, label="tour")
            server, base = start_dashboard_server(home, root / "serve.log")
            children.append(server)
            ui, ui_url = start_dagster_ui(home, root / "dagster.log")
            children.append(ui)
            yield Tour(runtime, tenant_id, f"{base}/d/{token}", ui_url)
        finally:
            for child in reversed(children):
                child.stop()
            runtime.close()


def exported_cards(url: str) -> dict[str, dict]:
    """The dashboard's cards as its JSON export gives them: metric reference -> card."""
    response = httpx.get(f"{url}?{PERIOD}&format=json", timeout=30)
    response.raise_for_status()
    body = response.json()
    return {card["metric"]: card for group in body["groups"] for card in group["cards"]}


def warehouse_total(runtime: Runtime, tenant_id: str, metric: str) -> float:
    """A counter's sum over the tour's period, straight from the warehouse."""
    with runtime.db.session() as session:
        total = session.execute(
            select(func.sum(Fact.value)).where(
                Fact.tenant_id == tenant_id,
                Fact.metric == metric,
                Fact.day >= START,
                Fact.day <= TODAY,
            )
        ).scalar_one()
    return float(total or 0.0)


def shown_cards(page) -> dict[str, str]:
    """Metric reference -> the exact figure a card shows on hover (its ``title``)."""
    cards = page.locator(".wv-card[data-ref]")
    return {
        cards.nth(i).get_attribute("data-ref"): cards.nth(i)
        .locator(".wv-card-value")
        .get_attribute("title")
        for i in range(cards.count())
    }


def figures_of(cards: dict[str, dict]) -> dict[str, float]:
    return {ref: card["value"] for ref, card in cards.items() if card["value"] is not None}


def as_number(text: str) -> float:
    """'$12,345.67' or '1,204' -> the number."""
    return float(re.sub(r"[^0-9.\-]", "", text))


def shows_the_exported_figures(page, url: str) -> dict[str, str]:
    """Assert every card shows the figure the JSON export gives; the cards' figures."""
    shown = shown_cards(page)
    expected = figures_of(exported_cards(url))
    assert expected, "the refresh left the client without figures"
    assert {ref: as_number(shown[ref]) for ref in expected} == pytest.approx(expected)
    return shown


def test_the_dashboard_on_a_desktop_shows_the_clients_figures(tour, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{tour.dashboard_url}?range=30")
        page.locator(".wv-card").first.wait_for(timeout=30_000)
        assert page.title() == CLIENT
        shown = shows_the_exported_figures(page, tour.dashboard_url)
        # and the payments card is the warehouse's own sum of the refreshed days
        charges = warehouse_total(tour.runtime, tour.tenant_id, "charges")
        assert charges > 0 and as_number(shown["stripe.charges"]) == charges
        page.locator(".wv-chart").first.wait_for(timeout=30_000)
        save(page, "dashboard-desktop.png")
    finally:
        context.close()


def test_the_dashboard_on_a_phone_fits_the_screen(tour, browser):
    context = browser.new_context(**device("Pixel 7"))
    try:
        page = context.new_page()
        page.goto(f"{tour.dashboard_url}?range=30")
        page.locator(".wv-card").first.wait_for(timeout=30_000)
        width = page.evaluate("innerWidth")
        assert width == 412  # the phone's CSS width, not a desktop's
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shows_the_exported_figures(page, tour.dashboard_url)
        # CSS pixels, not the phone's 2.6 device pixels each: a small file for the README
        save(page, "dashboard-phone.png", scale="css")
    finally:
        context.close()


def test_the_dagster_asset_graph_shows_the_refreshed_sources_assets(tour, browser):
    query = {"query": "{ assetNodes { assetKey { path } } }"}
    nodes = httpx.post(f"{tour.ui_url}/graphql", json=query, timeout=30).json()["data"]
    keys = {"/".join(node["assetKey"]["path"]) for node in nodes["assetNodes"]}
    assert {f"{source}_daily_metrics" for source in SOURCES} <= keys
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = context.new_page()
        # Dagster's "join the community" dialog, shown once per instance
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda b: b.click())
        page.goto(f"{tour.ui_url}/locations/writevue/asset-groups/stripe")
        for asset in ("stripe_fetch", "stripe_daily_metrics"):
            page.get_by_text(asset, exact=True).first.wait_for(timeout=60_000)
        # the refresh's materialisations: the client's connection is each asset's one
        # partition, and it is filled
        filled = page.get_by_text("100% filled", exact=True)
        filled.nth(1).wait_for(timeout=60_000)
        assert filled.count() == 2
        assert page.get_by_text("1 partition", exact=True).count() == 2
        save(page, "dagster-asset-graph.png")
    finally:
        context.close()


def test_every_screenshot_the_readme_shows_is_in_the_tree():
    readme = (REPO / "README.md").read_text()
    referenced = set(re.findall(r"\(docs/screenshots/([^)\s]+)\)", readme))
    assert referenced == set(SCREENSHOTS), "the README's tour and the screenshots differ"
    for name in referenced:
        path = SHOTS / name
        assert path.is_file(), (
            f"docs/screenshots/{name} is missing: run this module with "
            "WRITEVUE_UPDATE_SCREENSHOTS=1"
        )
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert path.stat().st_size <= MAX_BYTES, name


def test_no_stray_screenshot_is_left_in_docs():
    # a renamed screenshot leaves no orphan picture behind
    present = {p.name for p in SHOTS.glob("*.png")} if SHOTS.exists() else set()
    assert present <= set(SCREENSHOTS), present - set(SCREENSHOTS)
