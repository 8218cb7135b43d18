"""``writevue connection …``: connect a tenant's sources, test, pause and remove them, and
invite the client to connect its own."""

from __future__ import annotations

import json
import sys

from .. import registry
from ..errors import CredentialRejected, InvalidInput, SourceError
from .app import CliError, arg, command, group
from .inputs import ACTOR, REASON, parse_options, read_secret, ready_runtime, staff_access
from .progress import plural

group("connection", "data sources of a tenant")

BASIC_AUTH_ADVICE = (
    "note: WriteVue only reads; give it a dedicated read-only account, not an administrator's."
)
OPTION = arg("--option", action="append", default=[], metavar="KEY=VALUE")
#: how `connection list` names a status; the JSON keeps the stored value
STATUS_LABEL = {"needs_reauth": "needs reconnect"}


def sources_help() -> str:
    """Every source with its credentials and options, from the source registry (shown
    at the end of `connection add --help`; sources are imported only for that)."""
    from ..sources import SOURCES

    lines = ["sources and their options (--option KEY=VALUE):"]
    for name, source in sorted(SOURCES.items()):
        kinds = ", ".join(source.auth_kinds)
        oauth = (
            " (oauth2: `writevue connection authorize`)" if "oauth2" in source.auth_kinds else ""
        )
        lines.append(f"  {name}: {source.title}; credentials {kinds}{oauth}")
        lines += [f"    {option}: {text}" for option, text in sorted(source.options.items())]
    return "\n".join(lines)


NO_VERIFY = arg(
    "--no-verify",
    action="store_true",
    help="save without first checking the credential with one read of the source (offline setups)",
)


@command(
    "connection add",
    "connect a source with an API key (from --api-key-env or stdin) or, where the "
    "source offers nothing better, a username and password; checked with one read of "
    "the source before it is saved",
    arg("tenant_id"),
    arg("source"),
    arg("--auth", choices=("api_key", "basic"), default="api_key"),
    arg("--api-key-env", metavar="VAR", help="environment variable holding the key"),
    arg("--username", help="basic auth: the account name (not a secret)"),
    arg("--password-env", metavar="VAR", help="basic auth: environment variable holding it"),
    OPTION,
    NO_VERIFY,
    ACTOR,
    REASON,
    # no abbreviations: `--password x` must not be taken for `--password-env x`
    allow_abbrev=False,
    audit="connection.add",
    example=(
        "WV_KEY=rk_live_... writevue connection add TENANT_ID stripe --api-key-env WV_KEY\n"
        "writevue connection add TENANT_ID github --option owner=acme-org < key.txt\n"
        "# offline: saved unchecked, listed as unverified until its first refresh\n"
        "writevue connection add TENANT_ID stripe --no-verify --api-key-env WV_KEY"
    ),
    details=sources_help,
)
def add(args) -> None:
    from ..sources import get_source

    access = staff_access(args)
    runtime = ready_runtime()
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
    options = source.validate_options(parse_options(args.option))
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant_id)
    if args.auth == "basic":
        password = read_secret(
            "password", env_var=args.password_env, flag="--password-env", one_line=True
        )
        secrets = {"username": args.username.strip(), "password": password}
    else:
        secrets = {"api_key": _api_key(args.api_key_env)}
    if not args.no_verify:
        _verify(runtime, args.tenant_id, source, args.auth, options, secrets)
    status = registry.UNVERIFIED if args.no_verify else "active"
    with runtime.db.session() as session:
        twin = same_account(session, tenant_id, source, options)
        connection_id = registry.add_connection(
            session,
            runtime.keys,
            args.tenant_id,
            source.name,
            args.auth,
            options,
            secrets,
            status=status,
        )
        access.record_in(session, tenant_id, connection_id=connection_id)
    if twin is not None:
        print(
            f"warning: tenant {tenant_id} already has a {source.title} connection to "
            f"{_account_words(source, twin)}: {twin.id}; if this one is a mistake, "
            f"`writevue connection remove {connection_id}`",
            file=sys.stderr,
        )
    if args.auth == "basic":
        print(BASIC_AUTH_ADVICE, file=sys.stderr)
    elif source.name == "stripe" and secrets["api_key"].startswith("sk_"):
        print(
            "note: a restricted key (rk_...) with read-only permissions is the safer choice.",
            file=sys.stderr,
        )
    print(connection_id)


