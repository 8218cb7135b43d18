"""``writevue tenant …``: clients, and what the privacy policy lets them ask for.

The privacy modules (and polars with them) are imported by the commands that use them,
so that `writevue tenant list` starts as fast as the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import links, registry
from .app import CliError, arg, command, group
from .inputs import ACTOR, REASON, ready_runtime, staff_access
from .progress import Progress, plural

group("tenant", "clients")


@command(
    "tenant add",
    "add a tenant; prints its id last",
    arg("name"),
    arg("--email", required=True),
    audit=False,  # shows nothing that was not typed
)
def add(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.add_tenant(session, runtime.keys, args.name, args.email)
    print(tenant_id)


@command(
    "tenant list",
    "list tenants with their names and emails (audited)",
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="tenant.list",
)
def list_tenants(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenants = registry.list_tenants(session, runtime.keys)
    # One record for the whole list: no tenant id, the count (every tenant there was).
    access.record(runtime, None, tenants=len(tenants))
    if args.json:
        rows = [
            {"id": t.id, "name": t.name, "email": t.email, "created_at": t.created_at.isoformat()}
            for t in tenants
        ]
        print(json.dumps(rows, indent=2))
        return
    for t in tenants:
        print(f"{t.id}  {t.name}  <{t.email}>")


@command(
    "tenant show",
    "a tenant's details and connections (audited)",
    arg("tenant_id"),
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="tenant.show",
)
def show(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant = registry.get_tenant(session, runtime.keys, args.tenant_id)
        connections = registry.list_connections(session, tenant_id=tenant.id)
        live_links = [
            item for item in links.list_links(session, tenant.id) if item.state() == "live"
        ]
    access.record(runtime, tenant.id)
    shown = {
        "id": tenant.id,
        "name": tenant.name,
        "email": tenant.email,
        "created_at": tenant.created_at.isoformat(),
        "live_links": len(live_links),
        "connections": [
            {
                "id": c.id,
                "source": c.source,
                "auth_kind": c.auth_kind,
                "status": c.status,
                "last_refreshed_at": c.last_refreshed_at.isoformat()
                if c.last_refreshed_at
                else None,
            }
            for c in connections
        ],
    }
    if args.json:
        print(json.dumps(shown, indent=2))
        return
    print(f"{tenant.id}  {tenant.name}  <{tenant.email}>")
    print(
        f"client since {tenant.created_at:%Y-%m-%d}; "
        f"{plural(len(live_links), 'live dashboard link')}"
    )
    for c in shown["connections"]:
        print(
            f"  {c['id']}  {c['source']:<10} {c['auth_kind']:<8} {c['status']:<8} "
            f"last refreshed {c['last_refreshed_at'] or 'never'}"
        )


@command(
    "tenant export",
    "write everything kept about a tenant to a zip (audited); no secrets",
    arg("tenant_id"),
    arg("--out", required=True, metavar="FILE.zip"),
    arg("--force", action="store_true", help="replace FILE.zip if it exists"),
    ACTOR,
    REASON,
    audit="tenant.export",
)
def export(args) -> None:
    from .. import privacy

    access = staff_access(args)
    runtime = ready_runtime()
    tenant_id = registry.parse_uuid(args.tenant_id, "Tenant")
    with Progress() as progress:
        report = privacy.export_tenant(
            runtime, tenant_id, Path(args.out), force=args.force, progress=progress
        )
    access.record(runtime, tenant_id, facts=report.facts, bytes=report.bytes)
    print(
        f"exported {plural(report.facts, 'aggregate')}, "
        f"{plural(report.connections, 'connection')} and {plural(report.links, 'link')} "
        f"({plural(report.bytes, 'byte')}); the file holds personal data",
        file=sys.stderr,
    )
    print(report.path)


@command(
    "tenant erase",
    "erase a tenant now: revoke its grants, delete every row and file, verify",
    arg("tenant_id"),
    arg("--yes", action="store_true", help="do not ask for confirmation"),
    ACTOR,
    REASON,
    audit="tenant.erase",
)
def erase(args) -> None:
    from ..privacy.erasure import check_erasable

    access = staff_access(args)
    actor = access.actor
    runtime = ready_runtime()
    tenant_id = check_erasable(runtime, args.tenant_id)
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise CliError("Erasing needs confirmation: run it in a terminal or pass --yes.")
        answer = input(
            f"Erase tenant {tenant_id}: revoke its grants and delete all its data, for "
            "good? Type 'erase' to confirm: "
        )
        if answer.strip() != "erase":
            raise CliError("Not confirmed; nothing was erased.")
    report = _erase_showing_progress(runtime, tenant_id, actor)
    # Recorded by the tenant's opaque id (kept, like the erasure record it names), with
    # the request, so the reason given is tied to this erasure.
    access.record(runtime, tenant_id, request=report.request_id)
    for line in report.lines():
        print(line)
    if not report.ok:
        raise CliError(
            "The erasure ran but is not verified: tenant data remains or could not be "
            "checked (listed above). Fix that, then run this command again to finish it."
        )
    if report.needs_action:
        print(
            f"Erased and verified; {plural(len(report.actions), 'thing needs', 'things need')} "
            "operator action "
            "(listed above).",
            file=sys.stderr,
        )


@command(
    "tenant request-erasure",
    "record a client's erasure request; the erasure sensor carries it out",
    arg("tenant_id"),
    ACTOR,
    REASON,
    audit="tenant.request-erasure",
)
def request_erasure(args) -> None:
    from .. import privacy

    access = staff_access(args)
    runtime = ready_runtime()
    request_id = privacy.request_erasure(runtime, args.tenant_id, access.actor)
    # No tenant id (it must not outlive the erasure): the request id links the two.
    access.record(runtime, None, request=request_id)
    print(
        "recorded; the erasure sensor carries it out (or run `writevue tenant erase`)",
        file=sys.stderr,
    )
    print(request_id)


@command(
    "tenant revoke-grants",
    "retry the grant revocations an erasure could not make",
    arg("request_id", help="the erasure request (its report and `writevue audit list` name it)"),
    arg(
        "--confirm-revoked",
        action="store_true",
        help="the client revoked the access at the provider: delete the kept tokens instead",
    ),
    ACTOR,
    REASON,
    # recorded: with --confirm-revoked, staff delete the kept tokens on the client's word
    audit="tenant.revoke-grants",
)
def revoke_grants(args) -> None:
    from .. import privacy

    access = staff_access(args)
    runtime = ready_runtime()
    report = privacy.retry_revocations(runtime, args.request_id, forget=args.confirm_revoked)
    access.record(
        runtime,
        None,
        request=report.request_id,
        revoked=len(report.revoked),
        confirmed_by_client=len(report.forgotten),
        still_failing=len(report.failed),
    )
    for line in report.lines():
        print(line)
    if report.failed:
        raise CliError(
            f"{plural(len(report.failed), 'revocation still fails', 'revocations still fail')}: "
            "retry later, or pass "
            "--confirm-revoked once the client has revoked the access at the provider."
        )


@command(
    "tenant set",
    "how a tenant's dashboard and messages show numbers: locale, comparison, polarity "
    "overrides, time zone, dashboard link in messages",
    arg("tenant_id"),
    arg("--locale", help="thousands and decimal separators: en, de, fr, es, it, nl, pt, sv, ch"),
    arg(
        "--comparison",
        choices=("previous", "last_year", "default"),
        help="what changes are measured against; default: the template's",
    ),
    arg(
        "--polarity",
        action="append",
        default=[],
        metavar="REF=up_good|up_bad|neutral",
        help="whether a metric going up is good news (repeatable)",
    ),
    arg("--clear-polarity", action="append", default=[], metavar="REF"),
    arg(
        "--timezone",
        metavar="ZONE",
        help="IANA time zone its scorecards are sent in (Europe/Berlin); default UTC",
    ),
    arg(
        "--link-in-messages",
        choices=("on", "off"),
        help="put a dashboard link into its scorecards and alerts (off by default: an "
        "email is forwarded more often than a URL is shared); on makes a link (audited), "
        "off revokes it",
    ),
    ACTOR,
    REASON,
    # only --link-in-messages is recorded: it creates (or ends) access to the dashboard;
    # the rest changes a look and shows no personal data or figures
    audit="tenant.link-in-messages",
    example=(
        "writevue tenant set TENANT_ID --locale de --timezone Europe/Berlin\n"
        "writevue tenant set TENANT_ID --link-in-messages on --reason TICKET-12"
    ),
)
def set_settings(args) -> None:
    from .. import tenant_settings
    from ..errors import InvalidInput

    polarity: dict[str, str] = {}
    for pair in args.polarity:
        metric, sep, value = pair.partition("=")
        if not sep or not metric.strip():
            raise InvalidInput(
                f"--polarity {pair[:80]!r} is not REF=up_good, REF=up_bad or REF=neutral."
            )
        polarity[metric.strip()] = value.strip()
    changes: dict = {}
    if args.locale is not None:
        changes["locale"] = args.locale
    if args.comparison is not None:
        changes["comparison"] = None if args.comparison == "default" else args.comparison
    if args.timezone is not None:
        changes["timezone"] = args.timezone
    access = staff_access(args) if args.link_in_messages is not None else None
    runtime = ready_runtime()
    with runtime.db.session() as session:
        settings = tenant_settings.update_settings(
            session,
            args.tenant_id,
            polarity_set=polarity,
            polarity_clear=args.clear_polarity,
            **changes,
        )
        if access is not None:
            on = args.link_in_messages == "on"
            tenant_id = registry.parse_uuid(args.tenant_id, "Tenant")
            before = tenant_settings.message_link_id(session, tenant_id)
            tenant_settings.set_message_link(session, runtime.keys, tenant_id, on)
            settings = tenant_settings.get_settings(session, tenant_id)
            link_id = tenant_settings.message_link_id(session, tenant_id) or before
            # with the access it creates, in one commit; by the link's id, never its token
            access.record_in(session, tenant_id, on=on, link_id=link_id)
    overrides = ", ".join(f"{k}={v}" for k, v in settings.polarity.items()) or "none"
    print(
        f"locale {settings.locale}; comparison {settings.comparison or 'default'}; "
        f"polarity overrides: {overrides}; time zone {settings.timezone}; "
        f"dashboard link in messages {'on' if settings.links_in_messages else 'off'}"
    )


def _erase_showing_progress(runtime, tenant_id: str, actor: str):
    """``run_erasure``, each of its steps shown as it finishes (ids and step names only)."""
    from .. import privacy
    from ..privacy.erasure import STEPS, step_hooks

    with Progress() as progress:

        def finished(step: str) -> None:
            done = STEPS.index(step) + 1 if step in STEPS else 0
            progress.update("erasing tenant", done, len(STEPS), quiet=True)
            progress.line(f"[{done}/{len(STEPS)}] erasure of {tenant_id}: {step}")

        step_hooks.append(finished)
        try:
            return privacy.run_erasure(runtime, tenant_id, actor=actor)
        finally:
            step_hooks.remove(finished)
