"""The batch evaluator (``notifications.batch``): what a ``notifications`` run computes for
hundreds of tenants at once equals what the per-tenant path computes, the vectorised
unusual-day screen never hides a day the exact method flags, and a queued message keeps
its content until it is rendered and sent."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from support import add_tenant, start_smtp_server
from test_notification_delivery import (
    NOW,
    add_recipient,
    email_address,
    new_scorecard,
    queue,
    rows,
    scorecard,
    with_settings,
)

from writevue_pipelines.models import MetricAnomaly, NotificationDelivery
from writevue_pipelines.notifications import anomaly, delivery, messages
from writevue_pipelines.vault import Binding

START = dt.date(2026, 1, 5)
DAYS = 80

_value = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1.0, 100.0, 1e6, float("inf"), float("nan")]),
    st.floats(min_value=-1e3, max_value=1e7, allow_nan=False, allow_infinity=False),
)


_ODD = [0.0, -0.0, 1.0, 100.0, 1e6, -5.0, float("inf"), float("nan")]


@st.composite
def _series(draw):
    """A metric's days: a steady, a noisy or a sparse history, with gaps, odd values and
    spikes (drawn from one seeded random, so every example is cheap and repeatable)."""
    base = draw(st.sampled_from([0.0, 1.0, 20.0, 500.0, 1e6]))
    noise = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    rnd = draw(st.randoms(use_true_random=False))
    values = []
    for _ in range(DAYS):
        pick = rnd.random()
        if pick < 0.1:
            values.append(None)
        elif pick < 0.13:
            values.append(rnd.choice(_ODD))
        else:
            values.append(max(0.0, base * (1 + rnd.gauss(0, noise))))
    for index in range(DAYS - 10, DAYS):
        if values[index] is not None and rnd.random() < 0.3:
            values[index] = values[index] * rnd.choice([0.0, 3.0, 10.0]) + rnd.choice([0, 5])
    return values, draw(st.sampled_from([0.0, 1.0, 0.005]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_series(), min_size=1, max_size=5), st.sampled_from([3.5, 2.0, 5.0]))
def test_the_vectorised_screen_never_hides_an_anomalous_day(many, threshold):
    """Every day ``detect`` calls anomalous is among the days ``screen`` passes on to it,
    for many series in one frame (gaps, zeros, non-finite values, floors), and any other
    it passes on lies on the very edge of ``detect``'s limits: the screen is ``detect``'s
    method, vectorised, with a hair of slack."""
    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    frame = pl.DataFrame(
        {
            "series": [index for index, _ in enumerate(many) for _ in days],
            "day": days * len(many),
            "value": [v for values, _ in many for v in values],
            "min_spread": [spread for _, spread in many for _ in days],
        },
        schema={"series": pl.Int64, "day": pl.Date, "value": pl.Float64, "min_spread": pl.Float64},
    )
    first, last = days[-15], days[-1]
    passed = set(anomaly.screen(frame, first, last, threshold=threshold).iter_rows())
    for index, (values, spread) in enumerate(many):
        by_day = dict(zip(days, values, strict=True))
        for day in days[-15:]:
            verdict = anomaly.detect(by_day, day, threshold=threshold, min_spread=spread)
            if verdict is not None and verdict.anomalous:
                assert (index, day) in passed, (index, day, verdict)
            elif (index, day) in passed:
                # only a day on the very edge of detect's limits is passed on besides
                assert verdict is not None and abs(verdict.score) >= threshold * (1 - 1e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_series())
def test_whether_a_day_has_a_verdict_is_known_without_judging_it(one):
    """``has_verdict`` (what a batch asks of an anomaly rule whose day its screen found
    usual) says exactly when ``detect`` gives a verdict."""
    values, spread = one
    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    by_day = dict(zip(days, values, strict=True))
    for day in days[-15:]:
        verdict = anomaly.detect(by_day, day, min_spread=spread)
        assert anomaly.has_verdict(by_day, day) == (verdict is not None), day


def test_the_screen_passes_on_few_days_of_steady_series():
    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    frame = pl.DataFrame(
        {
            "series": [s for s in range(50) for _ in days],
            "day": days * 50,
            "value": [100.0 + (s * 7 + i) % 13 for s in range(50) for i in range(DAYS)],
            "min_spread": [1.0] * (50 * DAYS),
        }
    )
    assert anomaly.screen(frame, days[-8], days[-1]).height == 0
    spiked = frame.with_columns(
        pl.when((pl.col("series") == 3) & (pl.col("day") == days[-2]))
        .then(900.0)
        .otherwise(pl.col("value"))
        .alias("value")
    )
    assert anomaly.screen(spiked, days[-8], days[-1]).rows() == [(3, days[-2])]


def test_the_screen_passes_on_days_just_beyond_the_limit():
    """Days built to lie a hair outside the usual range (where a screen rounding its own
    way would hide them) are passed on whenever ``detect`` flags them."""
    import random

    rng = random.Random(14)
    days = [START + dt.timedelta(days=i) for i in range(DAYS)]
    rows, edges = [], []
    for index in range(300):
        base = rng.choice([1.0, 20.0, 500.0, 1e6])
        noise = rng.choice([0.01, 0.05, 0.3])
        values = [max(0.0, base * (1 + rng.gauss(0, noise))) for _ in days]
        by_day = dict(zip(days, values, strict=True))
        verdict = anomaly.detect(by_day, days[-1], min_spread=1.0)
        limit = verdict.high - verdict.expected
        values[-1] = verdict.expected + limit * (1 + 1e-7)
        by_day[days[-1]] = values[-1]
        if anomaly.detect(by_day, days[-1], min_spread=1.0).anomalous:
            edges.append(index)
        rows += [(index, day, value, 1.0) for day, value in zip(days, values, strict=True)]
    frame = pl.DataFrame(rows, schema=["series", "day", "value", "min_spread"], orient="row")
    passed = {series for series, _ in anomaly.screen(frame, days[-1], days[-1]).iter_rows()}
    assert len(edges) > 100
    assert set(edges) <= passed


# -- the batch's figures are the dashboard's -----------------------------------------------------


@st.composite
def _facts(draw):
    """One tenant's facts: metrics of one connection and one dimension each, of every kind,
    with gaps, zeros, a negative zero and a non-finite value now and then."""
    first = START + dt.timedelta(days=draw(st.integers(0, 5)))
    last = first + dt.timedelta(days=draw(st.integers(0, 40)))
    metrics = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["counter", "gauge", "ratio"]),
                st.sampled_from(["", "EUR", "acme/api"]),
            ),
            min_size=1,
            max_size=4,
        )
    )
    rows = []
    # now and then every metric every day: what a refresh usually leaves (``_grid``)
    full = draw(st.booleans())
    for index, (_, dimension) in enumerate(metrics):
        for offset in range((last - first).days + 1):
            if full or draw(st.booleans()):
                value = draw(_value.filter(lambda v: v is not None))
                rows.append((f"m{index}", dimension, first + dt.timedelta(days=offset), value))
    start = first - dt.timedelta(days=draw(st.integers(-3, 10)))
    if rows:
        start = min(start, min(day for _, _, day, _ in rows))
    return first, last, [kind for kind, _ in metrics], rows, start


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_facts())
def test_series_merged_in_numpy_equal_the_dashboards(found):
    """``batch.gather`` (every tenant's one-connection, one-dimension series at once) gives
    each day exactly the value ``figures.Figures.daily`` gives it, and hands every other
    series' facts on as they are."""
    import math
    from types import SimpleNamespace

    from writevue_pipelines import figures
    from writevue_pipelines.notifications import batch, evaluate
    from writevue_pipelines.sources.base import MetricMeta

    first, last, kinds, rows, start = found
    tenant_id, cid = "t-1", "c-1"
    metas = {
        "rest": {
            f"m{i}": MetricMeta(f"M{i}", kind, "up_good", "count") for i, kind in enumerate(kinds)
        }
    }
    connection = SimpleNamespace(id=cid, source="rest", last_refreshed_at=None)
    tenant = evaluate._Tenant(tenant_id, "en", "UTC", {}, None, [], [connection], metas)
    facts = pl.DataFrame(
        [(tenant_id, cid, m, d, day, v) for m, d, day, v in rows],
        schema=batch.FACT_SCHEMA,
        orient="row",
    )
    history = {tenant_id: {cid: start}}
    windows = {tenant_id: (first, last)}
    expected = figures.Figures(
        facts.drop("tenant_id"), {cid: "rest"}, metas, {cid: start}, first, last
    )
    # as the driver gives them (a day as its ISO text), in the order of the facts' key (a
    # grid when every day has every metric) and in another
    driven = [(m, d, day.isoformat(), v) for m, d, day, v in rows]
    for ordered in (sorted(driven, key=lambda r: (r[2], r[0], r[1])), driven):
        fetched = [(tenant_id, cid, ordered)]
        series, merged, rest = batch.gather(fetched, {tenant_id: tenant}, history, windows)
        assert {s.ref for s in series} == set(expected.refs())
        assert rest.height == 0  # one dimension per metric: all merged
        for index, one in enumerate(series):
            mine = merged.days_of(index, first, last)
            for dimension in (None, one.dimension):
                theirs = list(expected.daily(one.ref, dimension, one.kind).values())
                assert len(mine) == len(theirs)
                for a, b in zip(mine, theirs, strict=True):
                    same = (a is None and b is None) or (
                        a is not None
                        and b is not None
                        and (a == b or (math.isnan(a) and math.isnan(b)))
                        and math.copysign(1, a) == math.copysign(1, b)
                    )
                    assert same, (one, a, b)


def test_gather_hands_every_other_series_on_as_its_facts():
    """A metric with two dimensions, or of a source with two connections holding data, is
    not merged in numpy: its facts go on to ``Figures`` as they were read."""
    from types import SimpleNamespace

    from writevue_pipelines.notifications import batch, evaluate
    from writevue_pipelines.sources.base import MetricMeta

    day = START
    shop = [SimpleNamespace(id="c-1", source="rest", last_refreshed_at=None)]
    two = [SimpleNamespace(id=c, source="stripe", last_refreshed_at=None) for c in ("c-2", "c-3")]
    metas = {"rest": {"m": MetricMeta("M", "counter", "up_good", "count")}}
    tenants = {
        "t-1": evaluate._Tenant("t-1", "en", "UTC", {}, None, [], shop, metas),
        "t-2": evaluate._Tenant("t-2", "en", "UTC", {}, None, [], two, {}),
    }
    history = {"t-1": {"c-1": day}, "t-2": {"c-2": day, "c-3": day}}
    windows = {"t-1": (day, day + dt.timedelta(days=2)), "t-2": (day, day)}
    fetched = [
        (
            "t-1",
            "c-1",
            [
                ("m", "", day.isoformat(), 1.0),
                ("split", "usd", day.isoformat(), 2.0),
                ("split", "eur", day.isoformat(), 3.0),
                ("m", "", (day + dt.timedelta(days=2)).isoformat(), 4.0),
            ],
        ),
        ("t-2", "c-2", [("charges", "", day.isoformat(), 5.0)]),
        ("t-2", "c-3", [("charges", "", day.isoformat(), 6.0)]),
    ]
    series, merged, rest = batch.gather(fetched, tenants, history, windows)
    assert [(s.tenant_id, s.ref, s.kind) for s in series] == [("t-1", "rest.m", "counter")]
    assert merged.days_of(0, *windows["t-1"]) == [1.0, 0.0, 4.0]
    assert sorted(rest.rows()) == sorted(
        [
            ("t-1", "c-1", "split", "usd", day, 2.0),
            ("t-1", "c-1", "split", "eur", day, 3.0),
            ("t-2", "c-2", "charges", "", day, 5.0),
            ("t-2", "c-3", "charges", "", day, 6.0),
        ]
    )
    assert rest.schema == pl.Schema(batch.FACT_SCHEMA)


def test_rows_with_every_metric_every_day_are_read_as_a_grid():
    """``_grid`` takes rows in the order of the facts' key as days of the same metrics only
    when they are: a missing or an extra row, or a day out of order, is read row by row."""
    from writevue_pipelines.notifications import batch

    days = ["2026-01-05", "2026-01-06", "2026-01-07"]
    keys = [("a", ""), ("b", "eur"), ("b", "usd")]
    rows = [(m, d, day, 1.0) for day in days for m, d in keys]

    def grid(found):
        return batch._grid(*list(zip(*found, strict=True))[:3])

    assert grid(rows) == (tuple(days), 3)
    assert grid(rows[:-1]) is None  # the last day lacks a key
    assert grid([*rows[:3], ("c", "", days[1], 1.0), *rows[3:]]) is None  # an extra key
    assert grid(rows[3:6] + rows[:3] + rows[6:]) == ((days[1], days[0], days[2]), 3)
    swapped = [rows[1], rows[0], *rows[2:]]
    assert grid(swapped) is None  # the keys of a day in another order than the first's
    two_days = [("a", "", days[0], 1.0), ("b", "", days[1], 1.0)]
    assert grid(two_days) is None  # a day without the first day's key


@st.composite
def _stored_facts(draw):
    """A connection's facts as a refresh leaves them (every key every day, some days
    missing) or not: a key missing on a day, a day holding another key instead of one of
    the first day's (as many facts every day), a key only on a later day."""
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "m\u00e9", "Z"]), st.sampled_from(["", "eur", "usd"])
            ),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    days = sorted(draw(st.sets(st.integers(0, 20), min_size=1, max_size=8)))
    cells = {(day, key) for day in days for key in keys}
    change = draw(st.sampled_from(["none", "drop", "swap", "extra"]))
    other = ("c", "other")
    if change != "none":
        day = draw(st.sampled_from(days))
        if change in ("drop", "swap"):
            cells.discard((day, draw(st.sampled_from(keys))))
        if change in ("swap", "extra"):
            cells.add((day, other))
    values = {cell: float(i) + 0.5 for i, cell in enumerate(sorted(cells))}
    return values


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(found=_stored_facts())
def test_a_connections_facts_read_as_a_grid_only_when_they_are_one(found, tmp_path_factory):
    """On SQLite, ``batch._sqlite_rows`` reads a connection's facts as a ``Grid`` (only the
    values, after the days and one day's keys) when every day holds the same keys, and row
    by row otherwise; either way, fact by fact, what the plain ordered query reads."""
    import sqlite3

    from sqlalchemy import create_engine

    from writevue_pipelines.models import Fact
    from writevue_pipelines.notifications import batch

    path = tmp_path_factory.getbasetemp() / "grid-facts.db"
    if not path.exists():
        engine = create_engine(f"sqlite:///{path}")
        Fact.__table__.create(engine)
        engine.dispose()
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("DELETE FROM facts")
        stored = [
            ("t-1", "c-1", (START + dt.timedelta(days=day)).isoformat(), m, d, value)
            for (day, (m, d)), value in found.items()
        ]
        # a neighbour's facts on either side of the key's range must not be read
        stored += [
            (t, c, START.isoformat(), "a", "", 9.0) for t, c in (("t-0", "c-9"), ("t-1", "c-2"))
        ]
        raw.executemany(
            "INSERT INTO facts (tenant_id, connection_id, day, metric, dimension, value, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, '2026-01-01 00:00:00')",
            stored,
        )
        window = ("t-1", "c-1", START.isoformat(), (START + dt.timedelta(days=20)).isoformat())
        expected = raw.execute(batch._FACTS_SQL, window).fetchall()
        read = batch._sqlite_rows(raw, window)
    finally:
        raw.close()
    every_day = {key for _, key in found} == {key for day0, key in found if day0 == min(found)[0]}
    counts = {}
    for day, _ in found:
        counts[day] = counts.get(day, 0) + 1
    is_grid = every_day and len(set(counts.values())) == 1
    assert isinstance(read, batch.Grid) == is_grid, (found, read)
    rows = [read.row(i) for i in range(len(read.values))] if is_grid else list(read)
    assert rows == expected