@command(
    "connection rekey",
    "re-enter the API key or password of a connection (one that needs reconnecting, say): "
    "from --api-key-env/--password-env or stdin, checked with one read of the source first",
    arg("connection_id"),
    arg("--api-key-env", metavar="VAR", help="environment variable holding the new key"),
    arg("--username", help="basic auth: the account name (default: the stored one)"),
    arg("--password-env", metavar="VAR", help="basic auth: environment variable holding it"),
    NO_VERIFY,
    ACTOR,
    REASON,
    allow_abbrev=False,
    audit="connection.rekeyed",
)
def rekey(args) -> None:
    from ..models import Connection
    from ..sources import get_source

    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        connection = registry.get_connection(session, args.connection_id)
        username = (args.username or "").strip() or None
        if connection.auth_kind == "basic" and username is None:
            from ..refresh import stored_secrets

            try:
                username = stored_secrets(session, runtime, connection).get("username")
            except SourceError:
                username = None
    source = get_source(connection.source)
    if connection.auth_kind == "oauth2":
        raise InvalidInput(
            f"Connection {connection.id} uses OAuth2; renew it with `writevue connection "
            f"authorize {connection.tenant_id} {connection.source} --reconnect {connection.id}`."
        )
    if connection.auth_kind == "basic":
        if args.api_key_env:
            raise InvalidInput("--api-key-env is for API-key connections; use --password-env.")
        if not username:
            raise InvalidInput(
                f"The username of connection {connection.id} cannot be read either; "
                "give it with --username NAME."
            )
        password = read_secret(
            "password", env_var=args.password_env, flag="--password-env", one_line=True
        )
        secrets = {"username": username, "password": password}
    else:
        if args.password_env or args.username:
            raise InvalidInput(
                "--username and --password-env are for basic-auth connections; use --api-key-env."
            )
        secrets = {"api_key": _api_key(args.api_key_env)}
    if not args.no_verify:
        _verify(
            runtime,
            connection.tenant_id,
            source,
            connection.auth_kind,
            connection.options,
            secrets,
        )
    with runtime.db.session() as session:
        for field, value in secrets.items():
            registry.put_secret(
                session, runtime.keys, connection.tenant_id, connection.id, field, value
            )
        row = session.get(Connection, connection.id)
        if row.status in ("failing", "needs_reauth", registry.UNVERIFIED):
            # unchecked, the new credential is proven by the next refresh
            row.status = registry.UNVERIFIED if args.no_verify else "active"
            row.last_error = None
        access.record_in(session, connection.tenant_id, connection_id=row.id)
    print(f"ok: connection {connection.id} has its new credential", file=sys.stderr)


def _verify(runtime, tenant_id: str, source, auth: str, options, secrets) -> None:
    """One read of the source with the new credential; nothing is saved if it fails."""
    from ..refresh import check_credentials

    what = "password" if auth == "basic" else "key"
    try:
        check_credentials(runtime, tenant_id, source.name, auth, options, secrets)
    except CredentialRejected as exc:
        raise InvalidInput(
            f"{source.title} refused the {what} ({_status(exc)}); nothing was saved. "
            f"Check the {what} and its permissions, then run this again."
        ) from None
    except SourceError as exc:
        if exc.status == 404:  # the key works; what the options name does not exist
            raise InvalidInput(
                f"{_reason(exc)}. Nothing was saved ({source.title} answered HTTP 404)."
            ) from None
        root = source.base_url(_probe(tenant_id, source, options))
        raise SourceError(
            f"Could not check the {what} with {source.title} at {root} ({_status(exc)}); "
            "nothing was saved. Check --option base_url and the network and run this again, "
            "or add --no-verify to save it unchecked."
        ) from None


def _probe(tenant_id: str, source, options) -> registry.ConnectionInfo:
    """A connection not saved yet, to ask its source about its options (no id, no secret)."""
    return registry.ConnectionInfo("", tenant_id, source.name, "", dict(options), "", None, None)


def _status(exc: SourceError) -> str:
    return f"HTTP {exc.status}" if exc.status else "no answer"


