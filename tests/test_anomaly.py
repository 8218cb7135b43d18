"""The anomaly method: a day against the same weekday of the weeks before (median and MAD).

Pure maths, no database: every expected figure is computed here from the values given.
"""

from __future__ import annotations

import datetime as dt
import statistics

import pytest

from writevue_pipelines.notifications.anomaly import Verdict, detect

DAY = dt.date(2026, 12, 3)  # a Thursday


def weekly(values_by_weeks_back: dict[int, float | None], today_value: float | None):
    """{D-7k: value} for the given k, and D itself."""
    values = {DAY - dt.timedelta(days=7 * k): v for k, v in values_by_weeks_back.items()}
    values[DAY] = today_value
    return values


def test_a_value_far_outside_its_weekdays_history_is_anomalous():
    history = {1: 100.0, 2: 104.0, 3: 96.0, 4: 102.0, 5: 98.0, 6: 101.0, 7: 99.0, 8: 103.0}
    verdict = detect(weekly(history, 160.0), DAY)
    assert isinstance(verdict, Verdict)
    median = statistics.median(history.values())
    mad = statistics.median(abs(v - median) for v in history.values())
    spread = max(1.4826 * mad, 0.1 * abs(median))
    assert verdict.day == DAY and verdict.value == 160.0
    assert verdict.expected == pytest.approx(median)
    assert verdict.score == pytest.approx((160.0 - median) / spread)
    assert verdict.anomalous
    assert verdict.low == pytest.approx(median - 3.5 * spread)
    assert verdict.high == pytest.approx(median + 3.5 * spread)


def test_a_value_inside_its_range_is_not():
    history = {k: 100.0 + (k % 3) * 10 for k in range(1, 9)}
    verdict = detect(weekly(history, 115.0), DAY)
    assert verdict is not None and not verdict.anomalous
    assert verdict.low < 115.0 < verdict.high


def test_other_weekdays_do_not_count():
    """A shop busy on Thursdays: a high Thursday is normal even though other days are low."""
    values = {}
    for back in range(1, 57):
        day = DAY - dt.timedelta(days=back)
        values[day] = 500.0 if day.weekday() == DAY.weekday() else 20.0
    values[DAY] = 510.0
    verdict = detect(values, DAY)
    assert verdict is not None and not verdict.anomalous
    assert verdict.expected == 500.0


def test_a_flat_history_does_not_flag_a_tiny_wiggle():
    history = {k: 50.0 for k in range(1, 9)}
    assert not detect(weekly(history, 52.0), DAY).anomalous  # floor: 10% of the median
    counts = {k: 1.0 for k in range(1, 9)}
    assert not detect(weekly(counts, 3.0), DAY, min_spread=1.0).anomalous  # one unit
    assert detect(weekly(counts, 9.0), DAY, min_spread=1.0).anomalous


def test_a_drop_is_anomalous_too_with_a_negative_score():
    history = {k: 200.0 + k for k in range(1, 9)}
    verdict = detect(weekly(history, 20.0), DAY)
    assert verdict.anomalous and verdict.score < -3.5


def test_too_little_history_or_no_value_is_no_verdict():
    assert detect(weekly({1: 10.0, 2: 11.0, 3: 9.0}, 100.0), DAY) is None  # 3 < 4 points
    assert detect(weekly({1: 10.0, 2: 11.0, 3: 9.0, 4: None}, 100.0), DAY) is None
    assert detect(weekly({k: 10.0 for k in range(1, 9)}, None), DAY) is None
    assert detect({}, DAY) is None
    # four points are enough; weeks beyond N are not read
    assert detect(weekly({1: 10.0, 2: 11.0, 3: 9.0, 4: 10.0}, 100.0), DAY).anomalous
    assert detect(weekly({9: 10.0, 10: 11.0, 11: 9.0, 12: 10.0}, 100.0), DAY) is None
    assert detect(weekly({9: 10.0, 10: 11.0, 11: 9.0, 12: 10.0}, 100.0), DAY, weeks=12)


def test_the_threshold_is_the_sensitivity():
    history = {k: 100.0 + (-1) ** k * 5 for k in range(1, 9)}  # 95 and 105
    verdict = detect(weekly(history, 130.0), DAY, threshold=3.5)
    assert 2.0 < abs(verdict.score) < 3.5 and not verdict.anomalous
    assert detect(weekly(history, 130.0), DAY, threshold=2.0).anomalous