def test_a_batch_judges_and_renders_as_one_tenant_at_a_time_does(any_runtime, caplog):
    """Tenants whose metrics are merged in polars (one connection, one dimension), one
    whose are not (two connections of a source, money per currency), alert rules and a
    scorecard with a goal: the batch finds the same unusual days, the same verdicts and
    the same scorecard as the per-tenant path, on SQLite (read from the driver) and on
    PostgreSQL."""
    from support import add_facts
    from test_notification_figures import (
        MORNING,
        REFRESHED,
        SPIKE,
        TODAY,
        add_scorecard,
        frame,
        stripe_rows,
        tenant_with_stripe,
    )

    from writevue_pipelines import goals
    from writevue_pipelines.notifications import batch, config, evaluate

    runtime = any_runtime
    simple, _ = tenant_with_stripe(runtime, name="Simple Shop", spike=SPIKE, days=120)
    double, _ = tenant_with_stripe(runtime, name="Two Accounts", days=120)
    rows, _ = stripe_rows(120, spike=SPIKE)
    add_facts(runtime, double, "stripe", frame(rows), refreshed_at=REFRESHED)
    cards = []
    for tenant in (simple, double):
        with runtime.db.session() as session:
            for metric, condition, threshold in (
                ("stripe.charges", "anomaly", None),
                ("stripe.gross_volume[usd]", "above", 10.0),
                ("stripe.charges", "change", 5.0),
            ):
                config.add_alert(
                    session,
                    runtime.keys,
                    tenant,
                    metric=metric,
                    condition=condition,
                    threshold=threshold,
                    emails=["owner@shop.test"],
                )
            goals.set_goal(session, tenant, "stripe.charges", 2000.0, period="month")
        cards.append(add_scorecard(runtime, tenant, ["stripe.charges", "stripe.gross_volume"]))
    tenants = [simple, double]
    days = runtime.settings.lookback_days + 1
    first_judged, last_judged = TODAY - dt.timedelta(days=days), TODAY - dt.timedelta(days=1)
    due = [(card, MORNING) for card in cards]
    with runtime.db.session() as session:
        read = batch._read(session, runtime, tenants, cards)
        owners = {card: tenant for card, tenant in zip(cards, tenants, strict=True)}
        outcome, failed, failed_cards = batch._compute(
            session, read, tenants, due, owners, TODAY, first_judged, last_judged
        )
    assert (failed, failed_cards) == (set(), set())
    assert any(a.metric == "stripe.charges" and a.day == SPIKE for a in outcome.anomalies[simple])
    with runtime.db.session() as session:
        expected = evaluate.detect_anomalies(session, tenants, today=TODAY, days=days)
        for tenant in tenants:
            assert sorted(outcome.anomalies[tenant], key=repr) == sorted(expected[tenant], key=repr)
        for card in cards:
            assert outcome.cards[card][1] == evaluate.scorecard_content(
                session, runtime.keys, card, scheduled_for=MORNING, base_url_link=None
            )
        for tenant in tenants:
            tenant_info = evaluate._Tenant.load(session, tenant)
            for rule in read.rules[tenant]:
                resolver = tenant_info.resolver(
                    session, TODAY - dt.timedelta(days=80), TODAY - dt.timedelta(days=1)
                )
                verdict = evaluate._judge(tenant_info, resolver, rule, TODAY - dt.timedelta(days=1))
                assert verdict is not None
                holds, value, _ = verdict
                assert outcome.verdicts[rule.id][:2] == (holds, value)
    # and a run does it all as a batch (nothing handed to the per-tenant path), once
    from writevue_pipelines.notifications import runner

    for _ in range(2):
        report = runner.RunReport()
        runner.evaluate_batch(
            runtime, tenant_ids=tenants, scorecards=due, now=MORNING, report=report
        )
        assert not [r for r in caplog.records if "one at a time" in r.getMessage()]
        assert report.errors == []
    assert report.scorecards == 0 and report.alerts_fired == 0  # the second: all done
    with runtime.db.session() as session:
        assert {(a.tenant_id, a.metric, a.day) for a in session.scalars(select(MetricAnomaly))} == {
            (a.tenant_id, a.metric, a.day) for t in tenants for a in outcome.anomalies[t]
        }


