"""Right numbers for every kind of metric: counters add up, gauges are levels, ratios are
ratios of sums; no data is not zero; today is partial; polarity, formatting, locale.

Every expected figure here is computed in the test from the facts it inserted, never by
the functions that produce the dashboard.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import polars as pl
import pytest
from support import add_facts, add_tenant, device, home_runtime

from dashboard_server.data import Period, dashboard_csv, load_dashboard
from dashboard_server.render import dashboard_html
from writevue_pipelines import formatting, tenant_settings

TODAY = dt.date.today()
REPOS = ["acme/api", "acme/Web-App", "acme/docs"]


def _frame(rows) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"metric": pl.String, "dimension": pl.String, "day": pl.Date, "value": pl.Float64},
        orient="row",
    )


def _github(days: int) -> tuple[pl.DataFrame, dict]:
    """Stars (a gauge) per repository growing daily, commits (a counter) per day."""
    rows, stars, commits = [], {}, {}
    for back in range(days - 1, -1, -1):
        day = TODAY - dt.timedelta(days=back)
        for index, repo in enumerate(REPOS):
            level = 100 * (index + 1) + (days - back)
            rows.append(("stars", repo, day, float(level)))
            stars[(repo, day)] = level
            count = (back + index) % 4
            rows.append(("commits", repo, day, float(count)))
            commits[(repo, day)] = count
    return _frame(rows), {"stars": stars, "commits": commits}


def _kpi(data, ref: str, dimension: str = ""):
    (kpi,) = [k for k in data.kpis if k.ref == ref and k.dimension == dimension]
    return kpi


def test_a_gauge_shows_its_latest_level_and_a_counter_its_sum(runtime):
    tenant = add_tenant(runtime, "Octo Client", "octo@client.test")
    frame, truth = _github(31)
    add_facts(runtime, tenant, "github", frame, options={"owner": "acme"})
    period = Period(TODAY - dt.timedelta(days=29), TODAY)
    data = load_dashboard(runtime, tenant, period=period)

    stars = _kpi(data, "github.stars")
    latest = sum(truth["stars"][(repo, TODAY)] for repo in REPOS)
    assert stars.kind == "gauge" and stars.value == latest  # not ~30x the real number
    commits = _kpi(data, "github.commits")
    days = [period.start + dt.timedelta(days=i) for i in range(period.days)]
    assert commits.value == sum(truth["commits"][(r, d)] for r in REPOS for d in days)
    # The sparkline is the level each day, not zeros then a spike.
    assert stars.series == tuple(float(sum(truth["stars"][(r, d)] for r in REPOS)) for d in days)
    # Totals first; per-repository detail in a table, not a card per repository.
    (group,) = data.groups
    assert group.title == "GitHub" and group.accounts == ("acme",)
    assert {k.dimension for k in group.kpis} == {""}
    (detail,) = group.details
    assert next(row[0] for row in detail.rows) == "acme/docs"  # largest first
    row = dict(detail.rows)["acme/Web-App"]
    assert [k.value for k in row if k.ref == "github.stars"] == [
        truth["stars"][("acme/Web-App", TODAY)]
    ]
    html_text = dashboard_html(data)
    assert "acme/Web-App" in html_text and "ACME/WEB-APP" not in html_text
    # the status badge says which account: two GitHub connections are told apart
    assert '<strong>GitHub</strong> <span class="wv-account">acme</span>' in html_text
    assert "daily average" not in stars.change_text.lower()


def test_days_before_the_history_are_no_data_and_no_comparison_without_cover(runtime):
    tenant = add_tenant(runtime, "New Client", "new@client.test")
    history = 31
    rows = [
        ("charges", "", TODAY - dt.timedelta(days=back), float(back % 5 + 1))
        for back in range(history)
    ]
    add_facts(runtime, tenant, "stripe", _frame(rows))
    data = load_dashboard(runtime, tenant, period=Period.last(90))
    charges = _kpi(data, "stripe.charges")
    assert charges.value == sum(back % 5 + 1 for back in range(history))
    # 59 days without data, then the history: not nine flat months of zeros.
    assert charges.series[: 90 - history] == (None,) * (90 - history)
    assert None not in charges.series[90 - history :]
    assert charges.previous is None and charges.change is None
    first = TODAY - dt.timedelta(days=history - 1)
    assert charges.change_text == f"no comparison: data starts {first:%d %b %Y}"
    assert "%" not in charges.change_text


def test_today_is_partial_and_compared_whole_day_for_whole_day(runtime):
    tenant = add_tenant(runtime, "Daily Client", "daily@client.test")
    rows = [
        ("charges", "", TODAY - dt.timedelta(days=back), float(10 + back)) for back in range(40)
    ]
    add_facts(runtime, tenant, "stripe", _frame(rows))
    data = load_dashboard(runtime, tenant, period=Period.last(7))
    charges = _kpi(data, "stripe.charges")
    value = {TODAY - dt.timedelta(days=back): 10 + back for back in range(40)}
    shown = [TODAY - dt.timedelta(days=b) for b in range(7)]
    whole = shown[1:]  # without today
    # the first six days of the week before, day for day
    earlier = [TODAY - dt.timedelta(days=b) for b in range(8, 14)]
    assert charges.partial and data.partial
    assert charges.value == sum(value[d] for d in shown)
    expected = (sum(value[d] for d in whole) - sum(value[d] for d in earlier)) / sum(
        value[d] for d in earlier
    )
    assert charges.change == pytest.approx(expected)
    assert charges.change_text.endswith("vs previous period (whole days)")
    assert "incl. today so far" in dashboard_html(data)
    # A period that ends yesterday has no partial day.
    past = load_dashboard(
        runtime, tenant, period=Period(TODAY - dt.timedelta(days=7), TODAY - dt.timedelta(days=1))
    )
    assert not _kpi(past, "stripe.charges").partial


def test_polarity_colours_a_rise_in_refunds_as_bad_and_operators_can_override(runtime):
    tenant = add_tenant(runtime, "Shop", "shop@client.test")
    rows = []
    for back in range(60):
        day = TODAY - dt.timedelta(days=back)
        recent = back < 30
        rows += [
            ("refunds", "eur", day, 137.0 if recent else 100.0),
            ("fees", "eur", day, 75.0 if recent else 100.0),
            ("gross_volume", "eur", day, 2000.0 if recent else 1000.0),
        ]
    add_facts(runtime, tenant, "stripe", _frame(rows))
    period = Period(TODAY - dt.timedelta(days=29), TODAY)
    data = load_dashboard(runtime, tenant, period=period, today=TODAY + dt.timedelta(days=1))
    assert _kpi(data, "stripe.refunds", "eur").sentiment == "bad"  # +37%: red
    assert _kpi(data, "stripe.fees", "eur").sentiment == "good"  # -25%: green
    assert _kpi(data, "stripe.gross_volume", "eur").sentiment == "good"
    assert 'data-sentiment="bad"' in dashboard_html(data)
    with runtime.db.session() as session:
        tenant_settings.update_settings(session, tenant, polarity_set={"stripe.refunds": "up_good"})
    data = load_dashboard(runtime, tenant, period=period, today=TODAY + dt.timedelta(days=1))
    assert _kpi(data, "stripe.refunds", "eur").sentiment == "good"


def test_money_is_never_summed_across_currencies(runtime):
    tenant = add_tenant(runtime, "Two Currencies", "fx@client.test")
    rows = [
        ("gross_volume", c, TODAY - dt.timedelta(days=1), v)
        for c, v in (("eur", 1200.0), ("usd", 900.5))
    ]
    add_facts(runtime, tenant, "stripe", _frame(rows))
    data = load_dashboard(runtime, tenant, period=Period.last(7))
    cards = [k for k in data.kpis if k.ref == "stripe.gross_volume"]
    assert {(k.dimension, k.value) for k in cards} == {("eur", 1200.0), ("usd", 900.5)}
    eur = _kpi(data, "stripe.gross_volume", "eur")
    assert (eur.text, eur.exact_text) == ("€1.2k", "€1,200.00")
    assert _kpi(data, "stripe.gross_volume", "usd").exact_text == "$900.50"


@pytest.mark.parametrize(
    "value, unit, currency, locale, short, exact",
    [
        (12912.4, "money", "eur", "en", "€12.9k", "€12,912.40"),
        (12912.4, "money", "eur", "de", "12,9k\u00a0€", "12.912,40\u00a0€"),
        (1234567.0, "count", None, "en", "1.2M", "1,234,567"),
        (37.0, "count", None, "en", "37", "37"),
        (5000.0, "money", "jpy", "en", "¥5k", "¥5,000"),
        (410.0, "money", "chf", "ch", "410\u00a0CHF", "410.00\u00a0CHF"),
        (0.1234, "percent", None, "fr", "12,3%", "12,3%"),
        (-20.0, "money", "usd", "en", "-$20", "-$20.00"),
    ],
)
def test_figures_read_as_a_client_expects(value, unit, currency, locale, short, exact):
    assert formatting.compact(value, unit, currency, locale) == short
    assert formatting.exact(value, unit, currency, locale) == exact


def test_the_tenants_locale_sets_the_separators(runtime):
    tenant = add_tenant(runtime, "Berlin GmbH", "de@client.test")
    add_facts(runtime, tenant, "stripe", _frame([("gross_volume", "eur", TODAY, 1234567.891)]))
    with runtime.db.session() as session:
        tenant_settings.update_settings(session, tenant, locale="de")
    kpi = _kpi(load_dashboard(runtime, tenant, period=Period.last(7)), "stripe.gross_volume", "eur")
    assert kpi.exact_text == "1.234.567,89\u00a0€" and kpi.text == "1,2M\u00a0€"


def test_the_csv_keeps_counts_whole_and_marks_today(runtime):
    tenant = add_tenant(runtime, "Csv Client", "csv@client.test")
    rows = [
        ("charges", "", TODAY, 3.0),
        ("charges", "", TODAY - dt.timedelta(days=1), 5.0),
        ("gross_volume", "eur", TODAY - dt.timedelta(days=1), 12.5),
    ]
    add_facts(runtime, tenant, "stripe", _frame(rows))
    data = load_dashboard(runtime, tenant, period=Period.last(7))
    table = list(csv.DictReader(io.StringIO(dashboard_csv(data))))
    got = {(r["day"], r["metric"], r["dimension"]): r for r in table}
    assert got[(str(TODAY), "charges", "")]["value"] == "3"
    assert got[(str(TODAY), "charges", "")]["partial"] == "true"
    yesterday = str(TODAY - dt.timedelta(days=1))
    assert got[(yesterday, "charges", "")]["partial"] == "false"
    assert got[(yesterday, "gross_volume", "eur")]["value"] == "12.5"
    assert got[(yesterday, "gross_volume", "eur")]["kind"] == "counter"
    assert len(table) == 3


def test_same_period_last_year_is_compared_when_chosen(runtime):
    tenant = add_tenant(runtime, "Seasonal", "season@client.test")
    end = TODAY - dt.timedelta(days=1)
    start = end - dt.timedelta(days=6)
    rows = []
    for i in range(7):
        day = start + dt.timedelta(days=i)
        last_year = (
            day.replace(year=day.year - 1)
            if not (day.month == 2 and day.day == 29)
            else day.replace(year=day.year - 1, day=28)
        )
        rows += [("charges", "", day, 20.0), ("charges", "", last_year, 10.0)]
    # and history in between, so the year is covered
    rows.append(("charges", "", start - dt.timedelta(days=400), 1.0))
    add_facts(runtime, tenant, "stripe", _frame(rows))
    data = load_dashboard(runtime, tenant, period=Period(start, end), comparison="last_year")
    charges = _kpi(data, "stripe.charges")
    assert (charges.value, charges.previous) == (140.0, 70.0)
    assert charges.change_text == "+100.0% vs same period last year"
    previous = _kpi(load_dashboard(runtime, tenant, period=Period(start, end)), "stripe.charges")
    assert previous.previous == 0.0  # the week before had no charges: covered, zero


TEMPLATE = """
name = "shop"
comparison = "previous"

