"""The dashboard on every screen: phones (device emulation), TV walls, the page's title,
the period kept in the URL, tooltips by touch and over a year, the theme's colours.

One `writevue serve` process serves the module; Chromium opens it as each device would.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import polars as pl
import pytest
from support import add_tenant_with_facts, home_runtime, start_dashboard_server

from dashboard_server.app import Dashboard, query_state
from dashboard_server.data import Period
from writevue_devtools.peers import CHROMIUM_ARGS
from writevue_pipelines import links
from writevue_pipelines.runtime import Runtime

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TODAY = dt.datetime.now(dt.UTC).date()
TV_SCREENS = [(1280, 720), (1920, 1080), (3840, 2160)]


def facts(days: int, metrics: dict[str, tuple[str, float]]) -> pl.DataFrame:
    """``metrics``: metric -> (dimension, daily base value); one row per metric and day."""
    rows = [
        (metric, dimension, TODAY - dt.timedelta(days=i), base + i % 5)
        for metric, (dimension, base) in metrics.items()
        for i in range(days)
    ]
    rows = [
        (m, d, day, -20.0 if m == "net" and day == TODAY - dt.timedelta(days=3) else v)
        for m, d, day, v in rows
    ]
    metric, dimension, day, value = zip(*rows, strict=True)
    return pl.DataFrame(
        {"metric": metric, "dimension": dimension, "day": day, "value": [float(v) for v in value]}
    )


# Figures as long as a client's get: millions with cents and a currency, negatives.
FEW = {
    "gross_volume": ("usd", 123456.78),
    "net": ("usd", 500.0),  # one day at -20 (below): its axis label "-20" near "0"
    "charges": ("", 1200.0),
    "new_customers": ("", 40.0),
}
MANY = {f"metric_{n:02d}": ("", 1000.0 * n) for n in range(40)}


@dataclass
class Screens:
    runtime: Runtime
    base: str
    few: str
    few_token: str
    many_token: str

    def url(self, token: str, query: str = "") -> str:
        return f"{self.base}/d/{token}{query}"


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    root = tmp_path_factory.mktemp("screens")
    runtime = home_runtime(root)
    settings = runtime.settings
    few, _ = add_tenant_with_facts(runtime, "Vandelay Industries", facts(400, FEW))
    many, _ = add_tenant_with_facts(runtime, "Many Metrics Co", facts(40, MANY))
    with runtime.db.session() as session:
        _, few_token = links.create_link(session, few)
        _, many_token = links.create_link(session, many)
    server, base = start_dashboard_server(settings.home, root / "serve.log")
    try:
        yield Screens(runtime, base, few, few_token, many_token)
    finally:
        server.stop()
        runtime.close()


@pytest.fixture(scope="module")
def playwright_and_browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            yield playwright, chromium
        finally:
            chromium.close()


def open_page(playwright_and_browser, url: str, device: str | None = None, **options):
    """A new context (as ``device``, or with ``options``) on ``url``, once its cards show:
    (context, page, console errors)."""
    playwright, chromium = playwright_and_browser
    settings = dict(playwright.devices[device]) if device else {}
    settings.update(options)
    context = chromium.new_context(**settings)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.locator(".wv-card").first.wait_for(timeout=30_000)
    return context, page, errors


def shoot(page, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"screens-{name}.png"), full_page=full_page)


def boxes(page, selector: str) -> list[dict]:
    """The bounding boxes of every visible element matching ``selector`` (shadow DOM too)."""
    locator = page.locator(selector)
    found = []
    for i in range(locator.count()):
        item = locator.nth(i)
        if item.is_visible():
            found.append(item.bounding_box())
    return found


def one_line(page, selector: str) -> list[str]:
    """The texts of the visible ``selector`` elements that take more than one line."""
    return page.locator(selector).evaluate_all(
        """els => els.filter(e => e.offsetParent !== null).filter(e => {
            const style = getComputedStyle(e);
            const line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.3;
            return e.getBoundingClientRect().height > line * 1.5 || e.scrollWidth > e.clientWidth;
        }).map(e => e.textContent)"""
    )


# -- the page itself -----------------------------------------------------------------------


@pytest.mark.parametrize("device, columns", [("iPhone 13", 1), ("Pixel 7", 2), ("iPad Mini", None)])
def test_on_phones_and_tablets_the_page_fits_the_screen(
    screens, playwright_and_browser, device, columns
):
    context, page, errors = open_page(
        playwright_and_browser, screens.url(screens.few_token), device
    )
    try:
        assert page.locator('meta[name="viewport"]').count() == 1
        width = page.evaluate("innerWidth")
        assert width == playwright_and_browser[0].devices[device]["viewport"]["width"]
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        cards = boxes(page, ".wv-card")
        lefts = sorted({round(b["x"]) for b in cards})
        if columns is not None:
            assert len(lefts) == columns, (device, lefts)
        for card in cards:
            assert card["x"] >= 0 and card["x"] + card["width"] <= width + 0.5
        for chart in boxes(page, ".wv-chart"):  # charts take the whole width
            assert chart["width"] >= width * 0.85 or device == "iPad Mini", chart
        # the table: nothing wider than the screen, no cell scrolled sideways
        table = page.locator(".wv-table")
        table.scroll_into_view_if_needed()
        box = table.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, box
        scroll = page.locator(".wv-table-wrap").evaluate("e => e.scrollWidth - e.clientWidth")
        assert scroll <= 0
        # every control is big enough for a finger
        for selector in (".wv-controls button", ".wv-export a"):
            for target in boxes(page, selector):
                assert target["width"] >= 44 and target["height"] >= 44, (selector, target)
        # axis labels readable: at least 10 CSS px tall on the screen, never overlapping
        labels = page.locator(".wv-axis").evaluate_all(
            "els => els.map(e => { const r = e.getBoundingClientRect();"
            " return [r.left, r.top, r.right, r.bottom, e.textContent]; })"
        )
        assert labels and min(b - t for _, t, _, b, _ in labels) >= 9.5, labels
        overlapping = [
            (one[4], other[4])
            for one, other in itertools.combinations(labels, 2)
            if one[0] < other[2] and other[0] < one[2] and one[1] < other[3] and other[1] < one[3]
        ]
        assert not overlapping, overlapping
        shoot(page, device.replace(" ", "-").lower(), full_page=True)
    finally:
        context.close()
    assert not errors, errors


def test_the_title_is_the_tenants_name(screens, playwright_and_browser):
    context, page, errors = open_page(playwright_and_browser, screens.url(screens.few_token))
    try:
        assert page.title() == "Vandelay Industries"
    finally:
        context.close()
    assert not errors, errors


# -- the period in the URL ------------------------------------------------------------------


def wait_until(condition, seconds: float = 10) -> None:
    """Poll ``condition`` (the page's CSP forbids playwright's in-page ``wait_for_function``)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def query(page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def card_value(page, metric: str) -> str:
    return page.locator(f'.wv-card[data-metric="{metric}"] .wv-card-value').first.inner_text()


def test_the_period_lives_in_the_url(screens, playwright_and_browser):
    url = screens.url(screens.few_token)
    context, page, errors = open_page(playwright_and_browser, url + "?range=90")
    try:
        page.locator('svg.wv-chart-svg[data-days="90"]').first.wait_for(timeout=15_000)
        assert page.locator(".wv-controls .wv-range button.bk-active").inner_text() == "90 days"
        page.get_by_role("button", name="7 days").click()
        page.locator('svg.wv-chart-svg[data-days="7"]').first.wait_for(timeout=15_000)
        wait_until(lambda: "range=7" in page.evaluate("location.search"))
        assert query(page) == {"range": ["7"]}
        week = card_value(page, "charges")
        page.reload()  # a reload (or a bookmark) keeps the period
        page.locator('svg.wv-chart-svg[data-days="7"]').first.wait_for(timeout=15_000)
        assert card_value(page, "charges") == week
        # "Custom" keeps the period shown, and writes it as from/to
        page.get_by_role("button", name="Custom").click()
        start = TODAY - dt.timedelta(days=6)
        wait_until(lambda: "from=" in page.evaluate("location.search"))
        assert query(page) == {"from": [str(start)], "to": [str(TODAY)]}
        assert page.locator('svg.wv-chart-svg[data-days="7"]').count() >= 1
        assert card_value(page, "charges") == week
        page.reload()
        page.locator('svg.wv-chart-svg[data-days="7"]').first.wait_for(timeout=15_000)
        assert page.locator(".wv-controls .wv-range button.bk-active").inner_text() == "Custom"
        # the picker's calendar uses the theme's colours
        page.locator(".wv-controls input.bk-input:visible").first.click()
        day = page.locator(".flatpickr-day.selected, .flatpickr-day.startRange").first
        day.wait_for(timeout=5_000)
        accent = page.evaluate(
            "getComputedStyle(document.querySelector('.wv-dashboard') || document.body)"
            ".getPropertyValue('--wv-primary').trim()"
        )
        colour = day.evaluate("e => getComputedStyle(e).backgroundColor")
        assert accent and colour == page.evaluate(
            "c => { const e = document.createElement('i'); e.style.color = c;"
            " document.body.append(e); const r = getComputedStyle(e).color; e.remove();"
            " return r; }",
            accent,
        ), (accent, colour)
        shoot(page, "date-picker")
    finally:
        context.close()
    assert not errors, errors


@pytest.mark.parametrize(
    "query_text, days",
    [
        (f"?from={TODAY - dt.timedelta(days=13)}&to={TODAY}", 14),
        ("?range=12", 30),
        ("?range=%3Cb%3E", 30),
        ("?range=365&tv=0", 365),
    ],
)
def test_a_period_from_the_url_or_30_days_when_it_is_bad(
    screens, playwright_and_browser, query_text, days
):
    url = screens.url(screens.few_token, query_text)
    context, page, errors = open_page(playwright_and_browser, url)
    try:
        page.locator(f'svg.wv-chart-svg[data-days="{days}"]').first.wait_for(timeout=15_000)
    finally:
        context.close()
    assert not errors, errors


def test_the_query_gives_the_viewers_state_and_bad_values_the_default():
    today = dt.date(2026, 3, 10)

    def state(**args: str) -> dict:
        return query_state({k: [v.encode()] for k, v in args.items()}, today)

    assert state() == {"tv": False}
    assert state(range="90") == {"tv": False, "range": "90"}
    assert state(range="12") == state(range="") == state(range="custom") == {"tv": False}
    assert state(**{"from": "2026-03-01", "to": "2026-03-05"}) == {
        "tv": False,
        "range": "custom",
        "custom": (dt.date(2026, 3, 1), dt.date(2026, 3, 5)),
    }
    for bad in (("2026-13-01", "2026-03-05"), ("2026-03-05", "2026-03-01"), ("x", "")):
        assert state(**{"from": bad[0], "to": bad[1]}) == {"tv": False}, bad
    assert state(tv="1", rotate="2") == {"tv": True, "rotate_s": 5}
    assert state(tv="yes", rotate="1000")["rotate_s"] == 300
    assert state(tv="1", rotate="-3") == {"tv": True}


def test_choosing_custom_keeps_the_period_shown_and_the_url_says_it():
    shown: list[Period] = []

    class Source:
        def page(self, period, *, tv, compare=None):
            shown.append(period)
            return f"<p>{period.label}</p>"

        def default_comparison(self):
            return "previous"

        def alive(self):
            return True

    today = dt.date(2026, 3, 10)
    view = Dashboard(Source(), today=lambda: today, range="7")
    assert view.query == {"range": "7"} and "range" in view._content.object
    view.range = "custom"
    assert shown[-1] == Period.last(7, today) == view.period
    assert view.query == {"from": "2026-03-04", "to": "2026-03-10"}
    assert '{"from": "2026-03-04", "to": "2026-03-10"}' in view._content.object


# -- tooltips ------------------------------------------------------------------------------


def test_a_tap_shows_the_days_figures_also_over_a_year(screens, playwright_and_browser):
    url = screens.url(screens.few_token, "?range=365")
    context, page, errors = open_page(playwright_and_browser, url, "iPhone 13")
    try:
        chart = page.locator('svg.wv-chart-svg[data-metric="charges"][data-days="365"]')
        chart.wait_for(timeout=15_000)
        chart.scroll_into_view_if_needed()
        box = chart.bounding_box()
        page.touchscreen.tap(box["x"] + box["width"] - 12, box["y"] + box["height"] / 2)
        tip = page.locator(".wv-tip")
        tip.wait_for(timeout=5_000)
        # near the right edge: one of the last days (a day's band is a pixel wide)
        last_days = {f"{TODAY - dt.timedelta(days=n):%d %b %Y}: " for n in range(14)}
        assert any(day in tip.inner_text() for day in last_days), tip.inner_text()
        shoot(page, "tooltip-phone")
    finally:
        context.close()
    assert not errors, errors


# -- TV ------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", TV_SCREENS)
def test_tv_fits_the_screen_without_wrapping(screens, playwright_and_browser, width, height):
    url = screens.url(screens.few_token, "?tv=1")
    viewport = {"width": width, "height": height}
    context, page, errors = open_page(playwright_and_browser, url, viewport=viewport)
    try:
        assert page.evaluate("document.scrollingElement.scrollHeight") <= height
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width
        assert len(boxes(page, ".wv-card")) == len(FEW)
        assert one_line(page, ".wv-card-value") == []
        for card in boxes(page, ".wv-card"):
            assert card["y"] + card["height"] <= height
        # the page's script sets the viewer's time within a quarter second of the screen
        # showing (an empty clock has no box, so it is not visible until then)
        page.locator(".wv-clock").wait_for(state="visible", timeout=5_000)
        assert page.locator(".wv-clock").inner_text().strip(), "the clock shows no time"
        assert boxes(page, ".wv-clock")[0]["height"] >= height * 0.04
        assert page.locator(".wv-updated").is_visible()
        shoot(page, f"tv-{width}x{height}")
    finally:
        context.close()
    assert not errors, errors


def test_tv_with_more_metrics_than_fit_rotates_pages(screens, playwright_and_browser):
    url = screens.url(screens.many_token, "?tv=1&rotate=5")
    viewport = {"width": 1280, "height": 720}
    context, page, errors = open_page(playwright_and_browser, url, viewport=viewport)
    try:

        def shown() -> set[str]:
            return set(
                page.locator(".wv-card").evaluate_all(
                    "els => els.filter(e => e.offsetParent !== null && "
                    "e.getBoundingClientRect().height > 0).map(e => e.dataset.metric)"
                )
            )

        # the page's script has measured what fits and numbered the pages
        page.locator(".wv-tv-screen[data-pages]").wait_for(state="attached", timeout=5_000)
        first = shown()
        assert 4 <= len(first) < len(MANY), first
        assert page.evaluate("document.scrollingElement.scrollHeight") <= 720
        assert one_line(page, ".wv-card-value") == []
        shoot(page, "tv-many-page1")
        seen = set(first)
        deadline = time.monotonic() + 30
        while seen != set(MANY) and time.monotonic() < deadline:
            time.sleep(1)
            now = shown()
            assert now and page.evaluate("document.scrollingElement.scrollHeight") <= 720
            seen |= now
        assert shown() != first or seen == set(MANY)
        assert seen == set(MANY), set(MANY) - seen  # every metric comes round
        shoot(page, "tv-many-page2")
    finally:
        context.close()
    assert not errors, errors
