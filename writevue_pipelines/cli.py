"""The `writevue` command for operators.

Secrets are never taken as arguments (they would show in `ps` and shell
history): they come from a named environment variable or standard input.
Every error a user can cause ends in one line on stderr and a non-zero exit,
with nothing half-written.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
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

    connection = commands.add_parser("connection", help="data sources of a tenant").add_subparsers(
        dest="connection_command", required=True, parser_class=_Parser
    )
    cadd = connection.add_parser(
        "add", help="connect a source; the API key comes from --api-key-env or stdin"
    )
    cadd.add_argument("tenant_id")
    cadd.add_argument("source")
    cadd.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the key")
    cadd.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
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

    refresh = commands.add_parser("refresh", help="materialise now, in process")
    refresh.add_argument("--tenant")

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


def _read_api_key(env_var: str | None) -> str:
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise InvalidInput(f"Environment variable {env_var} is not set.")
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

    runtime = _ready_runtime()
    if args.connection_command == "add":
        source = get_source(args.source)
        options = source.validate_options(_parse_options(args.option))
        with runtime.db.session() as session:
            registry.require_tenant(session, args.tenant_id)
        api_key = _read_api_key(args.api_key_env)
        with runtime.db.session() as session:
            connection_id = registry.add_connection(
                session,
                runtime.keys,
                args.tenant_id,
                source.name,
                "api_key",
                options,
                {"api_key": api_key},
            )
        if source.name == "stripe" and api_key.startswith("sk_"):
            print(
                "note: a restricted key (rk_...) with read-only permissions is the safer choice.",
                file=sys.stderr,
            )
        print(connection_id)
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
            for item in items:
                state = "revoked" if item.revoked_at else "live"
                print(f"{item.id}  {state:<7} {item.label or ''}")


def cmd_refresh(args) -> None:
    from .materialize import refresh_now

    runtime = _ready_runtime()
    tenant_id = None
    if args.tenant:
        with runtime.db.session() as session:
            tenant_id = registry.require_tenant(session, args.tenant)
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


COMMANDS = {
    "init": cmd_init,
    "tenant": cmd_tenant,
    "connection": cmd_connection,
    "link": cmd_link,
    "refresh": cmd_refresh,
    "serve": cmd_serve,
    "sandbox": cmd_sandbox,
    "demo": cmd_demo,
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
