"""Scorecard figures, alert verdicts and anomalies from the warehouse's aggregates, and the
unusual days marked on the dashboard's charts.

A scorecard figure is the dashboard card's figure for the same period (one computation in
``figures``); alerts fire once per episode; anomalies are recorded, corrected and shown.
Expected figures are computed in the tests from the facts they insert.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid

import polars as pl
import pytest
from sqlalchemy import select
from support import add_facts, add_tenant, home_runtime, start_dashboard_server

from dashboard_server.data import Period, load_dashboard
from dashboard_server.render import dashboard_html
from writevue_pipelines import goals, links, tenant_settings
from writevue_pipelines.models import AlertRule, MetricAnomaly, Scorecard, TenantSettings
from writevue_pipelines.notifications import evaluate
from writevue_pipelines.notifications.content import AlertContent, ScorecardContent

TODAY = dt.date(2026, 12, 7)  # a Monday
YESTERDAY = TODAY - dt.timedelta(days=1)
REFRESHED = dt.datetime(2026, 12, 7, 5, 0, tzinfo=dt.UTC)
MORNING = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)  # the scorecard's send time
SPIKE = dt.date(2026, 12, 3)  # a Thursday


def frame(rows) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"metric": pl.String, "dimension": pl.String, "day": pl.Date, "value": pl.Float64},
        orient="row",
    )


def stripe_rows(days: int = 430, *, spike: dt.date | None = None) -> tuple[list, dict]:
    """Payments (a count) with a weekly pattern, gross volume per currency, refunds."""
    rows, truth = [], {}
    for back in range(days):
        day = TODAY - dt.timedelta(days=back)
        charges = 40.0 + 10 * (day.weekday() == 3) + back % 3
        if day == spike:
            charges = 400.0
        usd = 1000.0 + 7 * (back % 5)
        eur = 300.0 + 3 * (back % 4)
        refunds = 20.0 + back % 2
        for metric, dimension, value in (
            ("charges", "", charges),
            ("gross_volume", "usd", usd),
            ("gross_volume", "eur", eur),
            ("refunds", "usd", refunds),
        ):
            rows.append((metric, dimension, day, value))
            truth[(metric, dimension, day)] = value
    return rows, truth


def tenant_with_stripe(runtime, *, name="Shop Client", spike=None, days=430) -> tuple[str, dict]:
    tenant = add_tenant(runtime, name, "ops@shop.test")
    rows, truth = stripe_rows(days, spike=spike)
    add_facts(runtime, tenant, "stripe", frame(rows), refreshed_at=REFRESHED)
    return tenant, truth


def add_scorecard(runtime, tenant, metrics, *, period="last_7_days", comparison="previous"):
    with runtime.db.session() as session:
        card = Scorecard(
            id=str(uuid.uuid4()),
            tenant_id=tenant,
            name="Monday summary",
            metrics=metrics,
            period=period,
            comparison=comparison,
            # a cadence the period fits (schedule.CADENCE_PERIODS)
            cadence={"yesterday": "daily", "last_month": "monthly"}.get(period, "weekly"),
            weekday=0 if period not in ("yesterday", "last_month") else None,
            day_of_month=1 if period == "last_month" else None,
            send_at="08:00",
            next_due_at=MORNING,
        )
        session.add(card)
        return card.id


def content(runtime, scorecard_id, *, at=MORNING, link=None) -> ScorecardContent:
    with runtime.db.session() as session:
        return evaluate.scorecard_content(
            session, runtime.keys, scorecard_id, scheduled_for=at, base_url_link=link
        )


def set_timezone(runtime, tenant, zone):
    with runtime.db.session() as session:
        row = session.get(TenantSettings, tenant)
        if row is None:
            row = TenantSettings(tenant_id=tenant)
            session.add(row)
        row.timezone = zone


def days_between(start, end):
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


# -- scorecards ---------------------------------------------------------------------------


@pytest.mark.parametrize("metrics", [["stripe.charges", "stripe.gross_volume[usd]"]])
def test_a_scorecard_figure_is_the_dashboard_cards_figure(any_runtime, metrics):
    runtime = any_runtime
    tenant, truth = tenant_with_stripe(runtime)
    card = add_scorecard(runtime, tenant, metrics)
    found = content(runtime, card)
    start, end = YESTERDAY - dt.timedelta(days=6), YESTERDAY
    assert (found.period_start, found.period_end) == (start, end)
    assert found.period_label == "Mon 30 Nov to Sun 6 Dec 2026"
    assert found.tenant_name == "Shop Client" and found.title == "Monday summary"
    assert found.comparison_label == "previous period" and found.dashboard_url is None

    board = load_dashboard(runtime, tenant, period=Period(start, end), today=TODAY)
    charges, usd = found.figures
    card_charges = next(k for k in board.kpis if k.ref == "stripe.charges")
    card_usd = next(
        k for k in board.kpis if k.ref == "stripe.gross_volume" and k.dimension == "usd"
    )
    expected = sum(truth[("charges", "", d)] for d in days_between(start, end))
    before = sum(
        truth[("charges", "", d)]
        for d in days_between(start - dt.timedelta(days=7), end - dt.timedelta(days=7))
    )
    assert charges.value == card_charges.value == expected
    assert charges.previous == card_charges.previous == before
    assert charges.change == pytest.approx(card_charges.change)
    assert charges.change_text == card_charges.change_text
    assert charges.value_text == card_charges.text and charges.label == card_charges.label
    assert usd.value == card_usd.value and usd.change_text == card_usd.change_text
    assert usd.label == "Gross volume (USD)" and usd.value_text.startswith("$")
    assert charges.series == tuple(truth[("charges", "", d)] for d in days_between(start, end))


def test_money_without_a_currency_is_a_figure_per_currency(runtime):
    tenant, truth = tenant_with_stripe(runtime)
    card = add_scorecard(runtime, tenant, ["stripe.gross_volume"], period="yesterday")
    found = content(runtime, card)
    assert [f.label for f in found.figures] == ["Gross volume (USD)", "Gross volume (EUR)"]
    usd = found.figures[0]
    assert usd.value == truth[("gross_volume", "usd", YESTERDAY)]
    assert usd.previous == truth[("gross_volume", "usd", YESTERDAY - dt.timedelta(days=1))]
    # "yesterday" charts the last 14 days, so the small chart says something
    assert len(usd.series) == 14
    assert usd.series[-1] == usd.value


def test_a_scorecard_in_the_tenants_time_zone_locale_and_polarity(runtime):
    tenant, truth = tenant_with_stripe(runtime)
    set_timezone(runtime, tenant, "America/New_York")
    with runtime.db.session() as session:
        tenant_settings.update_settings(session, tenant, locale="de")
    card = add_scorecard(runtime, tenant, ["stripe.refunds[usd]"], period="yesterday")
    # 03:00 UTC on Monday is still Sunday evening in New York: yesterday is Saturday
    found = content(runtime, card, at=dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC))
    saturday = dt.date(2026, 12, 5)
    assert found.period_start == found.period_end == saturday
    assert found.period_label == "Sat 5 Dec 2026" and found.locale == "de"
    (refunds,) = found.figures
    value = truth[("refunds", "usd", saturday)]
    previous = truth[("refunds", "usd", saturday - dt.timedelta(days=1))]
    assert refunds.value == value and refunds.previous == previous
    assert refunds.value_text.endswith("\xa0$")  # "20 $" in German
    # refunds going up is bad news (the metric's polarity)
    expected = "bad" if value > previous else "good"
    assert refunds.sentiment == expected


def test_last_year_and_calendar_comparisons(runtime):
    tenant, truth = tenant_with_stripe(runtime)
    card = add_scorecard(runtime, tenant, ["stripe.charges"], comparison="last_year")
    (charges,) = content(runtime, card).figures
    start, end = YESTERDAY - dt.timedelta(days=6), YESTERDAY
    year_ago = [d.replace(year=2025) for d in days_between(start, end)]
    assert charges.previous == sum(truth[("charges", "", d)] for d in year_ago)
    assert charges.change_text.endswith("vs same period last year")

    # last month is compared with the month before it, day count and all
    card = add_scorecard(runtime, tenant, ["stripe.charges"], period="last_month")
    found = content(runtime, card)
    (charges,) = found.figures
    november = days_between(dt.date(2026, 11, 1), dt.date(2026, 11, 30))
    october = days_between(dt.date(2026, 10, 1), dt.date(2026, 10, 31))
    assert charges.value == sum(truth[("charges", "", d)] for d in november)
    assert charges.previous == sum(truth[("charges", "", d)] for d in october)
    assert found.comparison_label == "previous month"
    assert charges.change_text.endswith("vs previous month")


def test_a_goal_comparison_reads_the_goals_progress(runtime):
    tenant, truth = tenant_with_stripe(runtime)
    with runtime.db.session() as session:
        goals.set_goal(session, tenant, "stripe.charges", 2000, period="month", today=TODAY)
    card = add_scorecard(
        runtime, tenant, ["stripe.charges", "stripe.new_customers"], comparison="goal"
    )
    found = content(runtime, card)
    assert found.comparison_label == "goal"
    charges = found.figures[0]
    to_date = sum(truth[("charges", "", d)] for d in days_between(dt.date(2026, 12, 1), YESTERDAY))
    assert charges.previous == 2000
    assert f"{math.floor(100 * to_date / 2000)}% of 2k this month" in charges.change_text
    assert charges.goal_text == charges.change_text
    assert charges.sentiment in ("good", "bad")
    # a metric without a goal says so instead of a comparison
    assert found.figures[1].change_text == "no goal set"


def test_a_scorecard_carries_the_link_only_when_given_and_the_brand(runtime):
    tenant, _ = tenant_with_stripe(runtime)
    card = add_scorecard(runtime, tenant, ["stripe.charges"])
    found = content(runtime, card, link="https://dash.example/d/abc")
    assert found.dashboard_url == "https://dash.example/d/abc"
    assert found.brand.display_name == "WriteVue"


def test_a_calculated_metric_from_the_template(runtime):
    from writevue_pipelines import templates

    tenant, truth = tenant_with_stripe(runtime)
    with runtime.db.session() as session:
        template = templates.parse_template(
            'name = "shop"\n[[calculated]]\nname = "aov"\n'
            'formula = "stripe.gross_volume[usd] / stripe.charges"\n'
            'unit = "money"\ncurrency = "usd"\nlabel = "Average order"\n',
            "toml",
        )
        templates.save_template(session, template)
        templates.apply_template(session, "shop", [tenant])
    card = add_scorecard(runtime, tenant, ["calc.aov"], period="yesterday")
    (aov,) = content(runtime, card).figures
    assert aov.label == "Average order"
    assert aov.value == pytest.approx(
        truth[("gross_volume", "usd", YESTERDAY)] / truth[("charges", "", YESTERDAY)]
    )


# -- anomalies ----------------------------------------------------------------------------


def stored_anomalies(runtime, tenant):
    with runtime.db.session() as session:
        return session.scalars(select(MetricAnomaly).where(MetricAnomaly.tenant_id == tenant)).all()


def test_an_unusual_day_is_recorded_and_cleared_when_corrected(any_runtime):
    runtime = any_runtime
    tenant, truth = tenant_with_stripe(runtime, spike=SPIKE, days=90)
    with runtime.db.session() as session:
        found = evaluate.detect_anomalies(session, [tenant], today=TODAY)
    assert [(a.metric, a.dimension, a.day) for a in found[tenant]] == [
        ("stripe.charges", "", SPIKE)
    ]
    (row,) = stored_anomalies(runtime, tenant)
    assert (row.metric, row.day, row.value) == ("stripe.charges", SPIKE, 400.0)
    history = [truth[("charges", "", SPIKE - dt.timedelta(days=7 * k))] for k in range(1, 9)]
    assert row.low <= min(history) and row.high >= max(history) and row.expected < 60
    # evaluating again changes nothing
    with runtime.db.session() as session:
        evaluate.detect_anomalies(session, [tenant], today=TODAY)
    assert len(stored_anomalies(runtime, tenant)) == 1
    # the source corrects the day: the anomaly goes
    rows, _ = stripe_rows(90)
    with runtime.db.session() as session:
        from writevue_pipelines import registry, warehouse

        (connection,) = registry.list_connections(session, tenant_id=tenant)
        warehouse.upsert_facts(session, connection, frame(rows), window_start=None)
    with runtime.db.session() as session:
        assert evaluate.detect_anomalies(session, [tenant], today=TODAY)[tenant] == []
    assert stored_anomalies(runtime, tenant) == []


def test_days_a_refresh_has_not_covered_are_not_judged(runtime):
    tenant = add_tenant(runtime, "Late Client", "ops@late.test")
    rows, _ = stripe_rows(90, spike=YESTERDAY)
    # refreshed before yesterday was over: yesterday's figures may be incomplete
    add_facts(
        runtime,
        tenant,
        "stripe",
        frame(rows),
        refreshed_at=dt.datetime(2026, 12, 6, 20, 0, tzinfo=dt.UTC),
    )
    with runtime.db.session() as session:
        assert evaluate.detect_anomalies(session, [tenant], today=TODAY)[tenant] == []


# -- alerts -------------------------------------------------------------------------------


def add_rule(runtime, tenant, metric, condition, threshold=None, *, window=1, dimension=""):
    with runtime.db.session() as session:
        rule = AlertRule(
            id=str(uuid.uuid4()),
            tenant_id=tenant,
            metric=metric,
            dimension=dimension,
            condition=condition,
            threshold=threshold,
            window_days=window,
        )
        session.add(rule)
        return rule.id


def alerts(runtime, tenant, today=TODAY) -> list[AlertContent]:
    with runtime.db.session() as session:
        return evaluate.evaluate_alerts(session, runtime.keys, [tenant], today=today)


def rule_row(runtime, rule_id) -> AlertRule:
    with runtime.db.session() as session:
        row = session.get(AlertRule, rule_id)
        session.expunge(row)
        return row


def test_an_alert_fires_once_per_episode(any_runtime):
    runtime = any_runtime
    tenant, truth = tenant_with_stripe(runtime, days=60)
    rule = add_rule(runtime, tenant, "stripe.charges", "above", 10)  # always above 10
    (fired,) = alerts(runtime, tenant)
    assert fired.alert_id == rule and fired.day == YESTERDAY and fired.condition == "above"
    value = truth[("charges", "", YESTERDAY)]
    assert fired.value == value
    assert fired.sentence == (
        f"Payments was {value:.0f} on Sun 6 Dec 2026, above your threshold of 10."
    )
    assert fired.series[-1] == value and len(fired.series) == 14
    state = rule_row(runtime, rule)
    assert (state.state, state.firing_since, state.last_day) == ("firing", YESTERDAY, YESTERDAY)
    assert state.last_value == value
    # evaluating the same day again, and the next day while it holds: silent
    assert alerts(runtime, tenant) == []
    assert alerts(runtime, tenant, TODAY + dt.timedelta(days=0)) == []
    # it stops holding: cleared, silently; it holds again: a new episode fires
    with runtime.db.session() as session:
        session.get(AlertRule, rule).threshold = 1000
    assert alerts(runtime, tenant) == [] and rule_row(runtime, rule).state == "ok"
    with runtime.db.session() as session:
        session.get(AlertRule, rule).threshold = 10
    assert len(alerts(runtime, tenant)) == 1


def test_no_data_leaves_the_state_as_it_is(runtime):
    tenant, _ = tenant_with_stripe(runtime, days=60)
    rule = add_rule(runtime, tenant, "stripe.charges", "above", 10)
    alerts(runtime, tenant)
    # a day the refresh has not covered yet: no verdict, still firing, no second alert
    later = TODAY + dt.timedelta(days=3)
    assert alerts(runtime, tenant, later) == []
    state = rule_row(runtime, rule)
    assert state.state == "firing" and state.last_day == YESTERDAY


def test_below_change_and_a_weekly_window(runtime):
    tenant, truth = tenant_with_stripe(runtime, days=60)
    below = add_rule(runtime, tenant, "stripe.gross_volume", "below", 5000, dimension="usd")
    change = add_rule(runtime, tenant, "stripe.charges", "change", 1)  # ±1%
    weekly = add_rule(runtime, tenant, "stripe.charges", "above", 100_000, window=7)
    paused = add_rule(runtime, tenant, "stripe.charges", "above", 1)
    with runtime.db.session() as session:
        session.get(AlertRule, paused).paused_at = REFRESHED
    fired = {a.alert_id: a for a in alerts(runtime, tenant)}
    assert (
        set(fired) == {below, change}
        if truth[("charges", "", YESTERDAY)]
        != truth[("charges", "", YESTERDAY - dt.timedelta(days=1))]
        else {below}
    )
    usd = truth[("gross_volume", "usd", YESTERDAY)]
    assert fired[below].sentence == (
        f"Gross volume (USD) was ${usd:,.0f} on Sun 6 Dec 2026, below your threshold of $5,000."
    )
    if change in fired:
        assert "against the day before" in fired[change].sentence
    assert weekly not in fired and rule_row(runtime, weekly).last_value == sum(
        truth[("charges", "", d)] for d in days_between(TODAY - dt.timedelta(days=7), YESTERDAY)
    )


def test_an_anomaly_alert(runtime):
    tenant, _ = tenant_with_stripe(runtime, spike=YESTERDAY, days=90)
    rule = add_rule(runtime, tenant, "stripe.charges", "anomaly", 3.5)
    (fired,) = alerts(runtime, tenant)
    assert fired.alert_id == rule and fired.value == 400
    assert "outside its usual range for a Sunday" in fired.sentence


# -- the dashboard marks unusual days -----------------------------------------------------


def test_the_chart_marks_an_unusual_day_with_its_usual_range(runtime):
    tenant, _ = tenant_with_stripe(runtime, spike=SPIKE, days=90)
    period = Period(TODAY - dt.timedelta(days=29), TODAY)
    before = dashboard_html(load_dashboard(runtime, tenant, period=period, today=TODAY))
    assert "wv-anomaly" not in before and "unusual day" not in before
    with runtime.db.session() as session:
        (found,) = evaluate.detect_anomalies(session, [tenant], today=TODAY)[tenant]
    data = load_dashboard(runtime, tenant, period=period, today=TODAY)
    (charges,) = [c for g in data.groups for c in g.charts if c.ref == "stripe.charges"]
    (mark,) = charges.marks
    assert charges.days[mark.index] == SPIKE and mark.value == 400
    assert (mark.low, mark.high) == (found.low, found.high)
    page = dashboard_html(data)
    assert page.count('class="wv-anomaly"') == 1
    assert f'data-day="{SPIKE.isoformat()}"' in page
    low, high = (f"{v:,.0f}" for v in (found.low, found.high))
    usual = f"unusual: 400 (usual range {low} to {high})"
    assert f"<title>03 Dec 2026: {usual}</title>" in page
    assert f'title="03 Dec 2026: 400 \u25c6 {usual}"' in page  # the day's tooltip
    assert page.count("\u25c6 unusual day (outside its usual range)") == 1  # its legend
    # a period that does not show the day shows no marker
    earlier = Period(SPIKE - dt.timedelta(days=40), SPIKE - dt.timedelta(days=1))
    assert "wv-anomaly" not in dashboard_html(
        load_dashboard(runtime, tenant, period=earlier, today=TODAY)
    )


def test_a_client_sees_the_marker_in_the_browser(tmp_path, browser):
    """Chromium, as a client opens the link: the diamond is drawn on the line, the legend
    says what it means, a tap on the day shows its value and usual range."""
    today = dt.datetime.now(dt.UTC).date()
    spike = today - dt.timedelta(days=4)
    runtime = home_runtime(tmp_path)
    try:
        tenant = add_tenant(runtime, "Marker Client", "ops@marker.test")
        rows = [
            ("charges", "", today - dt.timedelta(days=back), 40.0 + back % 3) for back in range(90)
        ]
        rows = [(m, d, day, 400.0 if day == spike else v) for m, d, day, v in rows]
        add_facts(runtime, tenant, "stripe", frame(rows))
        with runtime.db.session() as session:
            evaluate.detect_anomalies(session, [tenant], today=today)
            _, token = links.create_link(session, tenant)
        server, base = start_dashboard_server(runtime.settings.home, tmp_path / "serve.log")
    except BaseException:
        runtime.close()
        raise
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base}/d/{token}")
        marker = page.locator(f'polygon.wv-anomaly[data-day="{spike.isoformat()}"]')
        marker.wait_for(timeout=30_000)
        marker.scroll_into_view_if_needed()
        box = marker.bounding_box()
        chart = page.locator('svg.wv-chart-svg[data-ref="stripe.charges"]').bounding_box()
        assert box["width"] > 4 and box["height"] > 4
        assert chart["x"] < box["x"] < chart["x"] + chart["width"]
        # on the line's highest point: the top of the plot
        assert box["y"] < chart["y"] + chart["height"] / 2
        legend = page.get_by_text("\u25c6 unusual day (outside its usual range)")
        assert legend.count() == 1 and legend.is_visible()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        tip = page.locator(".wv-tip")
        tip.wait_for(timeout=5_000)
        assert f"{spike:%d %b %Y}: 400 \u25c6 unusual: 400 (usual range" in tip.inner_text()
        assert not errors, errors
    finally:
        context.close()
        server.stop()
        runtime.close()
