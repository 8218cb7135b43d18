"""Is a day's value unusual for this metric? Judged against its own history, by weekday.

The method (robust, and respecting weekly seasonality: a shop's Saturday is compared
with its Saturdays, not with its Tuesdays):

1. Take the same weekday's values over the previous ``weeks`` weeks (D-7, D-14, …,
   D-7·weeks); days without data are left out. With fewer than ``min_points`` of them
   there is no verdict: too little history to say what is usual.
2. The expected value is their **median**; the spread is **1.4826 x MAD** (the median
   absolute deviation from the median, scaled so that it estimates the standard
   deviation of normally distributed values), floored at 10% of the median and at
   ``min_spread`` (one unit for counts and money), so that a flat history does not
   make a tiny wiggle an event.
3. The score is ``(value - median) / spread``; the day is anomalous when
   ``|score| > threshold`` (3.5 by default: the usual cut-off for robust z-scores).
   The usual range shown to a client is ``median +/- threshold x spread`` (not below
   zero for a metric whose history never was).

Median and MAD ignore the odd outlier in the history itself (one Black Friday does not
make every later Friday look normal), unlike a mean and a standard deviation.
``may_be_anomalous`` (one day) and ``screen`` (every series of a run at once, in polars)
are cheap screens that say which days cannot be anomalous; ``detect`` judges the rest.
Pure: no database, no clock.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import polars as pl

#: robust z-score beyond which a value is anomalous
DEFAULT_THRESHOLD = 3.5
#: how many earlier same weekdays are read, and how many must have data
WEEKS = 8
MIN_POINTS = 4
#: MAD times this estimates a standard deviation
MAD_SCALE = 1.4826
#: the spread is at least this share of the median
RELATIVE_FLOOR = 0.1


@dataclass(frozen=True)
class Verdict:
    """One day of one metric, judged against the same weekday of the weeks before."""

    day: dt.date
    value: float
    #: the median of the same weekdays before
    expected: float
    #: the usual range: expected +/- threshold x spread
    low: float
    high: float
    #: robust z-score: (value - expected) / spread
    score: float
    anomalous: bool


def _second_largest(values: list[float]) -> float:
    """The second-largest residual, when at least two strayed at all; else the largest
    (a sparse metric with one earlier event: the next one, if smaller, is no event)."""
    strayed = sorted(v for v in values if v > 0)
    if len(strayed) < 2:
        return max(values, default=0.0)
    return strayed[-2]


def may_be_anomalous(
    values: Mapping[dt.date, float | None],
    day: dt.date,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    weeks: int = WEEKS,
    min_points: int = MIN_POINTS,
    min_spread: float = 0.0,
) -> bool:
    """A cheap screen before ``detect``: False when the day cannot be anomalous, because
    it lies within ``threshold`` times the smallest spread ``detect`` could use (its
    floors) of its weekday's median, or has no verdict at all. A day it passes may or
    may not be; ``detect`` says which."""
    value = values.get(day)
    if value is None or not math.isfinite(value):
        return False
    history = []
    for back in range(1, weeks + 1):
        earlier = values.get(day - dt.timedelta(days=7 * back))
        if earlier is not None and math.isfinite(earlier):
            history.append(earlier)
    if len(history) < max(min_points, 1):
        return False
    median = statistics.median(history)
    floor = max(RELATIVE_FLOOR * abs(median), min_spread)
    return floor <= 0 or abs(value - median) > threshold * floor


def has_verdict(
    values: Mapping[dt.date, float | None],
    day: dt.date,
    *,
    weeks: int = WEEKS,
    min_points: int = MIN_POINTS,
) -> bool:
    """Whether ``detect`` gives ``day`` a verdict at all (it has a finite value and its
    weekday at least ``min_points`` finite values in the ``weeks`` weeks before), without
    judging it."""
    value = values.get(day)
    if value is None or not math.isfinite(value):
        return False
    found = 0
    for back in range(1, weeks + 1):
        earlier = values.get(day - dt.timedelta(days=7 * back))
        if earlier is not None and math.isfinite(earlier):
            found += 1
    return found >= max(min_points, 1)


#: the screen's margin: it passes on days this close to ``detect``'s limits too, so that
#: no rounding of its own can hide a day ``detect`` flags
_SCREEN_SLACK = 1e-9


def _medians(values, axis_len: int):
    """The median of each row's finite values (NaN: none) and how many there are, over
    the last axis, as ``statistics.median`` computes it (the mean of the middle two)."""
    import numpy as np

    ordered = np.sort(values, axis=-1)  # NaN last
    count = np.sum(~np.isnan(values), axis=-1)
    low = np.clip((count - 1) // 2, 0, axis_len - 1)
    high = np.clip(count // 2, 0, axis_len - 1)
    a = np.take_along_axis(ordered, low[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(ordered, high[..., None], axis=-1)[..., 0]
    median = np.where(count % 2 == 1, a, (a + b) / 2)
    return np.where(count > 0, median, np.nan), count


def _passed(values, min_spread, window: int, weeks: int, threshold: float, min_points: int):
    """``screen``'s verdicts for a block of series: (series, judged day) -> may be unusual.
    ``values``: each series' days, the window before the first judged day, then those."""
    import numpy as np

    span = values.shape[1]
    at = np.arange(window, span)  # the judged days' columns
    back = np.arange(1, window + 1)
    history = values[:, at[:, None] - back[None, :]]  # (series, judged, offset k - 1)
    today = values[:, at]
    # by weekday: offset k in group k % 7 (0: the same weekday), ``weeks`` values each
    groups = np.stack([history[..., 6::7]] + [history[..., g - 1 :: 7] for g in range(1, 7)], -2)
    group_median, group_count = _medians(groups, weeks)
    residuals = np.abs(groups - group_median[..., None]).reshape(*history.shape[:2], -1)
    mad, _ = _medians(residuals, window)
    median, count = group_median[..., 0], group_count[..., 0]
    with np.errstate(invalid="ignore"):
        floor = np.maximum(RELATIVE_FLOOR * np.abs(median), min_spread[:, None])
        spread = np.maximum(MAD_SCALE * mad, floor)
        spread = np.where(spread <= 0, 1e-9, spread)
        distance = np.abs(today - median)
        # the second-largest residual of those that strayed at all, else the largest
        strayed = np.where(residuals > 0, residuals, np.nan)
        n_strayed = np.sum(~np.isnan(strayed), axis=-1)
        ordered = np.sort(strayed, axis=-1)  # NaN last
        second = np.take_along_axis(ordered, np.clip(n_strayed - 2, 0, None)[..., None], -1)
        largest = np.max(np.where(np.isnan(residuals), 0.0, residuals), axis=-1)
        beyond = np.where(n_strayed >= 2, second[..., 0], largest)
        keep = 1 - _SCREEN_SLACK
        return (
            np.isfinite(today)
            & (count >= max(min_points, 1))
            & (distance >= threshold * spread * keep)
            & (distance >= beyond * keep)
        )


