"""The failure limiter: an address that keeps guessing tokens gets 429 for its failures.

It refuses failures only, never a token that resolves: the surfaces resolve first and
ask the limiter after a lookup has failed. Each surface has a budget of its own (the
dashboard links one, the connect page's invites another, the unsubscribe page a third),
so guessing at one cannot lock a client out of another.

The budget is shared by every dashboard process (``SharedLimiter``): failures are
counted in the warehouse (PostgreSQL in production, the SQLite file embedded), so
guesses spread over the processes behind a load balancer spend one budget. Per
address and surface the table holds a ring of the latest ``max_failures`` failures;
a failure overwrites the oldest and, in the same statement, reads when that one
happened: more than ``max_failures`` in the window exactly when it is still inside
it. That is the in-memory ``FailureLimiter``'s rule, which each process keeps as its
fallback while the warehouse cannot count.

No address is stored: the ring's key is an HMAC of the limiter key under a key
derived from the session secret, which the database (or a copy of it) does not hold.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import threading
import time

from sqlalchemy import delete, text

from writevue_pipelines.models import GuessFailure
from writevue_pipelines.runtime import Runtime

#: past this many addresses, a failure also clears out those whose window has passed
_SWEEP_ABOVE = 10_000
#: the surfaces, each with a budget of its own
SURFACES = ("links", "invites", "unsubscribe")
_log = logging.getLogger("writevue.limiter")

# One statement per failure, the same on PostgreSQL and SQLite: number the failure after
# this key's latest, put it in its slot of the ring (replacing the failure ``ring``
# failures ago) and return when that one was. Two processes numbering the same failure
# at once: the second updates nothing (``seq`` is not newer) and counts as under budget.
_COUNT_FAILURE = text(
    """
    INSERT INTO guess_failures (surface, key_hmac, slot, seq, at)
    SELECT CAST(:surface AS VARCHAR(16)), CAST(:key AS VARCHAR(32)),
           (COALESCE(MAX(seq), 0) + 1) % :ring, COALESCE(MAX(seq), 0) + 1, :now
    FROM guess_failures WHERE surface = :surface AND key_hmac = :key
    ON CONFLICT (surface, key_hmac, slot) DO UPDATE
    SET seq = excluded.seq, at = excluded.at, previous_at = guess_failures.at
    WHERE guess_failures.seq < excluded.seq
    RETURNING previous_at
    """
)


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
    On its own it serves one process (and tests); ``SharedLimiter`` falls back on it.
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


class SharedLimiter(FailureLimiter):
    """``FailureLimiter``'s rule for one surface, counted in the warehouse: one budget for
    every dashboard process. While the warehouse cannot count (it is down, or locked
    for longer than a query waits), this process counts alone and says so in its log."""

    def __init__(
        self,
        runtime: Runtime,
        surface: str,
        max_failures: int = 20,
        window_s: float = 60.0,
    ):
        if surface not in SURFACES:
            raise ValueError(f"unknown limiter surface {surface!r}")
        super().__init__(max_failures, window_s)
        self.runtime, self.surface = runtime, surface
        self._next_sweep = 0.0
        self._hash_key: tuple[str, bytes] | None = None
        self._degraded = False

    def fail(self, remote_ip: str | None) -> bool:
        try:
            over = self.count(limiter_key(remote_ip or ""), time.time())
        except Exception as exc:
            if not self._degraded:
                _log.error(
                    "the %s limiter cannot count in the warehouse (%s); counting in this "
                    "process only until it can",
                    self.surface,
                    type(exc).__name__,
                )
                self._degraded = True
            return super().fail(remote_ip)
        if self._degraded:
            _log.info("the %s limiter counts in the warehouse again", self.surface)
            self._degraded = False
        return over

    def count(self, key: str, now: float) -> bool:
        """Record one failure of ``key`` at ``now`` (Unix seconds); whether it is over budget.
        Once a window, the rows older than it go (any process's)."""
        values = {"surface": self.surface, "key": self.key_hmac(key), "ring": self.max_failures}
        with self.runtime.db.locked_session() as session:  # SQLite: the write lock at BEGIN
            previous = session.execute(_COUNT_FAILURE, {**values, "now": now}).scalar()
            if now >= self._next_sweep:
                self._next_sweep = now + self.window_s
                session.execute(delete(GuessFailure).where(GuessFailure.at < now - self.window_s))
        return previous is not None and previous > now - self.window_s

    def key_hmac(self, key: str) -> str:
        """What the table keeps of a limiter key: HMAC-SHA256 under a key derived from the
        session secret (so the same in every process of a deployment), truncated."""
        secret = self.runtime.session_secret
        if self._hash_key is None or self._hash_key[0] != secret:
            derived = hmac.new(secret.encode(), b"writevue guess limiter", hashlib.sha256)
            self._hash_key = (secret, derived.digest())
        return hmac.new(self._hash_key[1], key.encode(), hashlib.sha256).hexdigest()[:32]


def shared_limiters(runtime: Runtime) -> dict[str, SharedLimiter]:
    """One limiter per surface, each with the budget ``WRITEVUE_GUESS_LIMIT`` says."""
    limit = runtime.settings.guess_limit
    return {surface: SharedLimiter(runtime, surface, limit) for surface in SURFACES}
