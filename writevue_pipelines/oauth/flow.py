"""Authorisation code + PKCE: begin a connection's authorisation, complete it from the callback.

``begin_authorization`` stores a single-use ``state`` (its hash, with the PKCE verifier
encrypted) that expires in 10 minutes and returns the provider's authorisation URL for
the client to open. ``complete_authorization`` consumes the state, exchanges the code
and creates the connection with its tokens encrypted, in one transaction; a flow started
from a connect invite spends the invite in that transaction too, or creates nothing.
"""

from __future__ import annotations

import datetime as dt
import secrets
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from sqlalchemy import delete, select

from .. import invites, registry
from ..errors import InvalidInput, NotFound, SourceError
from ..links import hash_token
from ..models import Connection, Credential, OAuthState, utcnow
from ..runtime import Runtime
from ..sources import get_source
from ..sources.base import Source
from ..sources.urls import NOT_HTTP_URL, http_url_problem
from ..vault import Binding
from .endpoints import (
    AUTH_BASE_OPTION,
    ERROR_CODE,
    client_credentials,
    endpoints_for,
    run_blocking,
)
from .tokens import Tokens, request_tokens

STATE_TTL = dt.timedelta(minutes=10)


def _check_http_url(value: str, what: str) -> str:
    """``value`` when it is an http(s) URL without credentials or a fragment (a query may stay)."""
    problem = http_url_problem(value, allow_query=True)
    if problem == NOT_HTTP_URL:
        raise InvalidInput(f"{what} must be an http(s) URL such as https://example.com/callback.")
    if problem is not None:
        raise InvalidInput(f"{what} must not carry credentials or a fragment.")
    return value


def _validate_options(source: Source, options: dict[str, str]) -> dict[str, str]:
    options = dict(options)
    auth_base = options.pop(AUTH_BASE_OPTION, None)
    options = dict(source.validate_options(options))
    if auth_base is not None:
        _check_http_url(auth_base, f"Option {AUTH_BASE_OPTION}")
        if urlsplit(auth_base).query:
            raise InvalidInput(f"Option {AUTH_BASE_OPTION} must not carry a query string.")
        options[AUTH_BASE_OPTION] = auth_base
    return options


def _state_hash(state: str) -> str:
    # Stored like a link token: only the hash, so the database never holds a live state.
    return hash_token(state)


def _verifier_binding(tenant_id: str, state_hash: str) -> Binding:
    # Bound to its own state row, so a verifier copied to another row does not decrypt.
    return Binding(tenant_id, None, f"oauth.verifier.{state_hash[:16]}")


# -- 1. begin -------------------------------------------------------------------------


def begin_authorization(
    runtime: Runtime,
    tenant_id: str,
    source_name: str,
    options: dict[str, str],
    redirect_uri: str,
    *,
    reconnect: str | None = None,
    invite_id: str | None = None,
) -> str:
    """The URL at which the client authorises WriteVue; its state is single-use for 10 minutes.

    ``reconnect`` names an existing connection whose grant this renews (after
    ``needs_reauth``); otherwise completing the flow adds a new connection.
    ``invite_id`` names the connect invite it was started from, which completing spends.
    """
    source = get_source(source_name)
    options = _validate_options(source, options)
    redirect_uri = _check_http_url((redirect_uri or "").strip(), "The redirect URI")
    endpoints = endpoints_for(source.name, options)
    client = client_credentials(source.name)
    state = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters, inside RFC 7636's 43..128
    state_hash = _state_hash(state)
    now = utcnow()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, tenant_id)
        if reconnect is not None:
            existing = registry.get_connection(session, reconnect)
            if existing.tenant_id != tenant_id or existing.source != source.name:
                raise InvalidInput(
                    f"Connection {existing.id} is not a {source.name} connection of this tenant."
                )
            reconnect = existing.id
        # Abandoned authorisations go as soon as anyone starts a new one.
        session.execute(delete(OAuthState).where(OAuthState.expires_at < now))
        session.add(
            OAuthState(
                state_sha256=state_hash,
                tenant_id=tenant_id,
                source=source.name,
                connection_id=reconnect,
                invite_id=invite_id,
                options=options,
                redirect_uri=redirect_uri,
                code_verifier_ct=runtime.keys.encrypt(
                    verifier, _verifier_binding(tenant_id, state_hash)
                ),
                created_at=now,
                expires_at=now + STATE_TTL,
            )
        )
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if endpoints.scopes:
        params["scope"] = " ".join(endpoints.scopes)
    params.update(endpoints.extra_authorize_params)
    separator = "&" if urlsplit(endpoints.authorize).query else "?"
    return f"{endpoints.authorize}{separator}{urlencode(params)}"


