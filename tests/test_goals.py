"""Goals: a target per metric and period, set per tenant, and the progress maths."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid

import polars as pl
import pytest
from support import add_tenant, add_tenant_with_facts, run_cli

from writevue_pipelines import goals, templates, tenant_settings
from writevue_pipelines.errors import InvalidInput, NotFound
from writevue_pipelines.goals import GoalInfo, progress
from writevue_pipelines.models import Goal, TenantSettings

TODAY = dt.date(2026, 3, 16)

TEMPLATE = """
name = "shop"
[[calculated]]
name = "aov"
formula = "stripe.gross_volume[eur] / stripe.charges"
unit = "money"
currency = "eur"
"""


def goal(period="month", target=50_000.0, starts_on=None, due_on=None, metric="stripe.net"):
    return GoalInfo(
        str(uuid.uuid4()), str(uuid.uuid4()), metric, "", period, target, starts_on, due_on
    )


# -- progress ------------------------------------------------------------------------------


def test_a_monthly_counter_goal_on_track():
    result = progress(goal(), kind="counter", value_to_date=31_000, today=TODAY)
    assert (result.period_start, result.period_end) == (dt.date(2026, 3, 1), dt.date(2026, 3, 31))
    assert result.current == 31_000 and result.target == 50_000
    assert result.fraction == pytest.approx(0.62)
    assert result.expected_fraction == pytest.approx(15 / 31)  # 15 whole days of 31 gone
    assert result.on_track is True
    assert result.text == "62% of 50k this month · on track"


def test_a_monthly_goal_behind_and_reached():
    behind = progress(goal(), kind="counter", value_to_date=20_000, today=TODAY)
    assert behind.on_track is False and behind.text == "40% of 50k this month · behind"
    reached = progress(goal(), kind="counter", value_to_date=61_000, today=TODAY)
    assert reached.on_track is True and reached.text == "122% of 50k this month · reached"
    first_day = progress(goal(), kind="counter", value_to_date=0, today=dt.date(2026, 3, 1))
    assert first_day.expected_fraction == 0 and first_day.on_track is True


def test_quarter_and_year_periods():
    quarter = progress(
        goal("quarter", 90), kind="counter", value_to_date=45, today=dt.date(2026, 2, 15)
    )
    assert (quarter.period_start, quarter.period_end) == (dt.date(2026, 1, 1), dt.date(2026, 3, 31))
    assert quarter.expected_fraction == pytest.approx(45 / 90) and quarter.on_track is True
    assert quarter.text == "50% of 90 this quarter · on track"
    q4 = progress(goal("quarter", 10), kind="counter", value_to_date=1, today=dt.date(2026, 12, 31))
    assert (q4.period_start, q4.period_end) == (dt.date(2026, 10, 1), dt.date(2026, 12, 31))
    year = progress(goal("year", 1_200_000), kind="counter", value_to_date=100_000, today=TODAY)
    assert (year.period_start, year.period_end) == (dt.date(2026, 1, 1), dt.date(2026, 12, 31))
    assert year.expected_fraction == pytest.approx(74 / 365)
    assert year.on_track is False and year.text == "8% of 1.2M this year · behind"


def test_a_gauge_by_a_date_shows_its_level_and_paces_from_where_it_started():
    stars = goal("by_date", 1000, dt.date(2026, 1, 1), dt.date(2026, 3, 31), "github.stars")
    result = progress(
        stars, kind="gauge", value_to_date=760, today=dt.date(2026, 2, 15), start_value=400
    )
    assert (result.period_start, result.period_end) == (dt.date(2026, 1, 1), dt.date(2026, 3, 31))
    # the client reads the level against the target; the pace runs from 400 to 1000
    assert result.fraction == pytest.approx(0.76)
    assert result.expected_fraction == pytest.approx(45 / 89)
    assert result.on_track is True  # 360 of 600 gained: 60%, ahead of 51%
    assert result.text == "760 of 1k (76%) by 2026-03-31 · on track"
    slow = progress(
        stars, kind="gauge", value_to_date=600, today=dt.date(2026, 2, 15), start_value=400
    )
    assert slow.on_track is False and slow.fraction == pytest.approx(0.6)  # 1/3 gained
    unknown_start = progress(stars, kind="gauge", value_to_date=600, today=dt.date(2026, 2, 15))
    assert unknown_start.fraction == pytest.approx(0.6) and unknown_start.on_track is True
    late = progress(
        stars, kind="gauge", value_to_date=900, today=dt.date(2026, 4, 2), start_value=400
    )
    assert late.expected_fraction == 1 and late.on_track is False
    assert late.text == "900 of 1k (90%) by 2026-03-31 · missed"
    fell = progress(
        stars, kind="gauge", value_to_date=300, today=dt.date(2026, 2, 15), start_value=400
    )
    assert fell.on_track is False and fell.text.startswith("300 of 1k (30%)")


def test_a_goal_on_a_metric_where_up_is_bad_is_a_limit():
    refunds = goal("month", 100, None, None, "stripe.refunds")
    early = progress(
        refunds, kind="counter", value_to_date=40, today=dt.date(2026, 3, 4), polarity="up_bad"
    )
    # three days gone of 31 allow ~10%: 40% spent is over pace, and red
    assert early.on_track is False and early.text == "40% of 100 this month · over pace"
    calm = progress(
        refunds, kind="counter", value_to_date=5, today=dt.date(2026, 3, 20), polarity="up_bad"
    )
    assert calm.on_track is True and calm.status == "within the limit"
    over = progress(
        refunds, kind="counter", value_to_date=130, today=dt.date(2026, 3, 20), polarity="up_bad"
    )
    assert over.on_track is False and over.status == "over the limit"


def test_a_counter_by_a_date_and_a_ratio_goal():
    signups = goal(
        "by_date", 200, dt.date(2026, 3, 1), dt.date(2026, 3, 21), "stripe.new_customers"
    )
    result = progress(signups, kind="counter", value_to_date=150, today=TODAY)
    assert result.expected_fraction == pytest.approx(15 / 20) and result.on_track is True
    rate = goal("month", 0.03, metric="calc.conversion")
    ratio = progress(rate, kind="ratio", value_to_date=0.024, today=TODAY)
    assert ratio.fraction == pytest.approx(0.8) and ratio.expected_fraction == 1
    assert ratio.on_track is False and ratio.text == "80% of 0.03 this month · behind"


def test_no_data_is_no_verdict():
    result = progress(goal(), kind="counter", value_to_date=None, today=TODAY)
    assert result.current is None and result.fraction is None and result.on_track is None
    assert result.text == "no data yet for 50k this month"
    for bad in (math.nan, math.inf):
        assert progress(goal(), kind="counter", value_to_date=bad, today=TODAY).on_track is None


def test_compact_numbers_in_the_text():
    for target, shown in [
        (50_000, "50k"),
        (1_000, "1k"),
        (1_500, "1.5k"),
        (999, "999"),
        (12.5, "12.5"),
        (2_500_000, "2.5M"),
        (3e9, "3B"),
        (-4_000, "-4k"),
        (0.125, "0.125"),
    ]:
        assert goals.compact(target) == shown


# -- storage -------------------------------------------------------------------------------


def test_set_list_replace_remove(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        monthly = goals.set_goal(
            session,
            tenant,
            "stripe.gross_volume",
            50_000,
            period="month",
            dimension="eur",
            today=TODAY,
        )
        stars = goals.set_goal(
            session,
            tenant,
            "github.stars",
            1000,
            period="by_date",
            due_on=dt.date(2026, 6, 30),
            today=TODAY,
        )
        goals.set_goal(session, tenant, "rest.signups", 10, period="year", today=TODAY)
    with runtime.db.session() as session:
        listed = goals.list_goals(session, tenant)
    assert [(g.metric, g.dimension, g.period, g.target) for g in listed] == [
        ("github.stars", "", "by_date", 1000),
        ("rest.signups", "", "year", 10),
        ("stripe.gross_volume", "eur", "month", 50_000),
    ]
    assert listed[0].starts_on == TODAY and listed[0].due_on == dt.date(2026, 6, 30)
    assert listed[0].id == stars
    with runtime.db.session() as session:
        again = goals.set_goal(
            session,
            tenant,
            "stripe.gross_volume",
            60_000,
            period="quarter",
            dimension="eur",
            today=TODAY,
        )
    assert again == monthly  # one goal per metric and dimension: replaced
    with runtime.db.session() as session:
        listed = goals.list_goals(session, tenant)
        assert [(g.period, g.target) for g in listed if g.dimension == "eur"] == [
            ("quarter", 60_000)
        ]
        goals.remove_goal(session, stars)
    with runtime.db.session() as session:
        assert len(goals.list_goals(session, tenant)) == 2
        with pytest.raises(NotFound, match="goal list"):
            goals.remove_goal(session, stars)


def test_bad_goals_are_refused_and_nothing_is_written(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    bad = [
        (("stripe.net", 1), {"period": "week"}, "period: 'week' is not one of month, quarter"),
        (("stripe.net", math.nan), {"period": "month"}, "finite"),
        (("stripe.net", math.inf), {"period": "month"}, "finite"),
        (("stripe.net", 0), {"period": "month"}, "not 0"),
        (("stripe.net", 1), {"period": "by_date"}, "by_date needs a due date"),
        (("stripe.net", 1), {"period": "by_date", "due_on": TODAY}, "in the future"),
        (("stripe.net", 1), {"period": "month", "due_on": dt.date(2027, 1, 1)}, "Only by_date"),
        (
            ("stripe.net", 1),
            {"period": "by_date", "due_on": dt.date(2026, 4, 1), "starts_on": dt.date(2026, 5, 1)},
            "starts after it is due",
        ),
        (("strpe.net", 1), {"period": "month"}, 'no source "strpe"'),
        (("stripe.gross", 1), {"period": "month"}, 'stripe has no metric "gross"'),
        (("ga4.sessions", 1), {"period": "month", "dimension": "x"}, "no breakdown"),
        (("calc.aov", 1), {"period": "month"}, 'no calculated metric "aov"'),
        (("stripe.net", 1), {"period": "month", "dimension": "a]b"}, "dimension"),
    ]
    for (metric, target), kwargs, message in bad:
        with pytest.raises(InvalidInput, match=message), runtime.db.session() as session:
            goals.set_goal(session, tenant, metric, target, today=TODAY, **kwargs)
    with pytest.raises(NotFound), runtime.db.session() as session:
        goals.set_goal(session, str(uuid.uuid4()), "stripe.net", 1, period="month")
    with runtime.db.session() as session:
        assert goals.list_goals(session, tenant) == []
        # a calculated metric of the tenant's template can have a goal
        templates.save_template(session, templates.parse_template(TEMPLATE, "toml"))
        templates.apply_template(session, "shop", [tenant])
        goals.set_goal(session, tenant, "calc.aov", 80, period="month", today=TODAY)
    with runtime.db.session() as session:
        assert [g.metric for g in goals.list_goals(session, tenant)] == ["calc.aov"]


def test_erasure_removes_goals_and_settings(runtime):
    from writevue_pipelines.privacy import run_erasure

    facts = pl.DataFrame({"metric": ["charges"], "dimension": [""], "day": [TODAY], "value": [3.0]})
    tenant, _ = add_tenant_with_facts(runtime, "Gone Co", facts)
    other = add_tenant(runtime, "Stays Co")
    with runtime.db.session() as session:
        templates.save_template(session, templates.parse_template(TEMPLATE, "toml"))
        templates.apply_template(session, "shop", [tenant, other])
        for who in (tenant, other):
            goals.set_goal(session, who, "stripe.charges", 100, period="month", today=TODAY)
            tenant_settings.update_settings(
                session, who, locale="de", polarity_set={"stripe.refunds": "up_bad"}
            )
    report = run_erasure(runtime, tenant)
    assert report.ok, report.lines()
    with runtime.db.session() as session:
        assert session.query(Goal).filter_by(tenant_id=tenant).count() == 0
        assert session.get(TenantSettings, tenant) is None
        assert [g.tenant_id for g in goals.list_goals(session, other)] == [other]
        assert tenant_settings.get_settings(session, other).locale == "de"
        # the template is agency data: it stays, applied to the other tenant
        assert templates.list_templates(session)[0].tenants == 1


# -- the commands --------------------------------------------------------------------------


def test_goal_commands_end_to_end(runtime, monkeypatch, capsys):
    tenant = add_tenant(runtime)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "goal",
        "set",
        tenant,
        "stripe.gross_volume",
        "50k",
        "--per",
        "month",
        "--dimension",
        "eur",
    )
    assert code == 0, err
    monthly = out.strip().splitlines()[-1]
    due = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=60)).isoformat()
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "goal",
        "set",
        tenant,
        "github.stars[acme/api]",
        "1,000",
        "--by",
        due,
    )
    assert code == 0, err
    stars = out.strip().splitlines()[-1]

    code, out, err = run_cli(
        monkeypatch, capsys, "goal", "list", tenant, "--json", "--reason", "T-1"
    )
    assert code == 0, err
    listed = {g["id"]: g for g in json.loads(out)}
    assert listed[monthly]["target"] == 50_000 and listed[monthly]["dimension"] == "eur"
    assert listed[stars]["due_on"] == due and listed[stars]["dimension"] == "acme/api"
    assert listed[stars]["period"] == "by_date"
    code, out, _ = run_cli(monkeypatch, capsys, "goal", "list", tenant)
    assert "stripe.gross_volume[eur]" in out and "50k per month" in out and f"by {due}" in out

    for args, message in [
        (["stripe.net", "5", "--per", "month", "--by", due], "--per or --by, not both"),
        (["stripe.net", "5"], "give --per month|quarter|year or --by YYYY-MM-DD"),
        (["stripe.net", "lots", "--per", "month"], "not a number"),
        (["stripe.net", "nan", "--per", "month"], "finite"),
        (["stripe.net", "5", "--by", "2026-02-30"], "YYYY-MM-DD"),
        (["stripe.net", "5", "--per", "week"], "invalid choice"),
        (["strpe.net", "5", "--per", "month"], 'no source "strpe"'),
    ]:
        code, out, err = run_cli(monkeypatch, capsys, "goal", "set", tenant, *args)
        assert code == 2 and out == "" and message in err, err
        assert len(err.strip().splitlines()) == 1

    code, out, err = run_cli(monkeypatch, capsys, "goal", "remove", stars)
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "goal", "remove", stars)
    assert code == 2 and "No goal" in err
    code, out, _ = run_cli(monkeypatch, capsys, "goal", "list", tenant, "--json")
    assert [g["id"] for g in json.loads(out)] == [monthly]
