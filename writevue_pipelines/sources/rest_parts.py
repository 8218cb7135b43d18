"""Paginators and auth chosen by name, shared by the declarative REST source and connectors.

Each paginator is a frozen dataclass of its settings with two methods: ``first`` gives
the first page's request and ``next`` the following one from the page just read (or
None at the end), so the state of a walk lives in the ``PageRequest`` and one paginator
serves every connection. ``PAGINATORS`` and ``AUTHS`` are the registries a spec names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import InvalidInput, SourceError
from .auth import ApiKeyAuth, ApiKeyPlacement, BasicAuth, OAuth2BearerAuth, TokenSource


class SpecError(InvalidInput):
    """A declarative spec that cannot work; the message starts with the field at fault."""


# -- reading typed settings out of a spec table ---------------------------------


def field_error(where: str, problem: str) -> SpecError:
    return SpecError(f"{where}: {problem}")


def as_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise field_error(where, f"must be a table of settings, not {_kind(value)}")
    return dict(value)


def refuse_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key in allowed:
            continue
        if SECRET_NAME.search(str(key)) and not str(key).endswith(("_url", "_path", "_param")):
            raise field_error(
                f"{where}.{key}",
                "secrets do not belong in the spec file; store them with the connection's "
                "encrypted credentials",
            )
        raise field_error(
            f"{where}.{key}", f"unknown setting; expected one of {', '.join(sorted(allowed))}"
        )


def text(
    table: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: str | None = None,
    choices: tuple[str, ...] | None = None,
    pattern: re.Pattern[str] | None = None,
    hint: str = "",
) -> str:
    value = table.get(key, default)
    if value is None:
        raise field_error(f"{where}.{key}", "is required" + (f" ({hint})" if hint else ""))
    if not isinstance(value, str) or not value.strip():
        raise field_error(f"{where}.{key}", f"must be a non-empty string, not {_kind(value)}")
    value = value.strip()
    if choices is not None and value not in choices:
        raise field_error(
            f"{where}.{key}", f"unknown value {value!r}; expected one of {', '.join(choices)}"
        )
    if pattern is not None and not pattern.fullmatch(value):
        raise field_error(
            f"{where}.{key}", f"{value!r} is not valid" + (f"; {hint}" if hint else "")
        )
    return value


def optional_text(table: Mapping[str, Any], key: str, where: str, **kwargs) -> str | None:
    if table.get(key) is None:
        return None
    return text(table, key, where, **kwargs)


def integer(
    table: Mapping[str, Any], key: str, where: str, *, default: int | None = None, minimum: int = 0
) -> int:
    value = table.get(key, default)
    if value is None:
        raise field_error(f"{where}.{key}", "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(f"{where}.{key}", f"must be a whole number, not {_kind(value)}")
    if value < minimum:
        raise field_error(f"{where}.{key}", f"must be at least {minimum}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value.strip() else "an empty string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


#: setting names that would carry a secret; refused wherever they appear in a spec
SECRET_NAME = re.compile(
    r"(?i)(secret|password|passwd|token|api_?key$|^key$|credential|client_secret)"
)
DOTTED_PATH = re.compile(r"[A-Za-z0-9_\-$@]+(\.[A-Za-z0-9_\-$@]+)*")


def dig(document: Any, path: str | None) -> Any:
    """The value at a dotted path (``data.items``, ``results.0.id``); None when absent."""
    if not path:
        return document
    if "." not in path and isinstance(document, dict):
        return document.get(path)  # the common case, on every record of every page
    value = document
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is None:
            return None
    return value


# -- pagination ------------------------------------------------------------------


@dataclass(frozen=True)
class PageRequest:
    """One page to read: a path (or a same-origin URL from a link) and its parameters."""

    url: str
    params: dict[str, Any] | None
    number: int = 1


class Paginator:
    type: ClassVar[str]
    #: setting name -> help, for validation messages and docs
    settings: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_spec(cls, table: Mapping[str, Any], where: str) -> Paginator:
        raise NotImplementedError

    def first(self, path: str, params: dict[str, Any]) -> PageRequest:
        return PageRequest(path, dict(params))

    def next(
        self, page: PageRequest, body: Any, response: httpx.Response, count: int
    ) -> PageRequest | None:
        raise NotImplementedError


def same_origin_url(base_url: str, link: str, *, connection_id: str) -> str:
    """A next-page link resolved against the base URL, refused if it leaves that origin.

    The client attaches credentials to every request, so following a link to another
    host would hand them to it.
    """
    resolved = urljoin(base_url.rstrip("/") + "/", link)
    base, target = urlsplit(base_url), urlsplit(resolved)
    if (target.scheme, target.hostname, target.port) != (base.scheme, base.hostname, base.port):
        raise SourceError(
            f"connection {connection_id}: a next-page link points to another host "
            f"({target.hostname}); WriteVue does not send credentials there",
            connection_id=connection_id,
        )
    return resolved


@dataclass(frozen=True)
class HeaderLinkPaginator(Paginator):
    """RFC 8288 ``Link: <…>; rel="next"`` headers, as GitHub and many others send."""

    type: ClassVar[str] = "header_link"
    settings: ClassVar[dict[str, str]] = {"rel": 'link relation to follow (default "next")'}
    rel: str = "next"

    @classmethod
    def from_spec(cls, table, where):
        refuse_unknown(table, {"type", *cls.settings}, where)
        return cls(rel=text(table, "rel", where, default="next"))

    def next(self, page, body, response, count):
        link = response.links.get(self.rel, {}).get("url")
        if not link:
            return None
        return PageRequest(link, None, page.number + 1)


@dataclass(frozen=True)
class JsonLinkPaginator(Paginator):
    """A next-page URL inside the body, at ``next_url_path`` (null or absent at the end)."""

    type: ClassVar[str] = "json_link"
    settings: ClassVar[dict[str, str]] = {"next_url_path": "dotted path to the next page's URL"}
    next_url_path: str = "next"

    @classmethod
    def from_spec(cls, table, where):
        refuse_unknown(table, {"type", *cls.settings}, where)
        return cls(next_url_path=text(table, "next_url_path", where, pattern=DOTTED_PATH))

    def next(self, page, body, response, count):
        link = dig(body, self.next_url_path)
        if not isinstance(link, str) or not link:
            return None
        return PageRequest(link, None, page.number + 1)


@dataclass(frozen=True)
class CursorPaginator(Paginator):
    """An opaque cursor from the body (``cursor_path``) sent back as ``cursor_param``."""

    type: ClassVar[str] = "cursor"
    settings: ClassVar[dict[str, str]] = {
        "cursor_path": "dotted path to the next cursor in the body",
        "cursor_param": "query parameter that carries it",
    }
    cursor_path: str = "next_cursor"
    cursor_param: str = "cursor"

    @classmethod
    def from_spec(cls, table, where):
        refuse_unknown(table, {"type", *cls.settings}, where)
        return cls(
            cursor_path=text(table, "cursor_path", where, pattern=DOTTED_PATH),
            cursor_param=text(table, "cursor_param", where, default="cursor"),
        )

    def next(self, page, body, response, count):
        cursor = dig(body, self.cursor_path)
        if cursor in (None, "") or isinstance(cursor, (dict, list, bool)) or count == 0:
            return None
        return PageRequest(
            page.url, {**(page.params or {}), self.cursor_param: str(cursor)}, page.number + 1
        )


@dataclass(frozen=True)
class OffsetPaginator(Paginator):
    """``offset``/``limit`` parameters; stops at ``total_path`` or at a short page."""

    type: ClassVar[str] = "offset"
    settings: ClassVar[dict[str, str]] = {
        "limit": "records per page",
        "offset_param": 'query parameter for the offset (default "offset")',
        "limit_param": 'query parameter for the page size (default "limit")',
        "total_path": "dotted path to the total record count in the body (optional)",
    }
    limit: int = 100
    offset_param: str = "offset"
    limit_param: str = "limit"
    total_path: str | None = None

    @classmethod
    def from_spec(cls, table, where):
        refuse_unknown(table, {"type", *cls.settings}, where)
        return cls(
            limit=integer(table, "limit", where, default=100, minimum=1),
            offset_param=text(table, "offset_param", where, default="offset"),
            limit_param=text(table, "limit_param", where, default="limit"),
            total_path=optional_text(table, "total_path", where, pattern=DOTTED_PATH),
        )

    def first(self, path, params):
        return PageRequest(path, {**params, self.offset_param: 0, self.limit_param: self.limit})

    def next(self, page, body, response, count):
        offset = int((page.params or {}).get(self.offset_param, 0)) + count
        if count == 0:
            return None
        if self.total_path is not None:
            total = _whole_number(dig(body, self.total_path))
            if total is not None and offset >= total:
                return None
        elif count < self.limit:
            return None
        return PageRequest(
            page.url, {**(page.params or {}), self.offset_param: offset}, page.number + 1
        )


@dataclass(frozen=True)
class PageNumberPaginator(Paginator):
    """A page number parameter from ``start``; stops at an empty page or ``total_pages_path``."""

    type: ClassVar[str] = "page_number"
    settings: ClassVar[dict[str, str]] = {
        "page_param": 'query parameter for the page number (default "page")',
        "start": "first page number (default 1)",
        "total_pages_path": "dotted path to the page count in the body (optional)",
        "page_size": "records per page, sent as page_size_param (optional)",
        "page_size_param": 'query parameter for the page size (default "per_page")',
    }
    page_param: str = "page"
    start: int = 1
    total_pages_path: str | None = None
    page_size: int | None = None
    page_size_param: str = "per_page"

    @classmethod
    def from_spec(cls, table, where):
        refuse_unknown(table, {"type", *cls.settings}, where)
        page_size = table.get("page_size")
        return cls(
            page_param=text(table, "page_param", where, default="page"),
            start=integer(table, "start", where, default=1, minimum=0),
            total_pages_path=optional_text(table, "total_pages_path", where, pattern=DOTTED_PATH),
            page_size=None if page_size is None else integer(table, "page_size", where, minimum=1),
            page_size_param=text(table, "page_size_param", where, default="per_page"),
        )

    def first(self, path, params):
        params = {**params, self.page_param: self.start}
        if self.page_size is not None:
            params[self.page_size_param] = self.page_size
        return PageRequest(path, params)

    def next(self, page, body, response, count):
        if count == 0:
            return None
        current = int((page.params or {}).get(self.page_param, self.start))
        if self.total_pages_path is not None:
            total = _whole_number(dig(body, self.total_pages_path))
            # Pages count from `start`; the last one is start + total - 1.
            if total is not None and current - self.start + 1 >= total:
                return None
        return PageRequest(
            page.url, {**(page.params or {}), self.page_param: current + 1}, page.number + 1
        )


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


PAGINATORS: dict[str, type[Paginator]] = {
    cls.type: cls
    for cls in (
        CursorPaginator,
        HeaderLinkPaginator,
        JsonLinkPaginator,
        OffsetPaginator,
        PageNumberPaginator,
    )
}


def paginator_from_spec(table: Any, where: str = "spec.paginator") -> Paginator:
    table = as_table(table, where)
    kind = table.get("type")
    if kind is None:
        raise field_error(f"{where}.type", f"is required; expected one of {', '.join(PAGINATORS)}")
    if kind not in PAGINATORS:
        raise field_error(
            f"{where}.type", f"unknown paginator {kind!r}; expected one of {', '.join(PAGINATORS)}"
        )
    return PAGINATORS[kind].from_spec(table, where)


# -- auth --------------------------------------------------------------------------

#: how a spec's auth type maps to the kind of credentials a connection stores
AuthBuilder = Callable[["AuthConfig", Mapping[str, str], TokenSource | None], httpx.Auth]


@dataclass(frozen=True)
class AuthConfig:
    """How to present a connection's credentials; never the credentials themselves."""

    type: str
    #: api_key: "header" or "query"
    location: str = "header"
    #: api_key: the header or query parameter name
    name: str = "Authorization"
    #: api_key in a header: what precedes the key ("Bearer ", "Token ", or nothing)
    prefix: str = ""
    #: oauth2: the provider's endpoints and scopes for the authorisation flow
    authorize_url: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None
    scopes: tuple[str, ...] = ()

    @property
    def credential_kind(self) -> str:
        return AUTHS[self.type][0]


