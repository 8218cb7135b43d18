"""Goals: a target for one of a tenant's metrics, set by the operator (table ``goals``).

A goal is either per calendar period ("month", "quarter", "year": reach ``target``
within each, such as monthly revenue 50k) or by a date ("by_date": reach ``target`` by
``due_on``, such as 1,000 stars by March; a level for a gauge, a total since
``starts_on`` for a counter). One goal per tenant, metric and dimension: setting it
again replaces it.

``progress`` is the maths the dashboard shows on a card: how far along, how far along
it should be by now (the elapsed share of the period, a straight line), and whether
that is on track. The dashboard gives it the figures (``dashboard_server/data.py``);
nothing here reads facts.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import registry
from .errors import InvalidInput, NotFound
from .formulas import valid_dimension
from .models import Goal, utcnow
from .tenant_settings import check_tenant_ref

Period = Literal["month", "quarter", "year", "by_date"]
PERIODS: tuple[str, ...] = ("month", "quarter", "year", "by_date")
#: how a per-period goal reads on a card
PERIOD_WORDS = {"month": "this month", "quarter": "this quarter", "year": "this year"}
#: the most goals one tenant may have
MAX_GOALS = 100


@dataclass(frozen=True)
class GoalInfo:
    id: str
    tenant_id: str
    #: a metric ref: "stripe.gross_volume", "calc.<name>", "rest.<metric>"
    metric: str
    #: one dimension value ("eur"), or "" for the metric's total
    dimension: str
    period: str
    target: float
    starts_on: dt.date | None
    due_on: dt.date | None

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "metric": self.metric,
            "dimension": self.dimension,
            "period": self.period,
            "target": self.target,
            "starts_on": self.starts_on.isoformat() if self.starts_on else None,
            "due_on": self.due_on.isoformat() if self.due_on else None,
        }


def _info(row: Goal) -> GoalInfo:
    return GoalInfo(
        row.id,
        row.tenant_id,
        row.metric,
        row.dimension,
        row.period,
        row.target,
        row.starts_on,
        row.due_on,
    )


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def set_goal(
    session: Session,
    tenant_id: str,
    metric: str,
    target: float,
    *,
    period: Period,
    dimension: str = "",
    starts_on: dt.date | None = None,
    due_on: dt.date | None = None,
    today: dt.date | None = None,
) -> str:
    """Set the tenant's goal for ``metric`` (and ``dimension``); its id. A goal already
    set for them is replaced, keeping its id. ``by_date`` needs ``due_on`` after today
    (UTC) and starts today unless ``starts_on`` says otherwise."""
    today = today or _utc_today()
    tenant_id = registry.require_tenant(session, tenant_id)
    if period not in PERIODS:
        raise InvalidInput(f"period: {str(period)[:20]!r} is not one of {', '.join(PERIODS)}.")
    try:
        target = float(target)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput("The target is not a number.") from None
    if not math.isfinite(target):
        raise InvalidInput("The target must be a finite number.")
    if target == 0:
        raise InvalidInput("The target must be a number, not 0.")
    dimension = dimension or ""
    if dimension and not valid_dimension(dimension):
        raise InvalidInput(
            "The dimension is 1 to 128 printable characters, without brackets or quotes."
        )
    try:
        check_tenant_ref(session, tenant_id, metric, dimension or None)
    except InvalidInput as exc:
        raise InvalidInput(f"{str(metric)[:80]}: {exc}.") from None
    if period == "by_date":
        if due_on is None:
            raise InvalidInput("A goal by_date needs a due date (--by YYYY-MM-DD).")
        if due_on <= today:
            raise InvalidInput(f"The due date {due_on} is not in the future.")
        starts_on = starts_on or today
        if starts_on >= due_on:
            raise InvalidInput(f"The goal starts after it is due ({starts_on} → {due_on}).")
    elif due_on is not None:
        raise InvalidInput("Only by_date goals have a due date; per-period goals repeat.")

    row = session.scalar(
        select(Goal).where(
            Goal.tenant_id == tenant_id, Goal.metric == metric, Goal.dimension == dimension
        )
    )
    if row is None:
        count = len(session.scalars(select(Goal.id).where(Goal.tenant_id == tenant_id)).all())
        if count >= MAX_GOALS:
            raise InvalidInput(f"A tenant has at most {MAX_GOALS} goals; remove one first.")
        row = Goal(id=str(uuid.uuid4()), tenant_id=tenant_id, metric=metric, dimension=dimension)
        session.add(row)
    row.period = period
    row.target = target
    row.starts_on = starts_on
    row.due_on = due_on
    # a new goal's pace starts now
    row.created_at = utcnow()
    session.flush()
    return row.id


def list_goals(session: Session, tenant_id: str) -> list[GoalInfo]:
    """The tenant's goals by metric and dimension."""
    rows = session.scalars(
        select(Goal).where(Goal.tenant_id == tenant_id).order_by(Goal.metric, Goal.dimension)
    )
    return [_info(row) for row in rows]


def get_goal(session: Session, goal_id: str) -> GoalInfo:
    row = session.get(Goal, registry.parse_uuid(goal_id, "Goal"))
    if row is None:
        raise NotFound(f"No goal with id {goal_id}; `writevue goal list TENANT_ID` shows them.")
    return _info(row)


def remove_goal(session: Session, goal_id: str) -> GoalInfo:
    """Remove a goal; what it was."""
    info = get_goal(session, goal_id)
    session.delete(session.get(Goal, info.id))
    session.flush()
    return info


