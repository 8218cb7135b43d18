"""The one check for a URL an operator or a spec file gives: http(s), a host, no credentials."""

from __future__ import annotations

from urllib.parse import urlsplit


def http_url_problem(
    value: str, *, allow_query: bool = False, allow_fragment: bool = False
) -> str | None:
    """What is wrong with ``value`` as a base or endpoint URL, or None when nothing is.

    Credentials never belong in a URL (they would reach logs and proxies); a base URL
    with a query string or fragment would be silently mangled when paths are joined.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.query and not allow_query:
        return "must not carry a query string"
    if parts.fragment and not allow_fragment:
        return "must not carry a fragment"
    return None