def screen(
    frame: pl.DataFrame,
    first: dt.date,
    last: dt.date,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    weeks: int = WEEKS,
    min_points: int = MIN_POINTS,
) -> pl.DataFrame:
    """``detect`` for many series at once, as a screen: the (series, day) pairs from
    ``first`` to ``last`` that may be anomalous, for ``detect`` to judge; every other day
    of every series is not (a property test holds it to ``detect``).

    The same method in numpy over every series and day together (the weekday medians,
    the residuals' MAD, the floors, the second-largest stray), passing on a day that
    comes within a hair (``_SCREEN_SLACK``) of ``detect``'s limits, too.

    ``frame``: ``series`` (any key), ``day``, ``value`` (null: no data) and
    ``min_spread``, at most one row per series and day; a day without a row has no data.
    """
    import numpy as np

    if frame.height == 0 or last < first:
        return frame.select("series", "day").clear()
    start = frame["day"].min()
    found = frame.with_columns(
        (pl.col("series").rank("dense") - 1).cast(pl.Int64).alias("_row"),
        (pl.col("day") - pl.lit(start)).dt.total_days().cast(pl.Int64).alias("_at"),
    )
    keys = found.group_by("_row").agg(pl.col("series").first(), pl.col("min_spread").first())
    keys = keys.sort("_row")
    values = np.full((keys.height, (frame["day"].max() - start).days + 1), np.nan)
    values[found["_row"].to_numpy(), found["_at"].to_numpy()] = (
        found["value"].fill_null(np.nan).to_numpy()
    )
    rows, days = screen_array(
        values,
        start,
        keys["min_spread"].to_numpy(),
        first,
        last,
        threshold=threshold,
        weeks=weeks,
        min_points=min_points,
    )
    return pl.DataFrame(
        {"series": keys["series"].gather(rows), "day": days},
        schema={"series": frame.schema["series"], "day": pl.Date},
    )


