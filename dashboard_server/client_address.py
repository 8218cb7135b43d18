"""The client's address behind a proxy: believed from the proxy's headers only when the
connection comes from a proxy listed in ``WRITEVUE_TRUSTED_PROXIES``.

Behind nginx every request arrives from nginx's address, so the guessing limiter would
count every client as one and the access log would show the proxy. nginx names the client
in ``X-Forwarded-For`` (and ``X-Real-IP``); anyone can send those headers, so they count
only from a trusted proxy. The client is the right-most ``X-Forwarded-For`` entry that is
not itself a trusted proxy (entries further left are whatever the client wrote). One
routing rule ahead of every route rewrites ``request.remote_ip`` before anything reads it:
the gate's limiter, the session binding, the request and access logs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tornado import routing
from tornado.httputil import HTTPServerRequest
from tornado.web import Application

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(peer: str | None, headers, trusted: Sequence[Network]) -> str | None:
    """The address a request is counted under: ``peer``, or the client a trusted proxy names."""

    def is_trusted(address) -> bool:
        return address is not None and any(address in net for net in trusted)

    if not is_trusted(_address(peer or "")):
        return peer
    chain = headers.get("X-Forwarded-For", "")
    for item in reversed(chain.split(",") if chain.strip() else []):
        hop = _address(item)
        if hop is None:  # garbage where an address should be: the chain vouches for no one
            return peer
        if not is_trusted(hop):
            return str(hop)
    real = _address(headers.get("X-Real-IP", ""))
    return str(real) if real is not None else peer


class TrustedProxyMatcher(routing.Matcher):
    """Matches nothing; on the way, puts the client's address on the request."""

    def __init__(self, trusted: Sequence[Network]):
        self.trusted = tuple(trusted)

    def match(self, request: HTTPServerRequest) -> None:
        request.remote_ip = client_address(request.remote_ip, request.headers, self.trusted)
        return None


def install_client_address(app: Application, trusted: Sequence[Network]) -> None:
    """Ahead of every route of ``app``: believe ``trusted`` proxies about the client."""
    if trusted:
        app.default_router.rules.insert(0, routing.Rule(TrustedProxyMatcher(trusted), None))
