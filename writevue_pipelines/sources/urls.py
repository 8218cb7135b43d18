"""The URL checks every source shares: a URL an operator or a spec file gives (http(s), a
host, no credentials), and a link a provider hands back (only to the base URL's origin)."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

#: what ``http_url_problem`` says of a value that is not an http(s) URL with a host
NOT_HTTP_URL = "is not an http(s) URL"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def http_url_problem(
    value: str, *, allow_query: bool = False, allow_fragment: bool = False
) -> str | None:
    """What is wrong with ``value`` as a base or endpoint URL, or None when nothing is.

    Credentials never belong in a URL (they would reach logs and proxies); a base URL
    with a query string or fragment would be silently mangled when paths are joined.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return NOT_HTTP_URL
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.query and not allow_query:
        return "must not carry a query string"
    if parts.fragment and not allow_fragment:
        return "must not carry a fragment"
    return None


class LeavesOrigin(ValueError):
    """A provider's link points away from the base URL's origin; ``host`` is where to."""

    def __init__(self, host: str | None):
        super().__init__(host)
        self.host = host


def same_origin_url(base_url: str, link: str) -> str:
    """A link from a provider (a next page) resolved against the base URL.

    Raises ``LeavesOrigin`` when it points to another scheme, host or port: the client
    attaches credentials to every request, so following it would hand them over.
    """
    resolved = urljoin(base_url.rstrip("/") + "/", link)
    base, target = urlsplit(base_url), urlsplit(resolved)
    if _origin(target) != _origin(base):
        raise LeavesOrigin(target.hostname)
    return resolved


def _origin(parts) -> tuple:
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: no origin of ours
        return (None, None, None)
    return (parts.scheme, parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme))