def screen_array(
    values,
    start: dt.date,
    min_spread,
    first: dt.date,
    last: dt.date,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    weeks: int = WEEKS,
    min_points: int = MIN_POINTS,
) -> tuple[list[int], list[dt.date]]:
    """``screen`` over a numpy array: ``values[series, day]`` from ``start`` on (NaN: no
    data), ``min_spread[series]``; the (series row, day) pairs passed on."""
    import numpy as np

    window = 7 * weeks
    # the columns from the window before ``first`` to ``last`` (before ``start``: no data)
    lead = (first - start).days - window
    if lead < 0:
        values = np.concatenate([np.full((values.shape[0], -lead), np.nan), values], axis=1)
        lead = 0
    span = window + (last - first).days + 1
    block = values[:, lead : lead + span]
    if block.shape[1] < span:
        pad = np.full((values.shape[0], span - block.shape[1]), np.nan)
        block = np.concatenate([block, pad], axis=1)
    block = np.where(np.isfinite(block), block, np.nan)
    min_spread = np.asarray(min_spread, dtype=np.float64)
    # the whole method only for the series with a day that may stray: one beyond the
    # smallest spread the method could use (its floors) of its weekday's median
    candidates = np.flatnonzero(
        _beyond_floor(block, min_spread, window, weeks, threshold, min_points).any(axis=1)
    )
    passed = np.zeros((block.shape[0], span - window), dtype=bool)
    for at in range(0, len(candidates), 2000):
        rows = candidates[at : at + 2000]
        passed[rows] = _passed(block[rows], min_spread[rows], window, weeks, threshold, min_points)
    rows, days = np.nonzero(passed)
    return rows.tolist(), [first + dt.timedelta(days=int(d)) for d in days]


def _beyond_floor(values, min_spread, window: int, weeks: int, threshold: float, min_points: int):
    """What ``_passed`` passes on, and more, for a fraction of its cost (the weekday's own
    median only): (series, judged day) -> a finite value with enough history, at least
    ``threshold`` times the spread's floors from the median (the spread is never less)."""
    import numpy as np

    span = values.shape[1]
    at = np.arange(window, span)  # the judged days' columns
    same = values[:, at[:, None] - 7 * np.arange(1, weeks + 1)[None, :]]  # (series, days, weeks)
    median, count = _medians(same, weeks)
    today = values[:, at]
    with np.errstate(invalid="ignore"):
        # (a floor of 0 passes every such day on: the method's spread may then be tiny)
        floor = np.maximum(RELATIVE_FLOOR * np.abs(median), min_spread[:, None])
        return (
            np.isfinite(today)
            & (count >= max(min_points, 1))
            & (np.abs(today - median) >= threshold * floor * (1 - _SCREEN_SLACK))
        )


def detect(
    values: Mapping[dt.date, float | None],
    day: dt.date,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    weeks: int = WEEKS,
    min_points: int = MIN_POINTS,
    min_spread: float = 0.0,
) -> Verdict | None:
    """The verdict on ``values[day]``; None when the day has no value or its weekday has
    fewer than ``min_points`` values in the ``weeks`` weeks before."""
    value = values.get(day)
    if value is None or not math.isfinite(value):
        return None
    # every earlier day of the window, by weekday (offset 1 is the day before, 7 a week)
    by_weekday: dict[int, list[float]] = {}
    for back in range(1, 7 * weeks + 1):
        earlier = values.get(day - dt.timedelta(days=back))
        if earlier is not None and math.isfinite(earlier):
            by_weekday.setdefault(back % 7, []).append(float(earlier))
    history = by_weekday.get(0, [])
    if len(history) < max(min_points, 1):
        return None
    median = statistics.median(history)
    # How far days stray from their own weekday's median, over the whole window: the
    # scale from up to 7 x weeks residuals rather than the weekday's few values alone.
    residuals = [abs(v - statistics.median(same)) for same in by_weekday.values() for v in same]
    mad = statistics.median(residuals)
    spread = max(MAD_SCALE * mad, RELATIVE_FLOOR * abs(median), min_spread)
    if spread <= 0:
        # a history of zeros and no floor: anything else is a change of kind
        spread = 1e-9
    score = (value - median) / spread
    low, high = median - threshold * spread, median + threshold * spread
    if min(history) >= 0 and value >= 0:
        low = max(low, 0.0)
    # And further from its usual than all but one day of the window strayed from its own
    # weekday's: a sparse metric (refunds: mostly none, now and then a large one) is not
    # an event each time it is not zero, and one spike in the window (a Black Friday)
    # does not hide every later event for eight weeks, as the largest stray alone would.
    unseen = abs(value - median) > _second_largest(residuals)
    return Verdict(
        day=day,
        value=float(value),
        expected=median,
        low=low,
        high=high,
        score=score,
        anomalous=abs(score) > threshold and unseen,
    )


__all__ = [
    "DEFAULT_THRESHOLD",
    "MIN_POINTS",
    "WEEKS",
    "Verdict",
    "detect",
    "has_verdict",
    "may_be_anomalous",
    "screen",
    "screen_array",
]