# -- the outbox keeps contents ---------------------------------------------------------------------


def test_a_content_is_stored_as_it_is_read_back():
    from writevue_pipelines.notifications import content as contents
    from writevue_pipelines.notifications.content import AlertContent, BrandInfo

    card = scorecard("t-1", "c-1", brand=BrandInfo("Agency", "#112233", b"\x89PNG", "image/png"))
    alert = AlertContent(
        "t-1",
        "a-1",
        "Shop",
        "Charges",
        "anomaly",
        dt.date(2026, 12, 3),
        400.0,
        "Unusual.",
        series=(1.0, None, float("inf")),
    )
    for content in (card, alert):
        assert contents.from_json(json.loads(json.dumps(contents.to_json(content)))) == content


def test_a_queued_message_is_rendered_when_sent_and_an_older_rendered_one_goes_as_it_was(
    any_runtime, tmp_path
):
    """A new row holds the content and is rendered for its recipient when it is sent; a
    row queued before (holding its rendered message) is sent exactly as rendered."""
    with start_smtp_server(tmp_path / "smtp") as mail:
        runtime = with_settings(any_runtime, WRITEVUE_SMTP_URL=mail.url)
        tenant_id = add_tenant(runtime)
        card = new_scorecard(runtime, tenant_id)
        people = [add_recipient(runtime, tenant_id, "email", email_address()) for _ in range(2)]
        queue(runtime, tenant_id, card, scorecard(tenant_id, card), people)
        fresh, old = rows(runtime, tenant_id)
        binding = Binding(tenant_id, None, f"delivery.{old.id}")
        stored = delivery.stored_message(runtime.keys, tenant_id, fresh.id, fresh.message_ct)
        assert set(stored) == {"channel", "content", "unsubscribe_url"}  # no address in it
        rendered = messages.email(
            scorecard(tenant_id, card, title="Rendered before"),
            sender="WriteVue <writevue@localhost>",
            to=people[1].address,
            unsubscribe_url="https://dash.test/unsubscribe/older",
            message_id=old.idempotency_key,
        ).as_string()
        with runtime.db.session() as session:
            row = session.get(NotificationDelivery, old.id)
            row.message_ct = runtime.keys.encrypt(
                json.dumps({"channel": "email", "message": rendered}), binding
            )
        assert delivery.send_due(runtime, now=NOW).counts == {"sent": 2}
        received = {m.message["Subject"].split(" · ")[0]: m.message for m in mail.messages}
    assert sorted(received) == ["Monday summary", "Rendered before"]
    assert received["Rendered before"]["List-Unsubscribe"] == (
        "<https://dash.test/unsubscribe/older>"
    )
    assert received["Monday summary"]["List-Unsubscribe"] == f"<{stored['unsubscribe_url']}>"
