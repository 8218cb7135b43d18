"""The `writevue` command for operators.

Secrets are never taken as arguments (they would show in `ps` and shell
history): they come from a named environment variable or standard input.
Every error a user can cause ends in one line on stderr and a non-zero exit,
with nothing half-written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import re
import sys
from collections.abc import Sequence

from . import links, registry
from .errors import InvalidInput, WriteVueError
from .runtime import Runtime
from .settings import ConfigError, get_settings
from .vault import VaultError


class CliError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not a usage dump
        if message.startswith("unrecognized arguments"):
            # Never echo them: someone may have typed a secret where a flag was expected.
            message = "unrecognized arguments (not repeated here, in case one was a secret)"
        raise CliError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="writevue", description="WriteVue operator commands.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    commands.add_parser(
        "init", help="create WRITEVUE_HOME, the key ring and the schema (idempotent)"
    )

    tenant = commands.add_parser("tenant", help="clients").add_subparsers(
        dest="tenant_command", required=True, parser_class=_Parser
    )
    add = tenant.add_parser("add", help="add a tenant; prints its id last")
    add.add_argument("name")
    add.add_argument("--email", required=True)
    listing = tenant.add_parser("list", help="list tenants")
    listing.add_argument("--json", action="store_true")
    actor_help = "who is running this, for the staff audit (default: the OS user)"
    tshow = tenant.add_parser("show", help="a tenant's details and connections (audited)")
    tshow.add_argument("tenant_id")
    tshow.add_argument("--json", action="store_true")
    tshow.add_argument("--actor", help=actor_help)
    texport = tenant.add_parser(
        "export", help="write everything kept about a tenant to a zip (audited); no secrets"
    )
    texport.add_argument("tenant_id")
    texport.add_argument("--out", required=True, metavar="FILE.zip")
    texport.add_argument("--force", action="store_true", help="replace FILE.zip if it exists")
    texport.add_argument("--actor", help=actor_help)
    terase = tenant.add_parser(
        "erase",
        help="erase a tenant now: revoke its grants, delete every row and file, verify",
    )
    terase.add_argument("tenant_id")
    terase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    terase.add_argument("--actor", help=actor_help)
    trequest = tenant.add_parser(
        "request-erasure",
        help="record a client's erasure request; the erasure sensor carries it out",
    )
    trequest.add_argument("tenant_id")
    trequest.add_argument("--actor", help=actor_help)

    keys = commands.add_parser("keys", help="the encryption key ring").add_subparsers(
        dest="keys_command", required=True, parser_class=_Parser
    )
    krotate = keys.add_parser(
        "rotate",
        help="add a key and re-encrypt every secret under it; rerun to resume an interrupted one",
    )
    krotate.add_argument("--batch", type=int, default=1000, metavar="ROWS")
    kretire = keys.add_parser("retire", help="remove an old key once no secret uses it")
    kretire.add_argument("version", type=int)

    audit = commands.add_parser("audit", help="the staff audit").add_subparsers(
        dest="audit_command", required=True, parser_class=_Parser
    )
    alist = audit.add_parser("list", help="who read which tenant's data, and erasures")
    alist.add_argument("--tenant")
    alist.add_argument("--json", action="store_true")

    connection = commands.add_parser("connection", help="data sources of a tenant").add_subparsers(
        dest="connection_command", required=True, parser_class=_Parser
    )
    cadd = connection.add_parser(
        "add",
        help="connect a source with an API key (from --api-key-env or stdin) or, where the "
        "source offers nothing better, a username and password",
        # no abbreviations: `--password x` must not be taken for `--password-env x`
        allow_abbrev=False,
    )
    cadd.add_argument("tenant_id")
    cadd.add_argument("source")
    cadd.add_argument("--auth", choices=("api_key", "basic"), default="api_key")
    cadd.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the key")
    cadd.add_argument("--username", help="basic auth: the account name (not a secret)")
    cadd.add_argument(
        "--password-env", metavar="VAR", help="basic auth: environment variable holding it"
    )
    cadd.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    cauth = connection.add_parser(
        "authorize", help="start connecting an OAuth2 source; prints the URL to open last"
    )
    cauth.add_argument("tenant_id")
    cauth.add_argument("source")
    cauth.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    cauth.add_argument("--redirect-uri", metavar="URI", help="defaults to the connect callback")
    cauth.add_argument("--reconnect", metavar="CONNECTION_ID", help="renew this connection")
    connection.add_parser(
        "complete",
        help="finish an OAuth2 authorisation: the callback URL comes on stdin; "
        "prints the connection id last",
    )
    ctest = connection.add_parser(
        "test",
        help="read a connection's last day from its source to prove it works; keeps nothing "
        "(audited)",
    )
    ctest.add_argument("connection_id")
    ctest.add_argument("--actor", help="who is running this, for the staff audit")
    clist = connection.add_parser("list", help="list connections")
    clist.add_argument("--tenant")
    clist.add_argument("--json", action="store_true")

    link = commands.add_parser("link", help="secret dashboard links").add_subparsers(
        dest="link_command", required=True, parser_class=_Parser
    )
    lcreate = link.add_parser("create", help="create a link; prints the URL once, last")
    lcreate.add_argument("tenant_id")
    lcreate.add_argument("--label")
    lcreate.add_argument("--expires-in", type=int, metavar="DAYS")
    lrevoke = link.add_parser("revoke", help="revoke a link at once")
    lrevoke.add_argument("link_id")
    llist = link.add_parser("list", help="list a tenant's links (never their tokens)")
    llist.add_argument("tenant_id")
    llist.add_argument("--json", action="store_true")
    lrotate = link.add_parser(
        "rotate", help="give a link a new token (the old one stops working); prints the URL last"
    )
    lrotate.add_argument("link_id")
    cinvite = connection.add_parser(
        "invite",
        help="a one-time, expiring link at which the client connects its sources; prints it last",
    )
    cinvite.add_argument("tenant_id")
    cinvite.add_argument(
        "--source", action="append", default=[], help="offer only this source (repeatable)"
    )
    cinvite.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="SOURCE.KEY=VALUE",
        help="an option a source is connected with, such as stripe.base_url=URL",
    )
    cinvite.add_argument("--expires-in", type=int, default=7, metavar="DAYS")

    refresh = commands.add_parser("refresh", help="materialise now, in process")
    refresh.add_argument("--tenant")
    refresh.add_argument("--actor", help="with --tenant: who, for the staff audit")

    serve = commands.add_parser("serve", help="run the dashboard server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5006)

    sandbox = commands.add_parser("sandbox", help="run the sandbox provider")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)

    demo = commands.add_parser("demo", help="run the whole product locally with the sandbox")
    demo.add_argument("--check", action="store_true", help="run headless, verify, stop, exit 0")
    demo.add_argument("--ui-port", type=int)
    demo.add_argument("--dashboard-port", type=int)
    demo.add_argument("--sandbox-port", type=int)
    return parser


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"--option {pair!r} is not KEY=VALUE.")
        if key in options:
            raise InvalidInput(f"--option {key} is given twice.")
        options[key] = value.strip()
    return options


def _from_env(env_var: str) -> str:
    # A value that is no variable name may be a secret typed in the wrong place: not echoed.
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_var):
        raise InvalidInput("That is not an environment variable name; give the variable's name.")
    value = os.environ.get(env_var)
    if value is None:
        raise InvalidInput(f"Environment variable {env_var} is not set.")
    return value


def _read_api_key(env_var: str | None) -> str:
    if env_var:
        value = _from_env(env_var)
    elif sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass("API key (input hidden): ")
    else:
        value = sys.stdin.read() if sys.stdin is not None else ""
    value = value.strip()
    if not value:
        raise InvalidInput(
            "The API key is empty; pass it on stdin or name a variable with --api-key-env."
        )
    if any(ch.isspace() for ch in value):
        raise InvalidInput("The API key contains whitespace; give exactly one key.")
    return value


def _read_secret(env_var: str | None, what: str, flag: str) -> str:
    if env_var:
        value = _from_env(env_var)
    elif sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"{what} (input hidden): ")
    else:
        value = sys.stdin.readline() if sys.stdin is not None else ""
    value = value.rstrip("\r\n")
    if not value.strip():
        raise InvalidInput(f"The {what} is empty; pass it on stdin or name a variable with {flag}.")
    return value


def _read_stdin(what: str) -> str:
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"{what} (input hidden): ")
    return sys.stdin.read() if sys.stdin is not None else ""


BASIC_AUTH_ADVICE = (
    "note: WriteVue only reads; give it a dedicated read-only account, not an administrator's."
)


def _ready_runtime() -> Runtime:
    runtime = Runtime.from_env()
    settings = runtime.settings
    if not settings.key_file.exists():
        raise CliError(
            f"WriteVue is not initialised in {settings.home}; run `writevue init` first."
        )
    from .database import current_revision

    if current_revision(settings.database_url) is None:
        raise CliError("The warehouse has no schema yet; run `writevue init` first.")
    return runtime


def cmd_init(_args) -> None:
    from .home import init_home

    report = init_home(get_settings())
    print(f"WriteVue home: {report.home}")
    print("key ring: created" if report.key_file_created else "key ring: kept")
    print("schema: at the newest migration")


def cmd_tenant(args) -> None:
    if args.tenant_command in TENANT_PRIVACY_COMMANDS:
        return cmd_tenant_privacy(args)
    runtime = _ready_runtime()
    if args.tenant_command == "add":
        with runtime.db.session() as session:
            tenant_id = registry.add_tenant(session, runtime.keys, args.name, args.email)
        print(tenant_id)
    elif args.tenant_command == "list":
        with runtime.db.session() as session:
            tenants = registry.list_tenants(session, runtime.keys)
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "id": t.id,
                            "name": t.name,
                            "email": t.email,
                            "created_at": t.created_at.isoformat(),
                        }
                        for t in tenants
                    ],
                    indent=2,
                )
            )
        else:
            for t in tenants:
                print(f"{t.id}  {t.name}  <{t.email}>")


def cmd_connection(args) -> None:
    from .sources import get_source

    if args.connection_command == "invite":
        return cmd_connection_invite(args)
    runtime = _ready_runtime()
    if args.connection_command == "add":
        source = get_source(args.source)
        if args.auth not in source.auth_kinds:
            offered = ", ".join(source.auth_kinds)
            hint = (
                "; connect it with `writevue connection authorize`"
                if "oauth2" in source.auth_kinds
                else ""
            )
            raise InvalidInput(f"Source {source.name!r} takes {offered}, not {args.auth}{hint}.")
        if args.auth == "basic":
            if args.api_key_env:
                raise InvalidInput("--api-key-env is for --auth api_key; use --password-env.")
            if not (args.username or "").strip():
                raise InvalidInput("--auth basic needs --username NAME.")
        elif args.username or args.password_env:
            raise InvalidInput("--username and --password-env are for --auth basic.")
        options = source.validate_options(_parse_options(args.option))
        with runtime.db.session() as session:
            registry.require_tenant(session, args.tenant_id)
        if args.auth == "basic":
            secrets = {
                "username": args.username.strip(),
                "password": _read_secret(args.password_env, "password", "--password-env"),
            }
        else:
            secrets = {"api_key": _read_api_key(args.api_key_env)}
        with runtime.db.session() as session:
            connection_id = registry.add_connection(
                session,
                runtime.keys,
                args.tenant_id,
                source.name,
                args.auth,
                options,
                secrets,
            )
        if args.auth == "basic":
            print(BASIC_AUTH_ADVICE, file=sys.stderr)
        elif source.name == "stripe" and secrets["api_key"].startswith("sk_"):
            print(
                "note: a restricted key (rk_...) with read-only permissions is the safer choice.",
                file=sys.stderr,
            )
        print(connection_id)
    elif args.connection_command == "authorize":
        from .oauth import begin_authorization

        redirect_uri = args.redirect_uri or f"{runtime.settings.dashboard_base_url}/oauth/callback"
        url = begin_authorization(
            runtime,
            args.tenant_id,
            args.source,
            _parse_options(args.option),
            redirect_uri,
            reconnect=args.reconnect,
        )
        print(
            "Open this URL (or send it to the client) to authorise read-only access; it works "
            "once, for 10 minutes. Then pipe the URL the browser lands on into "
            "`writevue connection complete`.",
            file=sys.stderr,
        )
        print(url)
    elif args.connection_command == "complete":
        from .oauth import complete_authorization, parse_callback

        state, code = parse_callback(_read_stdin("callback URL"))
        print(complete_authorization(runtime, state, code))
    elif args.connection_command == "test":
        from .privacy import operator_name, record_access
        from .refresh import check_connection

        with runtime.db.session() as session:
            connection = registry.get_connection(session, args.connection_id)
        # Reading a tenant's source is reading its data: audited before it happens.
        record_access(
            runtime,
            operator_name(args.actor),
            "connection.test",
            connection.tenant_id,
            connection_id=connection.id,
        )
        result = check_connection(runtime, connection.id)
        print(
            f"ok: {connection.source} connection {connection.id} answered "
            f"{result.requests} request(s) with {result.records} record(s) "
            f"in {result.latency_s:.2f} s; nothing was kept"
        )
    elif args.connection_command == "list":
        with runtime.db.session() as session:
            tenant_id = registry.require_tenant(session, args.tenant) if args.tenant else None
            connections = registry.list_connections(session, tenant_id=tenant_id)
        rows = [
            {
                "id": c.id,
                "tenant_id": c.tenant_id,
                "source": c.source,
                "status": c.status,
                "last_error": c.last_error,
                "last_refreshed_at": c.last_refreshed_at.isoformat()
                if c.last_refreshed_at
                else None,
            }
            for c in connections
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(
                    f"{row['id']}  {row['source']:<10} {row['status']:<8} tenant {row['tenant_id']}"
                )


def cmd_link(args) -> None:
    runtime = _ready_runtime()
    if args.link_command == "create":
        with runtime.db.session() as session:
            link, token = links.create_link(
                session, args.tenant_id, label=args.label, expires_in_days=args.expires_in
            )
        print(f"link id: {link.id}", file=sys.stderr)
        print(
            "This URL is shown once and works like a password; send it to the client privately.",
            file=sys.stderr,
        )
        print(runtime.settings.dashboard_url(token))
    elif args.link_command == "revoke":
        with runtime.db.session() as session:
            link = links.revoke_link(session, args.link_id)
        print(f"revoked {link.id}")
    elif args.link_command == "list":
        with runtime.db.session() as session:
            items = links.list_links(session, args.tenant_id)
        if args.json:
            print(json.dumps([item.as_json() for item in items], indent=2))
        else:
            now = dt.datetime.now(dt.UTC)
            for item in items:
                state = (
                    "revoked"
                    if item.revoked_at
                    else "expired"
                    if item.expires_at and item.expires_at <= now
                    else "live"
                )
                used = f"{item.last_used_at:%Y-%m-%d %H:%M}" if item.last_used_at else "never"
                print(f"{item.id}  {state:<7} last used {used:<16}  {item.label or ''}")
    elif args.link_command == "rotate":
        with runtime.db.session() as session:
            link, token = links.rotate_link(session, args.link_id)
        print(f"link id: {link.id}; the old URL no longer works", file=sys.stderr)
        print(
            "This URL is shown once and works like a password; send it to the client privately.",
            file=sys.stderr,
        )
        print(runtime.settings.dashboard_url(token))


def cmd_connection_invite(args) -> None:
    from .invites import create_invite

    runtime = _ready_runtime()
    options: dict[str, dict[str, str]] = {}
    for key, value in _parse_options(args.option).items():
        source, dot, name = key.partition(".")
        if not dot or not source or not name:
            raise InvalidInput(f"--option {key}=... must be SOURCE.KEY=VALUE.")
        options.setdefault(source, {})[name] = value
    with runtime.db.session() as session:
        invite, token = create_invite(
            session,
            args.tenant_id,
            sources=args.source or None,
            options=options,
            expires_in_days=args.expires_in,
        )
    print(
        f"invite id: {invite.id}; offers {', '.join(invite.sources)}; "
        f"works once, until {invite.expires_at:%Y-%m-%d %H:%M} UTC",
        file=sys.stderr,
    )
    print("Send this URL to the client privately; it works like a password.", file=sys.stderr)
    print(runtime.settings.connect_url(token))


def cmd_refresh(args) -> None:
    from .materialize import refresh_now

    runtime = _ready_runtime()
    tenant_id = None
    if args.tenant:
        from .privacy import operator_name, record_access

        actor = operator_name(args.actor)
        with runtime.db.session() as session:
            tenant_id = registry.require_tenant(session, args.tenant)
        record_access(runtime, actor, "tenant.refresh", tenant_id)
    report = refresh_now(runtime, tenant_id=tenant_id)
    for line in report.lines():
        print(line)
    if report.failed:
        raise CliError(f"{report.failed} of {report.total} connections failed to refresh.")


def cmd_serve(args) -> None:
    from dashboard_server.server import serve

    _ready_runtime()
    serve(host=args.host, port=args.port)


def cmd_sandbox(args) -> None:
    from .sandbox.server import serve_forever

    print(f"sandbox provider on http://{args.host}:{args.port}", flush=True)
    serve_forever(args.host, args.port)


def cmd_demo(args) -> None:
    from .demo import run_demo

    code = run_demo(
        check=args.check,
        ui_port=args.ui_port,
        dashboard_port=args.dashboard_port,
        sandbox_port=args.sandbox_port,
    )
    if code:
        raise SystemExit(code)


TENANT_PRIVACY_COMMANDS = ("show", "export", "erase", "request-erasure")


def cmd_tenant_privacy(args) -> None:
    from . import privacy
    from .privacy.erasure import check_erasable

    actor = privacy.operator_name(args.actor)
    runtime = _ready_runtime()
    if args.tenant_command == "show":
        with runtime.db.session() as session:
            tenant = registry.get_tenant(session, runtime.keys, args.tenant_id)
            connections = registry.list_connections(session, tenant_id=tenant.id)
            live_links = [
                item
                for item in links.list_links(session, tenant.id)
                if item.revoked_at is None
                and (item.expires_at is None or item.expires_at > dt.datetime.now(dt.UTC))
            ]
        privacy.record_access(runtime, actor, "tenant.show", tenant.id)
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
        print(f"client since {tenant.created_at:%Y-%m-%d}; {len(live_links)} live dashboard links")
        for c in shown["connections"]:
            print(
                f"  {c['id']}  {c['source']:<10} {c['auth_kind']:<8} {c['status']:<8} "
                f"last refreshed {c['last_refreshed_at'] or 'never'}"
            )
    elif args.tenant_command == "export":
        from pathlib import Path

        tenant_id = registry.parse_uuid(args.tenant_id, "Tenant")
        report = privacy.export_tenant(runtime, tenant_id, Path(args.out), force=args.force)
        privacy.record_access(
            runtime, actor, "tenant.export", tenant_id, facts=report.facts, bytes=report.bytes
        )
        print(
            f"exported {report.facts} aggregates, {report.connections} connections and "
            f"{report.links} links ({report.bytes} bytes); the file holds personal data",
            file=sys.stderr,
        )
        print(report.path)
    elif args.tenant_command == "request-erasure":
        request_id = privacy.request_erasure(runtime, args.tenant_id, actor)
        print(
            "recorded; the erasure sensor carries it out (or run `writevue tenant erase`)",
            file=sys.stderr,
        )
        print(request_id)
    elif args.tenant_command == "erase":
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
        report = privacy.run_erasure(runtime, tenant_id, actor=actor)
        for line in report.lines():
            print(line)
        if not report.ok:
            raise CliError(
                "The erasure ran but its verification found tenant data left (listed above)."
            )


def _progress_bar():
    """A progress callback drawing on stderr: a bar on a terminal, a line per 10% elsewhere."""
    tty = sys.stderr.isatty()
    last: dict[str, int] = {}

    def show(label: str, done: int, total: int) -> None:
        percent = 100 if total == 0 else min(100, done * 100 // total)
        if tty:
            bar = "#" * (percent // 4)
            end = "\n" if done >= total else ""
            print(f"\r{label:<28} [{bar:<25}] {done}/{total}", end=end, file=sys.stderr)
        elif percent // 10 != last.get(label, -1) // 10 or done >= total:
            print(f"{label}: {done}/{total}", file=sys.stderr)
        last[label] = percent
        sys.stderr.flush()

    return show


def cmd_keys(args) -> None:
    from .privacy import keys

    runtime = _ready_runtime()
    if args.keys_command == "rotate":
        try:
            report = keys.rotate_keys(runtime, batch_size=args.batch, progress=_progress_bar())
        except KeyboardInterrupt:
            print(
                "\nwritevue: rotation interrupted; every finished batch is saved. "
                "Rerun `writevue keys rotate` to continue.",
                file=sys.stderr,
            )
            raise
        for line in report.lines():
            print(line)
        print("older keys can now be retired with `writevue keys retire VERSION`", file=sys.stderr)
    elif args.keys_command == "retire":
        report = keys.retire_key(runtime, args.version)
        print(
            f"retired key version {report.version}; the ring holds "
            f"{', '.join(map(str, report.remaining))}"
        )


def cmd_audit(args) -> None:
    from .privacy import list_events

    runtime = _ready_runtime()
    events = list_events(runtime, args.tenant)
    if args.json:
        print(json.dumps([e.as_json() for e in events], indent=2))
        return
    for e in events:
        details = json.dumps(e.details, sort_keys=True) if e.details else ""
        tenant = e.tenant_id or "-"
        print(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.actor:<16} {e.action:<26} {tenant}  {details}")


COMMANDS = {
    "init": cmd_init,
    "tenant": cmd_tenant,
    "connection": cmd_connection,
    "link": cmd_link,
    "refresh": cmd_refresh,
    "serve": cmd_serve,
    "sandbox": cmd_sandbox,
    "demo": cmd_demo,
    "keys": cmd_keys,
    "audit": cmd_audit,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        COMMANDS[args.command](args)
    except (CliError, WriteVueError, VaultError, ConfigError) as exc:
        print(f"writevue: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("writevue: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
