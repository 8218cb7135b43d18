"""How a list endpoint is walked page by page: paginators chosen by name from ``PAGINATORS``.

Each paginator is a frozen dataclass of its settings with two methods: ``first`` gives
the first page's request and ``next`` the following one from the page just read (or
None at the end), so the state of a walk lives in the ``PageRequest`` and one paginator
serves every connection. The declarative REST source names them in its spec
(``rest_spec``); hand-written connectors use the same classes directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx


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


@dataclass(frozen=True)
class PageRequest:
    """One page to read: a path with its parameters, or a link the provider handed back."""

    url: str
    #: None for a link: its query is already in ``url``
    params: dict[str, Any] | None
    number: int = 1

    @property
    def is_link(self) -> bool:
        """A URL from the provider, which may point anywhere: resolve it with
        ``urls.same_origin_url`` before sending credentials along."""
        return self.params is None


class Paginator:
    type: ClassVar[str]
    #: setting name -> help, for a spec's validation messages and docs
    settings: ClassVar[dict[str, str]] = {}

    def first(self, path: str, params: dict[str, Any]) -> PageRequest:
        return PageRequest(path, dict(params))

    def next(
        self, page: PageRequest, body: Any, response: httpx.Response, records: list
    ) -> PageRequest | None:
        """The page after ``page``, whose answer was ``body`` holding ``records``."""
        raise NotImplementedError


@dataclass(frozen=True)
class HeaderLinkPaginator(Paginator):
    """RFC 8288 ``Link: <…>; rel="next"`` headers, as GitHub and many others send."""

    type: ClassVar[str] = "header_link"
    settings: ClassVar[dict[str, str]] = {"rel": 'link relation to follow (default "next")'}
    rel: str = "next"

    def next(self, page, body, response, records):
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

    def next(self, page, body, response, records):
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

    def next(self, page, body, response, records):
        cursor = dig(body, self.cursor_path)
        if cursor in (None, "") or isinstance(cursor, (dict, list, bool)) or not records:
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

    def first(self, path, params):
        return PageRequest(path, {**params, self.offset_param: 0, self.limit_param: self.limit})

    def next(self, page, body, response, records):
        count = len(records)
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

    def first(self, path, params):
        params = {**params, self.page_param: self.start}
        if self.page_size is not None:
            params[self.page_size_param] = self.page_size
        return PageRequest(path, params)

    def next(self, page, body, response, records):
        if not records:
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


@dataclass(frozen=True)
class StartingAfterPaginator(Paginator):
    """Stripe's list APIs: ``limit`` a page, ``has_more`` in the body, and the last record's
    id sent back as ``starting_after``."""

    type: ClassVar[str] = "starting_after"
    settings: ClassVar[dict[str, str]] = {
        "limit": "records per page (default 100)",
        "limit_param": 'query parameter for the page size (default "limit")',
        "cursor_param": 'query parameter for the last id (default "starting_after")',
        "id_path": 'dotted path to a record\'s id (default "id")',
        "has_more_path": 'dotted path to the "more pages" flag (default "has_more")',
    }
    limit: int = 100
    limit_param: str = "limit"
    cursor_param: str = "starting_after"
    id_path: str = "id"
    has_more_path: str = "has_more"

    def first(self, path, params):
        return PageRequest(path, {self.limit_param: self.limit, **params})

    def next(self, page, body, response, records):
        if not records or not dig(body, self.has_more_path):
            return None
        last = dig(records[-1], self.id_path)
        if last in (None, "") or isinstance(last, (dict, list, bool)):
            return None
        return PageRequest(
            page.url, {**(page.params or {}), self.cursor_param: str(last)}, page.number + 1
        )


#: the most pages one walk of one list reads; a provider that keeps handing out new
#: cursors past it is treated as a pagination loop
MAX_PAGES = 10_000


class PagesSeen:
    """The pages one walk has asked for. A page asked for again (a loop, a cursor that
    never advances, a next link back to an earlier page) or a walk past ``MAX_PAGES``
    means the provider's pagination does not advance: ``advances`` says False, and the
    connector fails that connection instead of walking for ever."""

    def __init__(self, limit: int = MAX_PAGES):
        self.limit = limit
        self._keys: set[str] = set()

    def advances(self, url: str, params: Mapping[str, Any] | None) -> bool:
        key = repr((url, sorted((params or {}).items())))
        if key in self._keys or len(self._keys) >= self.limit:
            return False
        self._keys.add(key)
        return True


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


#: paginator type -> class, as a spec names them
PAGINATORS: dict[str, type[Paginator]] = {
    cls.type: cls
    for cls in (
        CursorPaginator,
        HeaderLinkPaginator,
        JsonLinkPaginator,
        OffsetPaginator,
        PageNumberPaginator,
        StartingAfterPaginator,
    )
}

__all__ = [
    "MAX_PAGES",
    "PAGINATORS",
    "CursorPaginator",
    "HeaderLinkPaginator",
    "JsonLinkPaginator",
    "OffsetPaginator",
    "PageNumberPaginator",
    "PageRequest",
    "PagesSeen",
    "Paginator",
    "StartingAfterPaginator",
    "dig",
]
