"""``writevue audit list``: the staff audit trail."""

from __future__ import annotations

import datetime as dt
import json
import re

from .app import CliError, arg, command, group
from .inputs import ready_runtime

group("audit", "the staff audit")

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _when(value: str | None, flag: str) -> dt.datetime | None:
    """An ISO date (midnight UTC) or date and time (UTC unless it names a zone)."""
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(
            f"{flag} takes an ISO date or date and time in UTC, such as 2026-03-01 or "
            "2026-03-01T14:30; that is not one."
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


@command(
    "audit list",
    "who read which tenant's data or created access to it, why, and erasures",
    arg("--tenant", help="events of this tenant (lists of many tenants have none)"),
    arg("--actor", help="events of this member of staff (or 'client', 'oauth', ...)"),
    arg("--action", help="an action (tenant.show) or, ending in a dot, a prefix (tenant.)"),
    arg("--since", metavar="WHEN", help="from this ISO date or time, UTC (inclusive)"),
    arg("--until", metavar="WHEN", help="before this ISO time, UTC; a date: through that day"),
    arg("--json", action="store_true"),
    audit=False,  # shows ids, counts and staff's reasons: no tenant's data
)
def list_audit(args) -> None:
    from ..privacy import list_events

    since = _when(args.since, "--since")
    until = _when(args.until, "--until")
    if until is not None and args.until and _DATE.fullmatch(args.until.strip()):
        until += dt.timedelta(days=1)  # a date means the whole day
    if since is not None and until is not None and since >= until:
        raise CliError("--since must be earlier than --until.")
    runtime = ready_runtime()
    events = list_events(
        runtime,
        args.tenant,
        actor=args.actor.strip() if args.actor else None,
        action=args.action.strip() if args.action else None,
        since=since,
        until=until,
    )
    if args.json:
        print(json.dumps([e.as_json() for e in events], indent=2))
        return
    for e in events:
        details = json.dumps(e.details, sort_keys=True) if e.details else ""
        tenant = e.tenant_id or "-"
        reason = f"  reason: {e.reason}" if e.reason else ""
        print(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.actor:<16} {e.action:<26} {tenant}  {details}{reason}")
