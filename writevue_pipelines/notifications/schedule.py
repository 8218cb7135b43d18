"""When scorecards go out and which days they cover, in the tenant's time zone.

A period is whole days only and ends at most yesterday (today is still under way): a
scorecard sent on Monday morning with "week to date" covers the whole last week, one
sent on the 1st with "month to date" the whole last month.

A cadence is a local time ("08:00") every day, every week on a weekday, or every month
on a day (1 to 28, so that every month has it). Local times follow the zone's daylight
saving rules (``zoneinfo``): a time that does not exist that day (02:30 when the clocks
jump from 02:00 to 03:00) is sent at the next valid minute (03:00), and a time that
happens twice (when the clocks go back) is sent once, at the first.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import InvalidInput

PERIODS: tuple[str, ...] = (
    "yesterday",
    "last_7_days",
    "last_30_days",
    "week_to_date",
    "month_to_date",
    "last_week",
    "last_month",
)
COMPARISONS: tuple[str, ...] = ("previous", "last_year", "goal")
CADENCES: tuple[str, ...] = ("daily", "weekly", "monthly")
#: how a period reads in a listing or a message
PERIOD_WORDS = {
    "yesterday": "yesterday",
    "last_7_days": "the last 7 days",
    "last_30_days": "the last 30 days",
    "week_to_date": "this week so far",
    "month_to_date": "this month so far",
    "last_week": "last week",
    "last_month": "last month",
}
#: the periods each cadence may report: a period longer than the time between two sends
#: would send the same figures again (daily with last_week: one week, seven times)
CADENCE_PERIODS: dict[str, tuple[str, ...]] = {
    "daily": ("yesterday", "last_7_days", "last_30_days", "week_to_date", "month_to_date"),
    "weekly": ("last_7_days", "last_30_days", "week_to_date", "month_to_date", "last_week"),
    "monthly": ("last_30_days", "month_to_date", "last_month"),
}
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: the last day of the month a monthly scorecard may name (every month has it)
MAX_DAY_OF_MONTH = 28

_FULL_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SEND_AT = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+){0,2}")
#: how far ahead a schedule is searched: every cadence has a send time within it
_HORIZON_DAYS = 62


# -- time zones ----------------------------------------------------------------------------


def check_timezone(name: object) -> str:
    """``name`` if it is an IANA time zone ("Europe/Berlin", "UTC"); else one clear message."""
    if isinstance(name, str) and len(name) <= 64 and _ZONE_NAME.fullmatch(name):
        try:
            _zone(name)
            return name
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    shown = str(name)[:40].encode("unicode_escape").decode()
    raise InvalidInput(
        f'"{shown}" is not an IANA time zone such as Europe/Berlin, America/New_York or UTC.'
    )


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` of a checked time zone name."""
    return _zone(check_timezone(name))


def local_today(timezone: str, at: dt.datetime) -> dt.date:
    """The date it is in ``timezone`` at the instant ``at`` (an aware datetime)."""
    _require_aware(at)
    return at.astimezone(zone(timezone)).date()


