"""The request log line: the token replaced by its link's id, no query string, the IP truncated.

A live link's page load and CSV download also go to the anonymised JSON-lines access
log (``access_log``) that the trends pipeline rolls up.
"""

from __future__ import annotations

import logging
import re

from tornado.httputil import HTTPServerRequest
from tornado.web import RequestHandler

from .access_log import AccessLog, Visitor
from .gate import GATE_PREFIX, GATED_PATH
from .redaction import truncate_ip

_CONNECT_PATH = re.compile(r"^/connect/([^/]*)(/.*)?$")
_UNSUBSCRIBE_PATH = re.compile(r"^/unsubscribe/[^/]*(/.*)?$")
#: a token elsewhere in a path than its place (a link pasted twice, its ``/d/`` mistyped):
#: 32 or more URL-safe characters in a row (a token has 43); a UUID (a link's id, a
#: brand's) is kept
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]{32,}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_access_log = logging.getLogger("tornado.access")
#: a path is logged up to this long: a refused 8 KiB one must not make an 8 KiB log line
LOGGED_PATH_MAX = 200


def redacted_path(request: HTTPServerRequest) -> str:
    """The path as logged: ``/d/<link:ID>…`` or ``/connect/<invite:ID>…``, never a token
    (wherever in the path it is), and never more than ``LOGGED_PATH_MAX`` characters."""
    path = _redacted_path(request)
    return path if len(path) <= LOGGED_PATH_MAX else path[: LOGGED_PATH_MAX - 1] + "…"


def _without_tokens(path: str) -> str:
    return _TOKEN_RUN.sub(lambda run: run[0] if _UUID.fullmatch(run[0]) else "<token>", path)


def _redacted_path(request: HTTPServerRequest) -> str:
    found = GATED_PATH.match(request.path)
    if not found:
        invite = _CONNECT_PATH.match(request.path)
        if invite:
            invite_id = getattr(request, "writevue_invite_id", None)
            tail = _without_tokens(invite.group(2) or "")
            return "/connect/" + (f"<invite:{invite_id}>" if invite_id else "<invite>") + tail
        if _UNSUBSCRIBE_PATH.match(request.path):
            return "/unsubscribe/<token>"
        return _without_tokens(request.path)
    link_id = getattr(request, "writevue_link_id", None)
    tail = _without_tokens(found.group(2) or "")
    return GATE_PREFIX + (f"<link:{link_id}>" if link_id else "<invalid>") + tail


def page_event(request: HTTPServerRequest, status: int) -> str | None:
    """``view`` for a dashboard page load, ``export`` for its CSV download, else None."""
    if status != 200 or request.method != "GET":
        return None
    link_id = getattr(request, "writevue_link_id", None)
    found = GATED_PATH.match(request.path)
    if link_id is None or found is None or found.group(2):
        return None
    return "export" if request.query_arguments.get("format") == [b"csv"] else "view"


def log_function(handler: RequestHandler, access_log: AccessLog | None = None) -> None:
    """The access log line: no query string, the token replaced, the IP truncated.

    With an ``access_log``, a page load or CSV download also becomes an access event.
    """
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    _access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        redacted_path(request),
        truncate_ip(request.remote_ip or ""),
        1000.0 * request.request_time(),
    )
    if access_log is not None and (event := page_event(request, status)):
        visitor = Visitor.from_request(request.remote_ip, request.headers)
        access_log.record(event, request.writevue_link_id, visitor)
