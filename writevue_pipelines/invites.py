"""Connect-page invites: one-time, expiring links at which a client connects its sources.

Like dashboard links, the token is 32 random bytes and only its SHA-256 is stored.
An invite is spent by the first connection made through it (an API key saved, or
an OAuth2 authorisation completed), and is dead once spent or expired. The
options each source is connected with (such as ``base_url``) are set by the
operator when inviting; the client only picks a source and authorises it.

One invite makes at most one connection, whatever the interleaving: the connection
is created in the transaction that spends the invite, and spending is a conditional
``UPDATE … WHERE spent_at IS NULL`` whose row count says who won. Several OAuth2
flows may be started from one invite (each state names it); the first to come back
spends it and the others are refused. An API key is checked with one read of the
source before anything is saved, so a wrong key leaves the invite usable.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import registry
from .errors import CredentialRejected, InvalidInput, SourceError
from .links import hash_token
from .models import ConnectInvite, utcnow
from .runtime import Runtime
from .sources import SOURCES, get_source

TOKEN_BYTES = 32
DEFAULT_EXPIRY_DAYS = 7
MAX_API_KEY_CHARS = 4096
AUTH_BASE_OPTION = "auth_base_url"
SPENT = "This invite is no longer valid; ask for a new one."
#: how the client may connect each source from the page, best first
CONNECT_KINDS = ("oauth2", "api_key")


@dataclass(frozen=True)
class InviteInfo:
    id: str
    tenant_id: str
    sources: list[str]
    options: dict[str, dict[str, str]]
    created_at: dt.datetime
    expires_at: dt.datetime
    spent_at: dt.datetime | None


def _info(row: ConnectInvite) -> InviteInfo:
    return InviteInfo(
        id=row.id,
        tenant_id=row.tenant_id,
        sources=list(row.sources or []),
        options={k: dict(v) for k, v in (row.options or {}).items()},
        created_at=row.created_at,
        expires_at=row.expires_at,
        spent_at=row.spent_at,
    )


def connectable_sources() -> list[str]:
    """Sources a client can connect from the page (username/password stays operator-only)."""
    return sorted(
        name for name, source in SOURCES.items() if set(source.auth_kinds) & set(CONNECT_KINDS)
    )


def create_invite(
    session: Session,
    tenant_id: str,
    *,
    sources: list[str] | None = None,
    options: dict[str, dict[str, str]] | None = None,
    expires_in_days: int = DEFAULT_EXPIRY_DAYS,
) -> tuple[InviteInfo, str]:
    """A new invite and its token, which is never retrievable again."""
    tenant_id = registry.require_tenant(session, tenant_id)
    if expires_in_days <= 0:
        raise InvalidInput("--expires-in must be a positive number of days.")
    options = options or {}
    unknown = sorted(set(options) - set(sources or connectable_sources()))
    if unknown:
        raise InvalidInput(
            f"An option is given for {unknown[0]!r}, which the invite does not offer."
        )
    offered: list[str] = []
    checked: dict[str, dict[str, str]] = {}
    for name in sorted({get_source(name).name for name in sources or connectable_sources()}):
        source = get_source(name)
        if not set(source.auth_kinds) & set(CONNECT_KINDS):
            raise InvalidInput(
                f"Source {name!r} takes only a username and password; connect it with "
                "`writevue connection add` instead of an invite."
            )
        try:
            checked[name] = _checked_options(source, dict(options.get(name, {})))
        except InvalidInput:
            if sources or name in options:  # asked for by name: say what it needs
                raise
            continue  # offered by default: only the sources ready to connect
        offered.append(name)
    if not offered:
        raise InvalidInput("No source is ready to connect; name one with --source and its options.")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    row = ConnectInvite(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        token_sha256=hash_token(token),
        sources=offered,
        options={name: values for name, values in checked.items() if values},
        created_at=now,
        expires_at=now + dt.timedelta(days=expires_in_days),
    )
    session.add(row)
    session.flush()
    return _info(row), token


def _checked_options(source, options: dict[str, str]) -> dict[str, str]:
    # The OAuth2 endpoint override (the sandbox in tests and demos) is the OAuth module's.
    auth_base = options.pop(AUTH_BASE_OPTION, None)
    checked = source.validate_options(options)
    return checked if auth_base is None else {**checked, AUTH_BASE_OPTION: auth_base}


def _live_row(session: Session, token: str, now: dt.datetime | None = None) -> ConnectInvite | None:
    if not token or len(token) > 128:
        return None
    query = select(ConnectInvite).where(ConnectInvite.token_sha256 == hash_token(token))
    row = session.scalar(query)
    if row is None or row.spent_at is not None or row.expires_at <= (now or utcnow()):
        return None
    return row


def resolve_invite(
    session: Session, token: str, *, now: dt.datetime | None = None
) -> InviteInfo | None:
    """The live invite a token opens, or None for unknown, spent and expired tokens alike."""
    row = _live_row(session, token, now)
    return None if row is None else _info(row)


def _offered(row: ConnectInvite, source_name: str, auth_kind: str):
    if source_name not in (row.sources or []):
        raise InvalidInput("That source is not offered on this page.")
    source = get_source(source_name)
    if auth_kind not in source.auth_kinds:
        raise InvalidInput(f"{source.title} is not connected that way.")
    return source, dict((row.options or {}).get(source_name, {}))


def connect_with_api_key(runtime: Runtime, token: str, source_name: str, api_key: str) -> str:
    """Check the client's API key with the source, then save it as a new connection and
    spend the invite in one transaction. A refused key saves nothing and spends nothing."""
    from .refresh import check_credentials

    api_key = (api_key or "").strip()
    if not api_key:
        raise InvalidInput("The API key is empty; paste the key your provider gave you.")
    if len(api_key) > MAX_API_KEY_CHARS or any(ch.isspace() for ch in api_key):
        raise InvalidInput("That does not look like an API key; paste exactly one key.")
    with runtime.db.session() as session:
        row = _live_row(session, token)
        if row is None:
            raise InvalidInput(SPENT)
        source, options = _offered(row, source_name, "api_key")
        invite_id, tenant_id = row.id, row.tenant_id
    secrets_ = {"api_key": api_key}
    # Outside any transaction: the source may take seconds to answer.
    try:
        check_credentials(runtime, tenant_id, source.name, "api_key", options, secrets_)
    except CredentialRejected:
        raise InvalidInput(
            f"{source.title} refused that key, so nothing was saved and this page still "
            "works. Check that you copied the whole key, then try again."
        ) from None
    except SourceError:
        raise SourceError(
            f"WriteVue could not reach {source.title} to check the key, so nothing was saved "
            "and this page still works; try again in a few minutes."
        ) from None
    with runtime.db.locked_session() as session:
        if not claim_invite(session, invite_id):
            raise InvalidInput(SPENT)
        connection_id = registry.add_connection(
            session, runtime.keys, tenant_id, source.name, "api_key", options, secrets_
        )
        settle_invite(session, invite_id, tenant_id, connection_id, source=source.name)
    return connection_id


def claim_invite(session: Session, invite_id: str) -> bool:
    """Spend a live invite in the caller's transaction; False if it is spent or expired.

    The conditional update is the lock: of any number of concurrent claims, exactly one
    sees a row count of 1 (PostgreSQL re-checks the condition after waiting for the
    winner's row lock; SQLite writers are serialised by ``BEGIN IMMEDIATE``).
    """
    now = utcnow()
    claimed = session.execute(
        update(ConnectInvite)
        .where(
            ConnectInvite.id == invite_id,
            ConnectInvite.spent_at.is_(None),
            ConnectInvite.expires_at > now,
        )
        .values(spent_at=now)
        .execution_options(synchronize_session=False)
    )
    return claimed.rowcount == 1


def release_invite(session: Session, invite_id: str) -> None:
    """Undo ``claim_invite`` in the same transaction, when no connection came of it."""
    session.execute(
        update(ConnectInvite)
        .where(ConnectInvite.id == invite_id, ConnectInvite.connection_id.is_(None))
        .values(spent_at=None)
        .execution_options(synchronize_session=False)
    )


def settle_invite(
    session: Session, invite_id: str, tenant_id: str, connection_id: str, **details: str
) -> None:
    """Record which connection a claimed invite made, and say so in the audit log."""
    session.execute(
        update(ConnectInvite)
        .where(ConnectInvite.id == invite_id)
        .values(connection_id=connection_id)
        .execution_options(synchronize_session=False)
    )
    registry.audit(
        session,
        "client",
        "connection.added_by_invite",
        tenant_id,
        invite_id=invite_id,
        connection_id=connection_id,
        **details,
    )


def start_oauth(runtime: Runtime, token: str, source_name: str, redirect_uri: str) -> str:
    """Begin the OAuth2 flow for an offered source; the authorisation URL to send the client to."""
    from .oauth.flow import begin_authorization

    with runtime.db.session() as session:
        row = _live_row(session, token)
        if row is None:
            raise InvalidInput(SPENT)
        source, options = _offered(row, source_name, "oauth2")
        invite_id, tenant_id = row.id, row.tenant_id
    # The state names the invite: completing the flow spends it (``complete_authorization``).
    return begin_authorization(
        runtime, tenant_id, source.name, options, redirect_uri, invite_id=invite_id
    )


def finish_oauth(runtime: Runtime, state: str, code: str) -> str:
    """Complete an OAuth2 flow, spending the invite it started from, if any. The connection id."""
    from .oauth.flow import complete_authorization

    return complete_authorization(runtime, state, code)