[[sections]]
title = "Sales"
items = [
  { metric = "stripe.gross_volume", dimension = "eur", chart = "line" },
  { metric = "calc.aov", chart = "number" },
  { metric = "calc.net", chart = "bar" },
  { metric = "github.stars" },
]

[[sections]]
title = "Per repository"
items = [{ metric = "github.stars", split = true }]

[[calculated]]
name = "aov"
label = "Average order value"
formula = "stripe.gross_volume[eur] / stripe.charges"
unit = "money"
currency = "eur"

[[calculated]]
name = "net"
label = "Net revenue"
formula = "stripe.gross_volume[eur] - stripe.refunds[eur] - stripe.fees[eur]"
unit = "money"
"""


def test_a_template_lays_out_calculated_metrics_and_goals(runtime):
    from writevue_pipelines import goals, templates

    tenant = add_tenant(runtime, "Template Shop", "tpl@client.test")
    end = TODAY - dt.timedelta(days=1)
    rows, truth = [], {}
    for back in range(1, 61):
        day = TODAY - dt.timedelta(days=back)
        day_rows = {
            ("gross_volume", "eur"): 100.0 + back,
            ("refunds", "eur"): 5.0,
            ("fees", "eur"): 3.0 + back % 2,
            ("charges", ""): float(2 + back % 3),
        }
        truth[day] = day_rows
        rows += [(m, d, day, v) for (m, d), v in day_rows.items()]
    add_facts(runtime, tenant, "stripe", _frame(rows))
    frame, gh = _github(10)
    add_facts(runtime, tenant, "github", frame, options={"owner": "acme"})
    with runtime.db.session() as session:
        templates.save_template(session, templates.parse_template(TEMPLATE, "toml"))
        templates.apply_template(session, "shop", [tenant])
        goals.set_goal(session, tenant, "calc.net", 5000.0, period="month")
        goals.set_goal(
            session,
            tenant,
            "github.stars",
            1000.0,
            period="by_date",
            due_on=TODAY + dt.timedelta(days=60),
        )
    period = Period(end - dt.timedelta(days=29), end)
    data = load_dashboard(runtime, tenant, period=period)
    assert [g.title for g in data.groups] == ["Sales", "Per repository"]
    days = [period.start + dt.timedelta(days=i) for i in range(30)]
    gross = sum(truth[d][("gross_volume", "eur")] for d in days)
    charges = sum(truth[d][("charges", "")] for d in days)
    aov = _kpi(data, "calc.aov")
    # the ratio of the sums, never the mean of daily ratios
    assert aov.value == pytest.approx(gross / charges)
    assert aov.kind == "ratio" and aov.text.startswith("€")
    net = _kpi(data, "calc.net")
    expected_net = sum(
        truth[d][("gross_volume", "eur")] - truth[d][("refunds", "eur")] - truth[d][("fees", "eur")]
        for d in days
    )
    assert net.value == pytest.approx(expected_net)
    before = [period.start - dt.timedelta(days=30 - i) for i in range(30)]
    previous_net = sum(
        truth[d][("gross_volume", "eur")] - truth[d][("refunds", "eur")] - truth[d][("fees", "eur")]
        for d in before
    )
    assert net.previous == pytest.approx(previous_net)
    # the goal: this month's net revenue so far against 5000
    month_days = [d for d in truth if d >= TODAY.replace(day=1)]
    so_far = sum(
        truth[d][("gross_volume", "eur")] - truth[d][("refunds", "eur")] - truth[d][("fees", "eur")]
        for d in month_days
    )
    assert net.goal is not None and net.goal.current == pytest.approx(so_far or None)
    assert "€5k" in net.goal.text
    stars = _kpi(data, "github.stars")
    assert stars.value == sum(gh["stars"][(r, TODAY - dt.timedelta(days=1))] for r in REPOS)
    assert stars.goal is not None and stars.goal.target == 1000.0
    per_repo = [k for k in data.groups[1].kpis]
    assert [k.dimension for k in per_repo] == ["acme/docs", "acme/Web-App", "acme/api"]
    page = dashboard_html(data)
    assert page.count('class="wv-goal') >= 2 and "Average order value" in page
    assert page.count('<svg class="wv-chart-svg"') == 2  # gross volume (line), net (bar)
    assert 'class="wv-bar' in page


# -- served, over HTTP and in Chromium -------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A dashboard server with a GitHub tenant (a month of gauges) and a templated shop
    tenant (calculated metrics and a goal)."""
    from support import start_dashboard_server

    from writevue_pipelines import goals, links, templates

    root = tmp_path_factory.mktemp("numbers")
    runtime = home_runtime(root)
    settings = runtime.settings
    octo = add_tenant(runtime, "Octo Client", "octo@client.test")
    frame, truth = _github(31)
    add_facts(runtime, octo, "github", frame, options={"owner": "acme"})
    shop = add_tenant(runtime, "Template Shop", "tpl@client.test")
    rows = []
    for back in range(0, 61):
        day = TODAY - dt.timedelta(days=back)
        rows += [
            ("gross_volume", "eur", day, 100.0 + back),
            ("refunds", "eur", day, 5.0),
            ("fees", "eur", day, 3.0),
            ("charges", "", day, 4.0),
        ]
    add_facts(runtime, shop, "stripe", _frame(rows))
    with runtime.db.session() as session:
        templates.save_template(session, templates.parse_template(TEMPLATE, "toml"))
        templates.apply_template(session, "shop", [shop])
        goals.set_goal(session, shop, "calc.net", 5000.0, period="month")
        _, octo_token = links.create_link(session, octo)
        _, shop_token = links.create_link(session, shop)
    server, base = start_dashboard_server(settings.home, root / "serve.log")
    try:
        yield {
            "runtime": runtime,
            "base": base,
            "octo": octo_token,
            "shop": shop_token,
            "stars": truth["stars"],
            "rows": rows,
        }
    finally:
        server.stop()
        runtime.close()