def _reason(exc: SourceError) -> str:
    """A source's own words for an error, without the provisional connection id."""
    text = str(exc).splitlines()[0] if str(exc) else "not found"
    if exc.connection_id:
        text = text.removeprefix(f"connection {exc.connection_id}: ")
    return text.rstrip(".")


def account_key(source, connection: registry.ConnectionInfo) -> tuple[str, str]:
    """Which account of a source a connection reads, from its non-secret options only:
    the API root and the account the source names (a GitHub owner, a GA4 property; a
    Stripe or REST connection is named by its API root alone)."""
    return (
        source.base_url(connection).rstrip("/").lower(),
        source.account_label(connection).lower(),
    )


def same_account(session, tenant_id: str, source, options) -> registry.ConnectionInfo | None:
    """The tenant's connection to the same source and account as these options, if any."""
    wanted = account_key(source, _probe(tenant_id, source, options))
    for other in registry.list_connections(session, tenant_id=tenant_id, source=source.name):
        if other.status != registry.ERASING and account_key(source, other) == wanted:
            return other
    return None


def _account_words(source, connection: registry.ConnectionInfo) -> str:
    label = source.account_label(connection)
    return (
        f"the same account, {label}"
        if label
        else f"the same API root, {source.base_url(connection)}"
    )


def _api_key(env_var: str | None) -> str:
    value = read_secret("API key", env_var=env_var, flag="--api-key-env").strip()
    if any(ch.isspace() for ch in value):
        raise InvalidInput("The API key contains whitespace; give exactly one key.")
    return value


def oauth_help() -> str:
    """The OAuth2 sources, each one's options and client variables, and how to authorise
    against the sandbox (shown at the end of `connection authorize --help`)."""
    from ..oauth.endpoints import AUTH_BASE_OPTION, client_variables
    from ..sources import SOURCES

    lines = ["OAuth2 sources, their options (--option KEY=VALUE) and WriteVue's client there:"]
    for name, source in sorted(SOURCES.items()):
        if "oauth2" not in source.auth_kinds:
            continue
        id_variable, secret_variable = client_variables(name)
        lines.append(f"  {name}: {source.title}; client from {id_variable}, {secret_variable}")
        lines += [f"    {option}: {text}" for option, text in sorted(source.options.items())]
        lines.append(
            f"    {AUTH_BASE_OPTION}: the authorisation server's origin, where it is not the "
            "provider's (the sandbox's)"
        )
    lines += [
        "",
        "The provider sends the browser to --redirect-uri (default "
        "WRITEVUE_DASHBOARD_URL/oauth/callback), where `writevue serve` finishes the "
        "connection (with the same client variables set). Where nothing answers there, "
        "pipe the address the browser landed on into `writevue connection complete`.",
    ]
    return "\n".join(lines)


@command(
    "connection authorize",
    "start connecting an OAuth2 source: prints the provider's consent URL last (it works "
    "once, for 10 minutes)",
    arg("tenant_id"),
    arg("source"),
    OPTION,
    arg(
        "--redirect-uri",
        metavar="URI",
        help="where the provider sends the browser (default: the dashboard server's "
        "/oauth/callback)",
    ),
    arg("--reconnect", metavar="CONNECTION_ID", help="renew this connection"),
    ACTOR,
    REASON,
    audit="connection.authorize",
    example=(
        "writevue connection authorize TENANT_ID github --option owner=acme-org\n"
        "# against the sandbox (`writevue sandbox --help` gives its client and properties):\n"
        "writevue connection authorize TENANT_ID ga4 --option property_id=347935571 "
        "--option base_url=http://127.0.0.1:8765 --option auth_base_url=http://127.0.0.1:8765\n"
        "writevue connection complete < callback-url.txt"
    ),
    details=oauth_help,
)
def authorize(args) -> None:
    from ..oauth.flow import begin_authorization

    access = staff_access(args)
    runtime = ready_runtime()
    redirect_uri = args.redirect_uri or f"{runtime.settings.dashboard_base_url}/oauth/callback"
    options = parse_options(args.option)
    url = begin_authorization(
        runtime,
        args.tenant_id,
        args.source,
        options,
        redirect_uri,
        reconnect=args.reconnect,
    )
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant_id)
    details = {"reconnect": args.reconnect} if args.reconnect else {}
    access.record(runtime, tenant_id, **details)
    note = _moved_api_note(options, url)
    if note:
        print(note, file=sys.stderr)
    print(
        "Open this URL (or send it to the client) to authorise read-only access; it works "
        f"once, for 10 minutes. The provider then sends the browser to {redirect_uri}, "
        "where `writevue serve` finishes the connection; if nothing answers there, pipe the "
        "address the browser landed on into `writevue connection complete`.",
        file=sys.stderr,
    )
    print(url)


