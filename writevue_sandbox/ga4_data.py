"""Deterministic GA4 daily traffic for sandbox properties.

Each account owns a few numeric property ids; every (property, day) pair seeds its own
generator, so a day's numbers are the same whenever they are asked for. Some days have
no traffic at all, which GA4 leaves out of a report unless ``keepEmptyRows`` is set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from functools import lru_cache

HISTORY_DAYS = 730
#: metric names the sandbox knows, and their GA4 types
METRIC_TYPES = {
    "sessions": "TYPE_INTEGER",
    "activeUsers": "TYPE_INTEGER",
    "screenPageViews": "TYPE_INTEGER",
    "conversions": "TYPE_INTEGER",
    "keyEvents": "TYPE_INTEGER",
    "engagementRate": "TYPE_FLOAT",
}
DIMENSIONS = ("date",)


def properties_for(account: str) -> tuple[str, ...]:
    """The property ids an account can read (nine-digit, like real ones)."""
    seed = int(hashlib.sha256(f"ga4:{account}".encode()).hexdigest()[:12], 16)
    return tuple(str(100_000_000 + (seed * (n + 7)) % 900_000_000) for n in range(3))


@lru_cache(maxsize=8192)
def day_metrics(property_id: str, day: dt.date) -> dict[str, float]:
    """The day's metrics; all zero on a quiet day."""
    rng = random.Random(f"ga4:{property_id}:{day.isoformat()}")
    if rng.random() < 0.08:
        return dict.fromkeys(METRIC_TYPES, 0)
    sessions = rng.randint(20, 3_000)
    users = rng.randint(max(1, sessions // 2), sessions)
    key_events = rng.randint(0, max(1, sessions // 25))
    return {
        "sessions": sessions,
        "activeUsers": users,
        "screenPageViews": sessions + rng.randint(0, sessions * 3),
        # The same number under its old and new name: GA4 renamed it in 2024.
        "conversions": key_events,
        "keyEvents": key_events,
        "engagementRate": round(rng.uniform(0.3, 0.8), 6),
    }


def report_days(property_id: str, start: dt.date, end: dt.date, *, keep_empty: bool) -> list:
    """(day, metrics) in date order for the range, as a date-dimension report lists them."""
    today = dt.datetime.now(dt.UTC).date()
    start = max(start, today - dt.timedelta(days=HISTORY_DAYS))
    end = min(end, today)
    days = []
    day = start
    while day <= end:
        metrics = day_metrics(property_id, day)
        if keep_empty or any(metrics.values()):
            days.append((day, metrics))
        day += dt.timedelta(days=1)
    return days


def parse_date(value: str, today: dt.date) -> dt.date | None:
    """A GA4 date range bound: YYYY-MM-DD, ``today``, ``yesterday`` or ``NdaysAgo``."""
    if value == "today":
        return today
    if value == "yesterday":
        return today - dt.timedelta(days=1)
    if value.endswith("daysAgo") and value[: -len("daysAgo")].isdigit():
        return today - dt.timedelta(days=int(value[: -len("daysAgo")]))
    try:
        return dt.date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None
