"""``writevue goal …``: targets for a tenant's metrics, shown on its dashboard's cards."""

from __future__ import annotations

import datetime as dt
import json
import re

from .. import goals
from ..errors import InvalidInput
from ..formulas import parse_ref
from .app import CliError, arg, command, group
from .inputs import ACTOR, REASON, ready_runtime, staff_access

group("goal", "targets per metric and period, with progress on the dashboard")

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TARGET = re.compile(r"([+-]?[0-9][0-9_,]*(?:\.[0-9]*)?|[+-]?\.[0-9]+)([kKMB]?)")
_SCALE = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9}


def parse_target(text: str) -> float:
    """``50000``, ``50k``, ``1,000``, ``1.5M``, ``-200``: a number."""
    text = text.strip()
    if text.lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        raise InvalidInput("The target must be a finite number.")
    match = _TARGET.fullmatch(text)
    if match is None:
        raise InvalidInput(
            f"The target {text[:20]!r} is not a number (such as 50000, 50k, 1,000 or 1.5M)."
        )
    number, suffix = match.groups()
    return float(number.replace(",", "").replace("_", "")) * _SCALE[suffix]


def parse_date(text: str, flag: str) -> dt.date:
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{flag} {text[:20]!r} is not a date YYYY-MM-DD.") from None


def _shown(goal: goals.GoalInfo) -> str:
    what = goal.metric + (f"[{goal.dimension}]" if goal.dimension else "")
    target = goals.compact(goal.target)
    if goal.period == "by_date":
        when = f"by {goal.due_on.isoformat() if goal.due_on else '?'}"
        if goal.starts_on:
            when += f" (from {goal.starts_on.isoformat()})"
    else:
        when = f"per {goal.period}"
        if goal.starts_on:
            when += f" from {goal.starts_on.isoformat()}"
    return f"{goal.id}  {what}  {target} {when}"


@command(
    "goal set",
    "set a tenant's goal for a metric (replacing its goal for that metric); prints its id",
    arg("tenant_id"),
    arg(
        "metric",
        help="stripe.gross_volume, github.stars[acme/api], calc.<name> of its template, "
        "rest.<metric>",
    ),
    arg("target", help="a number: 50000, 50k, 1,000, 1.5M"),
    arg("--per", choices=("month", "quarter", "year"), help="reach TARGET in each period"),
    arg("--by", metavar="YYYY-MM-DD", help="reach TARGET by this day"),
    arg("--dimension", help="one dimension value (a currency, a repository)"),
    arg("--from", dest="starts_on", metavar="YYYY-MM-DD", help="count from this day"),
    audit=False,  # shows nothing that was not typed
)
def set_goal(args) -> None:
    if args.per and args.by:
        raise CliError("Give --per or --by, not both.")
    if not args.per and not args.by:
        raise CliError("Say when: give --per month|quarter|year or --by YYYY-MM-DD.")
    metric, dimension = args.metric, args.dimension
    if "[" in metric:
        ref = parse_ref(metric)
        if dimension is not None:
            raise InvalidInput("Give the dimension once: in brackets or with --dimension.")
        metric, dimension = ref.metric, ref.dimension
    target = parse_target(args.target)
    due_on = parse_date(args.by, "--by") if args.by else None
    starts_on = parse_date(args.starts_on, "--from") if args.starts_on else None
    runtime = ready_runtime()
    with runtime.db.session() as session:
        goal_id = goals.set_goal(
            session,
            args.tenant_id,
            metric,
            target,
            period=args.per or "by_date",
            dimension=dimension or "",
            starts_on=starts_on,
            due_on=due_on,
        )
    print(goal_id)


@command(
    "goal list",
    "a tenant's goals (audited: targets are the client's business figures)",
    arg("tenant_id"),
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="goal.list",
)
def list_goals(args) -> None:
    from .. import registry

    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant_id)
        items = goals.list_goals(session, tenant_id)
    access.record(runtime, tenant_id, goals=len(items))
    if args.json:
        print(json.dumps([item.as_json() for item in items], indent=2))
        return
    for item in items:
        print(_shown(item))


@command("goal remove", "remove a goal", arg("goal_id"), audit=False)
def remove(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        goal = goals.remove_goal(session, args.goal_id)
    print(f"removed goal {goal.id}")