def _require_aware(value: dt.datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")


# -- periods -------------------------------------------------------------------------------


def check_period(period: object) -> str:
    if period not in PERIODS:
        raise InvalidInput(f'period "{str(period)[:30]}" is not one of {", ".join(PERIODS)}.')
    return period  # type: ignore[return-value]


def period_window(period: str, local_today: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last day of ``period`` as seen on ``local_today``: whole days, the
    last at most yesterday."""
    check_period(period)
    yesterday = local_today - dt.timedelta(days=1)
    if period == "yesterday":
        return yesterday, yesterday
    if period == "last_7_days":
        return yesterday - dt.timedelta(days=6), yesterday
    if period == "last_30_days":
        return yesterday - dt.timedelta(days=29), yesterday
    if period == "week_to_date":
        # the week of the last whole day: on a Monday, the whole week before
        return yesterday - dt.timedelta(days=yesterday.weekday()), yesterday
    if period == "month_to_date":
        return yesterday.replace(day=1), yesterday
    if period == "last_week":
        monday = local_today - dt.timedelta(days=local_today.weekday())
        return monday - dt.timedelta(days=7), monday - dt.timedelta(days=1)
    # last_month
    last = local_today.replace(day=1) - dt.timedelta(days=1)
    return last.replace(day=1), last


def _day(value: dt.date, *, year: bool) -> str:
    text = f"{_DAY_NAMES[value.weekday()]} {value.day} {_MONTH_NAMES[value.month - 1]}"
    return f"{text} {value.year}" if year else text


def period_label(start: dt.date, end: dt.date) -> str:
    """ "Thu 3 Dec 2026"; "Mon 23 Nov to Sun 29 Nov 2026"; the year on both ends when
    the period spans two."""
    if start == end:
        return _day(start, year=True)
    return f"{_day(start, year=start.year != end.year)} to {_day(end, year=True)}"


# -- cadences ------------------------------------------------------------------------------


def parse_send_at(send_at: object) -> tuple[int, int]:
    """(hour, minute) of "HH:MM" (24-hour; "8:05" is read as 08:05)."""
    match = _SEND_AT.fullmatch(send_at) if isinstance(send_at, str) else None
    if match is None:
        raise InvalidInput(
            f'The send time "{str(send_at)[:20]}" is not a 24-hour time HH:MM such as 08:00.'
        )
    return int(match.group(1)), int(match.group(2))


def check_period_fits(cadence: str, period: str) -> None:
    """Refuse a period that would repeat the same figures at this cadence, in one line
    naming the periods that fit (both already checked on their own)."""
    fits = CADENCE_PERIODS.get(cadence, PERIODS)
    if period not in fits:
        shown = ", ".join(p for p in PERIODS if p in fits)
        raise InvalidInput(
            f"--every {cadence} repeats the same figures with --period {period}: "
            f"{cadence} fits {shown}."
        )


def normal_send_at(send_at: str) -> str:
    hour, minute = parse_send_at(send_at)
    return f"{hour:02d}:{minute:02d}"


def check_cadence(
    cadence: object, weekday: int | None, day_of_month: int | None
) -> tuple[str, int | None, int | None]:
    """(cadence, weekday, day of month) checked: a weekly cadence has a weekday (0 Monday
    … 6 Sunday), a monthly one a day 1 … 28, a daily one neither."""
    if cadence not in CADENCES:
        raise InvalidInput(f'cadence "{str(cadence)[:20]}" is not one of {", ".join(CADENCES)}.')
    if cadence == "weekly":
        if day_of_month is not None:
            raise InvalidInput("A weekly scorecard is sent on a weekday (--on), not a day.")
        if not isinstance(weekday, int) or isinstance(weekday, bool) or not 0 <= weekday <= 6:
            raise InvalidInput("A weekly scorecard needs a weekday: mon, tue, … sun.")
    elif cadence == "monthly":
        if weekday is not None:
            raise InvalidInput("A monthly scorecard is sent on a day (--day), not a weekday.")
        if (
            not isinstance(day_of_month, int)
            or isinstance(day_of_month, bool)
            or not 1 <= day_of_month <= MAX_DAY_OF_MONTH
        ):
            raise InvalidInput(
                f"A monthly scorecard's day is 1 to {MAX_DAY_OF_MONTH} (every month has it)."
            )
    elif weekday is not None or day_of_month is not None:
        raise InvalidInput("A daily scorecard has no weekday or day of the month.")
    return cadence, weekday, day_of_month  # type: ignore[return-value]


def _matches(cadence: str, day: dt.date, weekday: int | None, day_of_month: int | None) -> bool:
    if cadence == "weekly":
        return day.weekday() == weekday
    if cadence == "monthly":
        return day.day == day_of_month
    return True


def local_instant(day: dt.date, hour: int, minute: int, tz: ZoneInfo) -> dt.datetime:
    """The UTC instant of the wall time ``day hour:minute`` in ``tz``: the first of two
    when the clocks go back; the next valid minute when it does not exist that day."""
    wall = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz)
    instant = wall.astimezone(dt.UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return instant
    # In a gap: the wall time is read with the offset before the jump, so it lands past
    # the jump's instant; the first valid minute is that instant, where the gap ends.
    # Step back a minute at a time while the wall time still lies in the gap.
    probe = instant
    for _ in range(48 * 60):
        earlier = probe - dt.timedelta(minutes=1)
        if earlier.astimezone(tz).replace(tzinfo=None) < wall.replace(tzinfo=None):
            return probe
        probe = earlier
    return instant


def next_due(
    cadence: str,
    *,
    weekday: int | None,
    day_of_month: int | None,
    send_at: str,
    timezone: str,
    after: dt.datetime,
) -> dt.datetime:
    """The first send time strictly after ``after``, as an aware UTC datetime."""
    _require_aware(after)
    check_cadence(cadence, weekday, day_of_month)
    hour, minute = parse_send_at(send_at)
    tz = zone(timezone)
    after = after.astimezone(dt.UTC)
    day = after.astimezone(tz).date() - dt.timedelta(days=1)
    for _ in range(_HORIZON_DAYS):
        if _matches(cadence, day, weekday, day_of_month):
            instant = local_instant(day, hour, minute, tz)
            if instant > after:
                return instant
        day += dt.timedelta(days=1)
    raise AssertionError("every cadence has a send time within two months")  # pragma: no cover


def cadence_text(
    cadence: str, weekday: int | None, day_of_month: int | None, send_at: str, timezone: str
) -> str:
    """ "every Monday at 08:00 Europe/Berlin", "daily at 07:30 UTC", "monthly on day 1 …"."""
    if cadence == "weekly" and weekday is not None:
        when = f"every {_FULL_DAY_NAMES[weekday]}"
    elif cadence == "monthly":
        when = f"monthly on day {day_of_month}"
    else:
        when = "daily"
    return f"{when} at {send_at} {timezone}"


__all__ = [
    "CADENCES",
    "CADENCE_PERIODS",
    "COMPARISONS",
    "PERIODS",
    "WEEKDAYS",
    "cadence_text",
    "check_cadence",
    "check_period",
    "check_period_fits",
    "check_timezone",
    "local_today",
    "next_due",
    "period_label",
    "period_window",
    "zone",
]