def _moved_api_note(options: dict[str, str], authorize_url: str) -> str | None:
    """A note when base_url moved the API (to the sandbox, say) but the authorisation
    still goes to the provider's own server: the one option that moves it is named."""
    from urllib.parse import urlsplit

    from ..oauth.endpoints import AUTH_BASE_OPTION

    base_url = options.get("base_url")
    if not base_url or options.get(AUTH_BASE_OPTION):
        return None
    api, auth = urlsplit(base_url), urlsplit(authorize_url)
    if (api.scheme, api.netloc) == (auth.scheme, auth.netloc):
        return None
    origin = f"{api.scheme}://{api.netloc}"
    return (
        f"note: base_url moved the API to {origin}, but the authorisation still goes to "
        f"{auth.netloc}; if {origin} authorises too (the sandbox does), run this again "
        f"with --option {AUTH_BASE_OPTION}={origin}"
    )


@command(
    "connection complete",
    "finish an OAuth2 authorisation: the callback URL comes on stdin; "
    "prints the connection id last",
    ACTOR,
    REASON,
    audit="connection.complete",
)
def complete(args) -> None:
    from ..oauth.flow import complete_authorization, parse_callback

    access = staff_access(args)
    runtime = ready_runtime()
    state, code = parse_callback(read_secret("callback URL"))
    connection_id = complete_authorization(runtime, state, code)
    # The tenant is known once the state is spent; the grant itself is audited as "oauth".
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
    access.record(runtime, connection.tenant_id, connection_id=connection_id)
    _check_new_connection(runtime, connection)
    print(connection_id)


def _check_new_connection(runtime, connection: registry.ConnectionInfo) -> None:
    """One read with the new grant, as `connection add` checks a key: the grant is made,
    so a failure (a property the account cannot read) keeps the connection, marked
    failing with its error, and says how to start again."""
    from ..refresh import check_connection, safe_error

    try:
        check_connection(runtime, connection.id)
    except SourceError as exc:
        error = safe_error(exc)
        with runtime.db.session() as session:
            registry.record_refresh_result(session, connection.id, error=error)
        print(
            f"warning: connected, but one read of the source failed: {error}. If an "
            f"option is wrong, `writevue connection remove {connection.id} --yes` and "
            "authorize again with the right one.",
            file=sys.stderr,
        )


@command(
    "connection test",
    "read a connection's last day from its source, with its stored credential, to prove "
    "it works: prints the requests, records and time it took; keeps nothing (no staging, "
    "no figures, no cursor), changes no status, and is audited (it reads the client's data)",
    arg("connection_id", help="the connection (an unambiguous prefix of its id will do)"),
    ACTOR,
    REASON,
    audit="connection.test",
    example=(
        "writevue connection test 1a2b3c4d --reason TICKET-12\n"
        "# ok: github connection 1a2b3c4d-... answered 3 requests with 12 records in 0.41 s;"
        " nothing was kept"
    ),
)
def test(args) -> None:
    from ..refresh import check_connection

    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        connection = registry.get_connection(session, args.connection_id)
    # Reading a tenant's source is reading its data: audited before it happens.
    access.record(runtime, connection.tenant_id, connection_id=connection.id)
    result = check_connection(runtime, connection.id)
    print(
        f"ok: {connection.source} connection {connection.id} answered "
        f"{plural(result.requests, 'request')} with {plural(result.records, 'record')} "
        f"in {result.latency_s:.2f} s; nothing was kept"
    )