def test_the_json_export_is_what_the_page_shows(served):
    import httpx

    start, end = TODAY - dt.timedelta(days=29), TODAY
    url = f"{served['base']}/d/{served['octo']}?format=json&from={start}&to={end}"
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"].startswith("no-store")
    body = response.json()
    assert body["period"] == {"from": str(start), "to": str(end), "days": 30, "partial_today": True}
    (group,) = body["groups"]
    cards = {c["metric"]: c for c in group["cards"]}
    stars = cards["github.stars"]
    assert stars["kind"] == "gauge" and stars["polarity"] == "up_good"
    assert stars["value"] == sum(served["stars"][(r, TODAY)] for r in REPOS)
    assert stars["series"][-1] == {"day": str(TODAY), "value": stars["value"]}
    assert (
        cards["github.open_issues"]["polarity"] == "up_bad"
        if "github.open_issues" in cards
        else True
    )
    chart = next(c for c in group["charts"] if c["metric"] == "github.stars")
    assert len(chart["lines"][0]["values"]) == 30
    # the per-repository table too, as the page shows it
    (table,) = group["tables"]
    column = [c["metric"] for c in table["columns"]].index("github.stars")
    by_repo = {row["dimension"]: row["values"][column] for row in table["rows"]}
    assert by_repo == {r: served["stars"][(r, TODAY)] for r in REPOS}
    assert served["octo"] not in response.text
    bad = httpx.get(url.replace("format=json", "format=xml"))
    assert bad.status_code == 400 and "format=json" in bad.text
    assert httpx.get(url + "&compare=yesterday").status_code == 400


