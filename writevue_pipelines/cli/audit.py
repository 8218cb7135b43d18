"""``writevue audit list``: the staff audit trail."""

from __future__ import annotations

import json

from .app import arg, command, group
from .inputs import ready_runtime

group("audit", "the staff audit")


@command(
    "audit list",
    "who read which tenant's data, and erasures",
    arg("--tenant"),
    arg("--json", action="store_true"),
)
def list_audit(args) -> None:
    from ..privacy import list_events

    runtime = ready_runtime()
    events = list_events(runtime, args.tenant)
    if args.json:
        print(json.dumps([e.as_json() for e in events], indent=2))
        return
    for e in events:
        details = json.dumps(e.details, sort_keys=True) if e.details else ""
        tenant = e.tenant_id or "-"
        print(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.actor:<16} {e.action:<26} {tenant}  {details}")