def _bearer(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    return ApiKeyAuth(secrets.get("api_key", ""), ApiKeyPlacement("Authorization", "Bearer "))


def _api_key(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    if config.location == "query":
        placement = ApiKeyPlacement(header=None, prefix="", query_param=config.name)
    else:
        placement = ApiKeyPlacement(header=config.name, prefix=config.prefix)
    return ApiKeyAuth(secrets.get("api_key", ""), placement)


def _basic(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    if not secrets.get("username") or not secrets.get("password"):
        raise SourceError("the connection's username or password is missing; add them again")
    return BasicAuth(secrets["username"], secrets["password"])


def _oauth2(config: AuthConfig, secrets: Mapping[str, str], tokens) -> httpx.Auth:
    if tokens is None:
        raise SourceError("the connection has no OAuth2 token source; reconnect it")
    return OAuth2BearerAuth(tokens)


#: spec auth type -> (connection auth kind whose secrets it uses, builder)
AUTHS: dict[str, tuple[str, AuthBuilder]] = {
    "api_key": ("api_key", _api_key),
    "basic": ("basic", _basic),
    "bearer": ("api_key", _bearer),
    "oauth2": ("oauth2", _oauth2),
}

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")


def auth_from_spec(table: Any, where: str = "spec.auth") -> AuthConfig:
    table = as_table(table, where)
    kind = table.get("type")
    if kind not in AUTHS:
        problem = "is required" if kind is None else f"unknown auth {kind!r}"
        raise field_error(f"{where}.type", f"{problem}; expected one of {', '.join(AUTHS)}")
    if kind == "api_key":
        refuse_unknown(table, {"type", "location", "name", "prefix"}, where)
        location = text(table, "location", where, default="header", choices=("header", "query"))
        name = text(
            table,
            "name",
            where,
            default="Authorization" if location == "header" else None,
            pattern=_HEADER_NAME,
            hint="the header or query parameter that carries the key",
        )
        prefix = table.get("prefix", "")
        if not isinstance(prefix, str) or (prefix and location == "query"):
            raise field_error(f"{where}.prefix", "must be a string, and only for a header key")
        return AuthConfig("api_key", location=location, name=name, prefix=prefix)
    if kind == "oauth2":
        refuse_unknown(table, {"type", "authorize_url", "token_url", "revoke_url", "scopes"}, where)
        scopes = table.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
            raise field_error(f"{where}.scopes", "must be a list of scope strings")
        return AuthConfig(
            "oauth2",
            authorize_url=text(table, "authorize_url", where, pattern=_URL, hint="an http(s) URL"),
            token_url=text(table, "token_url", where, pattern=_URL, hint="an http(s) URL"),
            revoke_url=optional_text(
                table, "revoke_url", where, pattern=_URL, hint="an http(s) URL"
            ),
            scopes=tuple(scopes),
        )
    refuse_unknown(table, {"type"}, where)
    return AuthConfig(kind)


def build_auth(
    config: AuthConfig, secrets: Mapping[str, str], tokens: TokenSource | None = None
) -> httpx.Auth:
    return AUTHS[config.type][1](config, secrets, tokens)


__all__ = [
    "AUTHS",
    "PAGINATORS",
    "AuthConfig",
    "PageRequest",
    "Paginator",
    "SpecError",
    "auth_from_spec",
    "build_auth",
    "dig",
    "paginator_from_spec",
    "same_origin_url",
]
