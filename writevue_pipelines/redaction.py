"""Keeping secrets out of log lines that libraries write about URLs.

httpx logs every request's full URL at INFO. A URL can carry an API key in its
query string (some providers take keys that way) or a dashboard token in its
path, so both are removed from httpx's (and httpcore's) records before any
handler sees them.
"""

from __future__ import annotations

import logging
import re

_QUERY = re.compile(r"(https?://[^\s\"'?#]+)\?[^\s\"'#]*")
_DASHBOARD_TOKEN = re.compile(r"/(d|connect|unsubscribe)/(?![<(])[^/\s?#'\"<>)\]]+")
_USERINFO = re.compile(r"(https?://)[^/\s@\"']+@")


def redact_urls(text: str) -> str:
    """Drop query strings, user-info and dashboard and invite tokens from every URL in ``text``."""
    text = _QUERY.sub(r"\1?<redacted>", text)
    text = _USERINFO.sub(r"\1<redacted>@", text)
    return _DASHBOARD_TOKEN.sub(r"/\1/<redacted>", text)


class UrlRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact_urls(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = UrlRedactingFilter()


# A logger's filters do not see records propagated from its children, so each logger
# that writes URLs or headers is named.
_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "authlib",
    "authlib.integrations.httpx_client",
)


def install() -> None:
    """Attach the filter to the loggers of the HTTP libraries WriteVue uses (idempotent).

    httpcore's DEBUG lines dump whole response headers (a ``Link`` header can repeat a
    query-string key), so httpcore is also held at INFO, where it writes nothing.
    """
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    httpcore = logging.getLogger("httpcore")
    if httpcore.level < logging.INFO:
        httpcore.setLevel(logging.INFO)
