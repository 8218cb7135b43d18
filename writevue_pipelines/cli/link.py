"""``writevue link …``: a tenant's secret dashboard links."""

from __future__ import annotations

import json
import sys

from .. import links, registry
from .app import arg, command, group
from .inputs import ACTOR, REASON, ready_runtime, staff_access

group("link", "secret dashboard links")

SHOWN_ONCE = "This URL is shown once and works like a password; send it to the client privately."


@command(
    "link create",
    "create a link; prints the URL once, last (audited: it opens the tenant's dashboard)",
    arg("tenant_id"),
    arg("--label"),
    arg("--expires-in", type=int, metavar="DAYS"),
    ACTOR,
    REASON,
    audit="link.create",
)
def create(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        link, token = links.create_link(
            session, args.tenant_id, label=args.label, expires_in_days=args.expires_in
        )
        access.record_in(session, link.tenant_id, link_id=link.id)
    print(f"link id: {link.id}", file=sys.stderr)
    print(SHOWN_ONCE, file=sys.stderr)
    print(runtime.settings.dashboard_url(token))


@command("link revoke", "revoke a link at once", arg("link_id"), audit=False)
def revoke(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        link = links.revoke_link(session, args.link_id)
    print(f"revoked {link.id}")


@command(
    "link list",
    "list a tenant's links and when the client last used them, never their tokens (audited)",
    arg("tenant_id"),
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="link.list",
)
def list_links(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant_id)
        items = links.list_links(session, tenant_id)
    access.record(runtime, tenant_id, links=len(items))
    if args.json:
        print(json.dumps([item.as_json() for item in items], indent=2))
        return
    for item in items:
        used = f"{item.last_used_at:%Y-%m-%d %H:%M}" if item.last_used_at else "never"
        print(f"{item.id}  {item.state():<7} last used {used:<16}  {item.label or ''}")


@command(
    "link rotate",
    "give a link a new token (the old one stops working); prints the URL last (audited)",
    arg("link_id"),
    ACTOR,
    REASON,
    audit="link.rotate",
)
def rotate(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        link, token = links.rotate_link(session, args.link_id)
        access.record_in(session, link.tenant_id, link_id=link.id)
    print(f"link id: {link.id}; the old URL no longer works", file=sys.stderr)
    print(SHOWN_ONCE, file=sys.stderr)
    print(runtime.settings.dashboard_url(token))