@pytest.mark.browser
def test_in_chromium_gauges_templates_goals_on_a_phone(served, browser):
    # The GitHub client: a month of stars, the card shows the level, not a sum.
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{served['base']}/d/{served['octo']}")
        card = page.locator('.wv-card[data-ref="github.stars"] .wv-card-value')
        card.wait_for(timeout=30_000)
        latest = sum(served["stars"][(r, TODAY)] for r in REPOS)
        assert card.get_attribute("title") == f"{latest:,}"
        assert card.inner_text() == f"{latest:,}"  # under 1,000: shown whole
        assert page.locator(".wv-detail-table tbody tr").count() == len(REPOS)
        assert "acme/Web-App" in page.locator(".wv-detail-table").inner_text()
    finally:
        page.close()

    # The templated shop on a phone: sections, a calculated metric, a goal.
    phone = browser.new_context(**device("iPhone 13"))
    try:
        page = phone.new_page()
        page.goto(f"{served['base']}/d/{served['shop']}")
        page.locator('.wv-card[data-ref="calc.aov"]').wait_for(timeout=30_000)
        titles = page.locator(".wv-group > h2").all_inner_texts()
        assert titles == ["Sales"]  # the shop has no GitHub: that section is left out
        aov = page.locator('.wv-card[data-ref="calc.aov"] .wv-card-value').inner_text()
        assert aov.startswith("€")
        goal = page.locator('.wv-card[data-ref="calc.net"] .wv-goal')
        assert "€5k" in goal.inner_text()
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    finally:
        phone.close()


