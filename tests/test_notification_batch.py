"""The batch evaluator (``notifications.batch``): what a ``notifications`` run computes for
hundreds of tenants at once equals what the per-tenant path computes, the vectorised
unusual-day screen never hides a day the exact method flags, and a queued message keeps
its content until it is rendered and sent."""

from __future__ import annotations

import datetime as dt

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from writevue_pipelines.notifications import anomaly

START = dt.date(2026, 1, 5)
DAYS = 80

_value = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, 1.0, 100.0, 1e6, float("inf"), float("nan")]),
    st.floats(min_value=-1e3, max_value=1e7, allow_nan=False, allow_infinity=False),
)


@st.composite
def _series(draw):
    """A metric's days: a steady, a noisy or a sparse history, with gaps and spikes."""
    base = draw(st.sampled_from([0.0, 1.0, 20.0, 500.0, 1e6]))
    noise = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    rnd = draw(st.randoms(use_true_random=False))
    values = []
    for _ in range(DAYS):
        if rnd.random() < 0.1:
            values.append(None)
        elif rnd.random() < 0.05:
            values.append(draw(_value))
        else:
            values.append(max(0.0, base * (1 + rnd.gauss(0, noise))))
    for index in range(DAYS - 10, DAYS):
        if values[index] is not None and rnd.random() < 0.3:
            values[index] = values[index] * rnd.choice([0.0, 3.0, 10.0]) + rnd.choice([0, 5])
    return values, draw(st.sampled_from([0.0, 1.0, 0.005]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_series(), min_size=1, max_size=6), st.sampled_from([3.5, 2.0, 5.0]))
def test_the_vectorised_screen_never_hides_an_anomalous_day(many, threshold):
    """Every day ``detect`` calls anomalous is among the days ``screen`` passes on to it,
    for many series in one frame (gaps, zeros, non-finite values, floors), and hardly any
    other: the screen is ``detect``'s method, vectorised, with a hair of slack."""
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
    flagged = set()
    for index, (values, spread) in enumerate(many):
        by_day = dict(zip(days, values, strict=True))
        for day in days[-15:]:
            verdict = anomaly.detect(by_day, day, threshold=threshold, min_spread=spread)
            if verdict is not None and verdict.anomalous:
                flagged.add((index, day))
                assert (index, day) in passed, (index, day, verdict)
            elif (index, day) in passed:
                # only a day on the very edge of detect's limits is passed on besides
                assert verdict is not None and abs(verdict.score) >= threshold * (1 - 1e-6)
    assert len(passed - flagged) <= 1 + len(flagged) // 10


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