# -- 2. complete ----------------------------------------------------------------------


def parse_callback(text: str) -> tuple[str, str]:
    """(state, code) from a redirected callback URL or its query string."""
    text = (text or "").strip()
    query = urlsplit(text).query if "://" in text else text.lstrip("?")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if params.get("error"):
        error = params["error"]
        error = error if ERROR_CODE.match(error) else "an error"
        raise InvalidInput(
            f"The provider answered {error} instead of a code; "
            "the client declined or the request was wrong. Start again."
        )
    state, code = params.get("state", ""), params.get("code", "")
    if not state or not code:
        raise InvalidInput(
            "The callback holds no code and state; paste the whole URL the browser was sent to."
        )
    return state, code


def complete_authorization(runtime: Runtime, state: str, code: str) -> str:
    """Consume the state, exchange the code, store the connection; its id.

    The state is deleted whether or not the exchange succeeds (a code is single-use
    at the provider too), and the connection with its encrypted tokens is created
    in the same transaction that deletes it, so nothing is ever half-written.
    """
    if not state or not code or len(state) > 512 or len(code) > 4096:
        raise InvalidInput("The authorisation code or state is missing or malformed.")
    failure: Exception | None = None
    connection_id = ""
    with runtime.db.locked_session() as session:
        row = session.scalars(
            select(OAuthState)
            .where(OAuthState.state_sha256 == _state_hash(state))
            .with_for_update()
        ).one_or_none()
        if row is None:
            raise InvalidInput(
                "This authorisation was already completed or never started here; "
                "start again with `writevue connection authorize`."
            )
        session.delete(row)
        if row.expires_at <= utcnow():
            failure = InvalidInput(
                "This authorisation expired (it is valid for 10 minutes); start again."
            )
        elif row.invite_id is not None and not invites.claim_invite(session, row.invite_id):
            # Another flow (or an API key) spent the invite first: the code is not even
            # exchanged, so no grant is made that nothing would store.
            failure = InvalidInput(
                "This invite was already used to connect a source, so nothing more was "
                "connected. Ask for a new invite to connect another."
            )
        else:
            endpoints = endpoints_for(row.source, row.options)
            verifier = runtime.keys.decrypt_text(
                row.code_verifier_ct, _verifier_binding(row.tenant_id, row.state_sha256)
            )
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": row.redirect_uri,
                "code_verifier": verifier,
            }
            what = f"{row.source} authorisation for tenant {row.tenant_id}"
            try:
                tokens = run_blocking(request_tokens(runtime, endpoints, form, what=what))
            except SourceError as exc:
                failure = exc
                if row.invite_id is not None:
                    invites.release_invite(session, row.invite_id)  # the client may retry
            else:
                connection_id = _store_connection(runtime, session, row, row.source, tokens)
                if row.invite_id is not None:
                    invites.settle_invite(
                        session, row.invite_id, row.tenant_id, connection_id, source=row.source
                    )
    if failure is not None:
        raise failure
    return connection_id


def _store_connection(runtime, session, row: OAuthState, source: str, tokens: Tokens) -> str:
    if row.connection_id is None:
        connection_id = registry.add_connection(
            session,
            runtime.keys,
            row.tenant_id,
            source,
            "oauth2",
            dict(row.options),
            tokens.as_secrets(),
        )
        action = "connection.authorised"
    else:
        connection_id = row.connection_id
        connection = session.get(Connection, connection_id)
        if connection is None:
            raise NotFound(f"Connection {connection_id} was removed while it was being renewed.")
        session.execute(
            delete(Credential).where(
                Credential.connection_id == connection_id,
                Credential.field.in_(("access_token", "refresh_token", "expires_at")),
            )
        )
        for field, value in tokens.as_secrets().items():
            registry.put_secret(session, runtime.keys, row.tenant_id, connection_id, field, value)
        connection.status, connection.last_error = "active", None
        action = "connection.reauthorised"
    registry.audit(
        session, "oauth", action, row.tenant_id, connection_id=connection_id, source=source
    )
    return connection_id
