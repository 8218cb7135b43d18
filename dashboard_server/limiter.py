"""The failure limiter: an address that keeps guessing tokens (links or invites) gets 429s."""

from __future__ import annotations

import collections
import ipaddress
import threading
import time


def limiter_key(ip: str) -> str:
    """Rate-limit key: a whole IPv4 address (a /24 may be an office), an IPv6 /64 (one host)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "-"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False).network_address)
    return str(addr)


class FailureLimiter:
    """Failed lookups per address in a sliding window; in memory, per process.

    One limiter serves the whole server, so a wrong invite and a wrong link cost the
    same address a failure in the same window.
    """

    def __init__(self, max_failures: int = 20, window_s: float = 60.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._hits: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def _window(self, key: str, now: float) -> collections.deque:
        hits = self._hits.setdefault(key, collections.deque())
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def blocked(self, remote_ip: str | None) -> bool:
        """Whether the client at ``remote_ip`` has used up its failures for now."""
        key = limiter_key(remote_ip or "")
        with self._lock:
            hits = self._window(key, time.monotonic())
            if not hits:
                self._hits.pop(key, None)
            return len(hits) >= self.max_failures

    def fail(self, remote_ip: str | None) -> None:
        """Count one failed lookup against the client at ``remote_ip``."""
        key = limiter_key(remote_ip or "")
        with self._lock:
            now = time.monotonic()
            self._window(key, now).append(now)