@command(
    "connection list",
    "list connections, their status and last error (audited)",
    arg("--tenant"),
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="connection.list",
)
def list_connections(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant) if args.tenant else None
        connections = registry.list_connections(session, tenant_id=tenant_id)
    if tenant_id is not None:
        access.record(runtime, tenant_id, connections=len(connections))
    else:  # one record for the whole list: the counts, no tenant ids
        tenants = len({c.tenant_id for c in connections})
        access.record(runtime, None, connections=len(connections), tenants=tenants)
    names = _tenant_names(runtime, {c.tenant_id for c in connections})
    rows = [
        {
            "id": c.id,
            "tenant_id": c.tenant_id,
            "tenant_name": names.get(c.tenant_id),
            "source": c.source,
            "status": c.status,
            "last_error": c.last_error,
            "last_refreshed_at": c.last_refreshed_at.isoformat() if c.last_refreshed_at else None,
        }
        for c in connections
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        status = STATUS_LABEL.get(row["status"], row["status"])
        print(
            f"{row['id']}  {row['source']:<10} {status:<15} tenant {row['tenant_id']} "
            f"({row['tenant_name'] or 'name unreadable'})"
        )
        if row["last_error"]:  # what the help promises, under the connection it belongs to
            print(f"    last error: {row['last_error']}")


def _tenant_names(runtime, tenant_ids: set[str]) -> dict[str, str | None]:
    """Each tenant's name (the operator's own records); None where it cannot be decrypted."""
    from ..vault import VaultError

    names: dict[str, str | None] = {}
    with runtime.db.session() as session:
        for tenant_id in sorted(tenant_ids):
            try:
                names[tenant_id] = registry.get_tenant(session, runtime.keys, tenant_id).name
            except (VaultError, UnicodeDecodeError):
                names[tenant_id] = None
    return names


@command(
    "connection pause",
    "stop refreshing a connection (a mistake, a client's pause): no schedule, retry or "
    "`writevue refresh` reads it, and its dashboard shows its figures as of now, marked "
    "paused; `connection resume` undoes it",
    arg("connection_id"),
    audit=False,  # shows nothing and creates no access; recorded as an operation
    example="writevue connection pause 1a2b3c4d",
)
def pause(args) -> None:
    _set_paused(args.connection_id, paused=True)


@command(
    "connection resume",
    "refresh a paused connection again, from where it stopped (its partitions sensor "
    "requests the catch-up refresh)",
    arg("connection_id"),
    audit=False,  # shows nothing and creates no access; recorded as an operation
    example="writevue connection resume 1a2b3c4d",
)
def resume(args) -> None:
    _set_paused(args.connection_id, paused=False)


def _set_paused(connection_id: str, *, paused: bool) -> None:
    from ..privacy.audit import operator_name

    runtime = ready_runtime()
    with runtime.db.locked_session() as session:
        connection, changed = registry.set_paused(session, connection_id, paused)
        if changed:
            action = "connection.paused" if paused else "connection.resumed"
            registry.audit(
                session,
                operator_name(None),
                action,
                connection.tenant_id,
                connection_id=connection.id,
            )
    what = (
        "paused"
        if paused
        else f"resumed ({STATUS_LABEL.get(connection.status, connection.status)})"
    )
    already = "" if changed else "already "
    print(f"ok: {connection.source} connection {connection.id} is {already}{what}", file=sys.stderr)


@command(
    "connection remove",
    "remove a connection and erase its data, with a tenant erasure's guarantees: revoke "
    "its OAuth grant at the provider, delete its figures, staging, cursor and "
    "credentials, and verify nothing of it is left; the tenant's other connections stay "
    "(audited)",
    arg("connection_id"),
    arg("--yes", action="store_true", help="do not ask for confirmation"),
    arg(
        "--confirm-revoked",
        action="store_true",
        help="its OAuth grant could not be revoked and the client has removed WriteVue's "
        "access at the provider: remove it anyway",
    ),
    ACTOR,
    REASON,
    audit="connection.remove",
    example="writevue connection remove 1a2b3c4d --reason TICKET-12 --yes",
)
def remove(args) -> None:
    from ..errors import NotFound
    from ..privacy.audit import record_access
    from ..privacy.erasure_connection import (
        STARTED,
        RevocationFailed,
        check_removable,
        removal_key,
        removal_started,
        remove_connection,
    )

    access = staff_access(args)
    runtime = ready_runtime()
    try:
        connection = check_removable(runtime, args.connection_id)
    except NotFound:
        started = removal_started(runtime, args.connection_id)
        if started is None:
            raise
        _finish_removal(runtime, access, args.connection_id, started)
        return
    if connection.auth_kind == "oauth2" and not args.confirm_revoked:
        _require_oauth_client(connection)
    if not args.yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise CliError("Removing needs confirmation: run it in a terminal or pass --yes.")
        answer = input(
            f"Remove {connection.source} connection {connection.id} of tenant "
            f"{connection.tenant_id}: revoke its access and delete all its data, for good? "
            "Type 'remove' to confirm: "
        )
        if answer.strip() != "remove":
            raise CliError("Not confirmed; nothing was removed.")
    # By the tenant's id and a hash of the connection's, never the id itself (which the
    # verification searches for); its own commit, so a rerun knows what it was removing.
    what = {
        "source": connection.source,
        "auth_kind": connection.auth_kind,
        "removal": removal_key(connection.id),
    }
    record_access(
        runtime, access.actor, STARTED, connection.tenant_id, reason=access.reason, **what
    )
    outcome = {**what, "verified": False}
    try:
        report = remove_connection(runtime, connection.id, confirm_revoked=args.confirm_revoked)
        outcome.update(report.audit_details())
    except RevocationFailed:
        outcome["grant"] = "failed"
        raise
    except BaseException as exc:
        outcome["error"] = type(exc).__name__
        raise
    finally:
        access.record(runtime, connection.tenant_id, **outcome)
    _say(report)


def _finish_removal(runtime, access, connection_id: str, started) -> None:
    """Rerun of a removal whose rows are gone: its staging and the verification again."""
    from ..privacy.erasure_connection import finish_removal, removal_key

    what = {
        "source": started.source,
        "auth_kind": started.auth_kind,
        "removal": removal_key(connection_id),
    }
    outcome = {**what, "verified": False}
    try:
        report = finish_removal(runtime, connection_id, started)
        outcome.update(report.audit_details())
    except BaseException as exc:
        outcome["error"] = type(exc).__name__
        raise
    finally:
        access.record(runtime, started.tenant_id, **outcome)
    _say(report)


def _say(report) -> None:
    for line in report.lines():
        print(line)
    if not report.ok:
        raise CliError(
            "The removal ran but is not verified: what remains of the connection, or could "
            "not be checked, is listed above; remove it by hand and run this again to verify."
        )


def _require_oauth_client(connection) -> None:
    """Revoking a grant needs WriteVue's OAuth client at the source: checked before the
    removal starts, so a missing one changes nothing."""
    from ..oauth.endpoints import client_credentials

    try:
        client_credentials(connection.source)
    except InvalidInput as exc:
        raise CliError(
            f"Removing {connection.source} connection {connection.id} revokes its grant "
            f"first, with WriteVue's OAuth client: {exc} Nothing was changed."
        ) from None


@command(
    "connection invite",
    "a one-time, expiring link at which the client connects its sources; prints it last",
    arg("tenant_id"),
    arg("--source", action="append", default=[], help="offer only this source (repeatable)"),
    arg(
        "--option",
        action="append",
        default=[],
        metavar="SOURCE.KEY=VALUE",
        help="an option a source is connected with, such as stripe.base_url=URL",
    ),
    arg("--expires-in", type=int, default=7, metavar="DAYS"),
    ACTOR,
    REASON,
    audit="connection.invite",
)
def invite(args) -> None:
    from ..invites import create_invite

    access = staff_access(args)
    runtime = ready_runtime()
    options: dict[str, dict[str, str]] = {}
    for key, value in parse_options(args.option).items():
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
        access.record_in(session, invite.tenant_id, invite_id=invite.id)
    print(
        f"invite id: {invite.id}; offers {', '.join(invite.sources)}; "
        f"works once, until {invite.expires_at:%Y-%m-%d %H:%M} UTC",
        file=sys.stderr,
    )
    print("Send this URL to the client privately; it works like a password.", file=sys.stderr)
    print(runtime.settings.connect_url(token))