# -- progress ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoalProgress:
    target: float
    #: the value the goal is measured on (None: no data yet)
    current: float | None
    #: how far along: current / target (from the start value for a gauge by a date)
    fraction: float | None
    #: how far along it should be today: the elapsed share of the period (1 for a ratio)
    expected_fraction: float
    #: fraction >= expected_fraction; None without data
    on_track: bool | None
    period_start: dt.date
    period_end: dt.date
    #: "62% of 50k this month · on track"
    text: str
    #: "on track", "behind", "reached", "missed", "not started" or "no data"
    status: str = "no data"


def period_bounds(period: str, today: dt.date) -> tuple[dt.date, dt.date]:
    """The calendar month, quarter or year holding ``today``: (first day, last day)."""
    if period == "month":
        last = calendar.monthrange(today.year, today.month)[1]
        return today.replace(day=1), today.replace(day=last)
    if period == "quarter":
        first_month = 3 * ((today.month - 1) // 3) + 1
        end_month = first_month + 2
        last = calendar.monthrange(today.year, end_month)[1]
        return dt.date(today.year, first_month, 1), dt.date(today.year, end_month, last)
    if period == "year":
        return dt.date(today.year, 1, 1), dt.date(today.year, 12, 31)
    raise InvalidInput(f"{period!r} is no calendar period.")


def progress(
    goal: GoalInfo,
    *,
    kind: str,
    value_to_date: float | None,
    today: dt.date,
    start_value: float | None = None,
    polarity: str = "up_good",
) -> GoalProgress:
    """Where ``goal`` stands ``today``.

    ``value_to_date``: for a counter, its total in the current calendar period (or since
    ``starts_on`` for a goal by a date); for a gauge, its latest level; for a ratio, its
    value over the period. ``start_value``: a gauge's level when the goal started, so
    that the pace runs from there to the target (else from 0).

    The expected fraction is the share of the period's days already over (today, still
    under way, does not count yet), so that on the first day any progress is on track.
    A ratio has no pace: it is on track when at its target. For an ``up_bad`` metric
    (refunds, fees) the target is a limit: on track while under the share of it that
    the days gone allow, "over the limit" past it.
    """
    target = goal.target
    if goal.period == "by_date":
        start = goal.starts_on or today
        end = goal.due_on or today
        words = f"by {end.isoformat()}"
    else:
        start, end = period_bounds(goal.period, today)
        words = PERIOD_WORDS.get(goal.period, goal.period)
    total_days = (end - start).days + (0 if goal.period == "by_date" else 1)

    if kind == "ratio":
        expected = 1.0
    elif total_days <= 0:
        expected = 1.0
    else:
        expected = min(1.0, max(0.0, (today - start).days / total_days))

    current = value_to_date
    if current is not None and not (isinstance(current, int | float) and math.isfinite(current)):
        current = None
    base = 0.0
    if kind == "gauge" and start_value is not None and math.isfinite(start_value):
        base = float(start_value)
    shown_target = compact(target)
    if goal.starts_on is not None and today < goal.starts_on:
        return GoalProgress(
            target,
            current,
            None,
            0.0,
            None,
            start,
            end,
            f"{shown_target} {words} from {goal.starts_on.isoformat()}",
            "not started",
        )
    if current is None:
        return GoalProgress(
            target,
            None,
            None,
            expected,
            None,
            start,
            end,
            f"no data yet for {shown_target} {words}",
            "no data",
        )
    span = target - base
    # The pace runs from the start (a gauge's level when the goal began) to the target.
    pace = 1.0 if span == 0 else (current - base) / span
    if not math.isfinite(pace):
        pace = None
    # What the client reads: where the figure stands against the target.
    fraction = current / target if target else None
    if fraction is not None and not math.isfinite(fraction):
        fraction = None
    if pace is None:
        on_track = None
        status = "no data"
    elif polarity == "up_bad":
        # a limit (refunds, fees): on track while under the share the days allow
        on_track = pace <= expected + 1e-12
        if pace > 1:
            status, on_track = "over the limit", False
        elif today > end:
            status = "kept"
        else:
            status = "within the limit" if on_track else "over pace"
    else:
        on_track = pace >= expected - 1e-12
        if pace >= 1:
            status = "reached"
        elif today > end:
            status, on_track = "missed", False
        else:
            status = "on track" if on_track else "behind"
    if kind == "gauge" or fraction is None:
        shown = f"{compact(float(current))} of {shown_target}"
        if fraction is not None:
            shown += f" ({_percent(fraction)}%)"
    else:
        shown = f"{_percent(fraction)}% of {shown_target}"
    return GoalProgress(
        target,
        float(current),
        fraction,
        expected,
        on_track,
        start,
        end,
        f"{shown} {words} · {status}",
        status,
    )


def _percent(fraction: float) -> int:
    if fraction <= 0:
        return 0
    if fraction < 1:
        return min(99, math.floor(fraction * 100 + 1e-9))
    return round(fraction * 100)


def compact(value: float) -> str:
    """A short form of a number for a goal's text: 50k, 1.2M, 3B, 12.5, 0.03."""
    if not math.isfinite(value):
        return str(value)
    sign = "-" if value < 0 else ""
    size = abs(value)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if size >= scale * 0.9995:
            shown = f"{size / scale:.1f}".rstrip("0").rstrip(".")
            return f"{sign}{shown}{suffix}"
    if size == int(size):
        return f"{sign}{int(size)}"
    shown = f"{size:.3g}"
    return f"{sign}{shown}"


__all__ = [
    "PERIODS",
    "GoalInfo",
    "GoalProgress",
    "compact",
    "get_goal",
    "list_goals",
    "period_bounds",
    "progress",
    "remove_goal",
    "set_goal",
]