def test_a_range_never_goes_below_zero_for_values_that_cannot():
    history = {k: 3.0 + k % 2 for k in range(1, 9)}
    verdict = detect(weekly(history, 3.0), DAY, min_spread=1.0)
    assert verdict.low == 0.0
    negative = {k: -5.0 - k % 2 for k in range(1, 9)}
    assert detect(weekly(negative, -5.0), DAY).low < 0


def test_a_sparse_metric_is_no_event_each_time_it_is_not_zero():
    """Refunds: most days none, now and then a large one on any weekday. A refund no larger
    than those of the last weeks is usual; one far beyond any of them is not."""
    values = {DAY - dt.timedelta(days=back): 0.0 for back in range(1, 57)}
    for back in (3, 11, 20, 30, 45):
        values[DAY - dt.timedelta(days=back)] = 300.0
    values[DAY] = 250.0
    verdict = detect(values, DAY, min_spread=1.0)
    assert verdict.expected == 0 and abs(verdict.score) > 3.5  # far from its weekday's zeros
    assert not verdict.anomalous  # but no further than other days strayed
    values[DAY] = 5000.0
    assert detect(values, DAY, min_spread=1.0).anomalous


def test_one_spike_in_the_window_does_not_hide_a_later_drop():
    """One Black Friday in the eight weeks does not make every later event look usual."""
    start = DAY - dt.timedelta(days=7 * 8)
    values = {start + dt.timedelta(days=i): 100.0 + (i % 7) * 5 + (i % 3) for i in range(7 * 8)}
    values[DAY - dt.timedelta(days=10)] = 1000.0  # the spike
    values[DAY] = 0.0  # the drop, weeks later
    verdict = detect(values, DAY)
    assert verdict is not None and verdict.anomalous and verdict.score < -3.5


def test_the_scale_comes_from_every_day_of_the_window():
    """Four Thursdays that happen to agree do not make a normal wobble an event: the other
    days of the same weeks show how much days stray from their weekday's usual."""
    values = {}
    for back in range(1, 57):
        day = DAY - dt.timedelta(days=back)
        values[day] = 100.0 if back % 7 == 0 else 100.0 + (-1) ** back * 30
    values[DAY] = 140.0
    verdict = detect(values, DAY)
    assert verdict.expected == 100.0 and not verdict.anomalous


def test_the_cheap_screen_never_hides_an_anomalous_day():
    """``may_be_anomalous`` lets through every day ``detect`` calls anomalous (it only
    skips days within the floor spread of their weekday's median)."""
    import random

    from writevue_pipelines.notifications.anomaly import detect, may_be_anomalous

    rng = random.Random(14)
    start = dt.date(2026, 1, 1)
    flagged = screened_out = 0
    for _ in range(400):
        base = rng.choice([0.0, 1.0, 20.0, 500.0, 1e6])
        noise = rng.choice([0.0, 0.05, 0.3, 1.0])
        values = {
            start + dt.timedelta(days=i): max(0.0, base * (1 + rng.gauss(0, noise)))
            if rng.random() > 0.1
            else None
            for i in range(70)
        }
        day = start + dt.timedelta(days=69)
        if values[day] is not None and rng.random() < 0.3:
            values[day] = values[day] * rng.choice([0.0, 3.0, 10.0]) + rng.choice([0, 5])
        spread = rng.choice([0.0, 1.0])
        verdict = detect(values, day, min_spread=spread)
        screened = may_be_anomalous(values, day, min_spread=spread)
        if verdict is not None and verdict.anomalous:
            flagged += 1
            assert screened, (values[day], verdict)
        screened_out += not screened
    assert flagged > 10 and screened_out > 100  # both sides were exercised


def test_a_sparse_metrics_next_smaller_event_is_no_event():
    """Refunds: one of 500 weeks ago, none since; a refund of 40 is not unusual."""
    start = DAY - dt.timedelta(days=7 * 8)
    values = {start + dt.timedelta(days=i): 0.0 for i in range(7 * 8)}
    values[DAY - dt.timedelta(days=20)] = 500.0
    values[DAY] = 40.0
    verdict = detect(values, DAY, min_spread=1.0)
    assert verdict is not None and not verdict.anomalous
