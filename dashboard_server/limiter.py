"""The failure limiter: an address that keeps guessing tokens gets 429 for its failures.

It refuses failures only, never a token that resolves: the surfaces resolve first and
ask the limiter after a lookup has failed. Each surface has a budget of its own (the
dashboard links one, the connect page's invites another), so guessing at one cannot
lock a client out of the other.
"""

from __future__ import annotations

import collections
import ipaddress
import threading
import time

#: past this many addresses, a failure also clears out those whose window has passed
_SWEEP_ABOVE = 10_000


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

    Only the latest ``max_failures`` are kept per address: the window holds more than the
    budget exactly when the oldest of them is still inside it, so a flood costs no memory.
    """

    def __init__(self, max_failures: int = 20, window_s: float = 60.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._hits: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def fail(self, remote_ip: str | None) -> bool:
        """Count one failed lookup by ``remote_ip``; whether it is now over its budget."""
        key = limiter_key(remote_ip or "")
        with self._lock:
            now = time.monotonic()
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) > _SWEEP_ABOVE:
                    self._sweep(now)
                # one more than the budget: the failure that goes over it is kept too
                hits = self._hits[key] = collections.deque(maxlen=self.max_failures + 1)
            hits.append(now)
            return len(hits) > self.max_failures and hits[0] > now - self.window_s

    def _sweep(self, now: float) -> None:
        for key in [k for k, hits in self._hits.items() if hits[-1] <= now - self.window_s]:
            del self._hits[key]