@pytest.mark.browser
def test_in_chromium_the_client_switches_the_comparison_and_the_url_keeps_it(served, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{served['base']}/d/{served['shop']}")
        change = page.locator('.wv-card[data-ref="calc.net"] .wv-card-change')
        change.wait_for(timeout=30_000)
        assert "vs previous period" in change.inner_text()
        page.get_by_role("button", name="vs last year").click()
        # two months of history: a year ago is not covered, so no change is made up
        page.locator(".wv-card-change", has_text="no comparison").first.wait_for(timeout=15_000)
        page.wait_for_function("location.search.includes('compare=last_year')")
        page.reload()
        page.locator(".wv-card-change", has_text="no comparison").first.wait_for(timeout=30_000)
        assert "%" not in change.inner_text()
    finally:
        page.close()


def test_a_dimension_that_stops_reporting_leaves_a_gauges_total(runtime):
    tenant = add_tenant(runtime, "Moved Repo", "moved@client.test")
    rows = []
    for back in range(30):
        day = TODAY - dt.timedelta(days=back)
        rows.append(("stars", "o/a", day, 1000.0))
        if back >= 10:  # o/old was transferred away ten days ago
            rows.append(("stars", "o/old", day, 50.0))
    add_facts(runtime, tenant, "github", _frame(rows), options={"owner": "o"})
    data = load_dashboard(runtime, tenant, period=Period.last(30))
    stars = _kpi(data, "github.stars")
    assert stars.value == 1000.0  # not 1050: o/old's last level is not carried on
    assert stars.series[0] == 1050.0 and stars.series[-1] == 1000.0
