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
it. That is the in-memory ``FailureLimiter``'s rule, which each process also keeps.

The limiter runs on the dashboard's event loop, so the warehouse must never make it
wait: each process counts in memory first (its own failures are some of the shared
ones, so over budget here is over budget everywhere, answered without a write); the
warehouse's statement waits at most a tenth of a second for a lock (SQLite's write lock,
a PostgreSQL row or table lock) before this process counts alone; and while it counts
alone it asks the warehouse again only every few seconds.

No address is stored: the ring's key is an HMAC of the limiter key under a key
derived from the session secret, which the database (or a copy of it) does not hold.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import threading
import time
import weakref
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, create_engine, delete, event, text

from writevue_pipelines.database import Database
from writevue_pipelines.models import GuessFailure
from writevue_pipelines.runtime import Runtime

#: past this many addresses, a failure also clears out those whose window has passed
_SWEEP_ABOVE = 10_000
#: the surfaces, each with a budget of its own
SURFACES = ("links", "invites", "unsubscribe")
_log = logging.getLogger("writevue.limiter")
#: how long the warehouse's statement may wait for a lock: the event loop waits with it
_LOCK_WAIT_MS = 100
#: PostgreSQL: the whole statement, lock waits included (a sweep of a window's rows too)
_STATEMENT_MS = 200
#: while the warehouse cannot count, it is asked again this often (seconds)
_RETRY_S = 5.0

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
    for longer than ``_LOCK_WAIT_MS``), this process counts alone, says so in its log and
    asks the warehouse again every ``retry_s`` seconds."""

    def __init__(
        self,
        runtime: Runtime,
        surface: str,
        max_failures: int = 20,
        window_s: float = 60.0,
        *,
        retry_s: float = _RETRY_S,
    ):
        if surface not in SURFACES:
            raise ValueError(f"unknown limiter surface {surface!r}")
        super().__init__(max_failures, window_s)
        self.runtime, self.surface, self.retry_s = runtime, surface, retry_s
        self._next_sweep = 0.0
        self._hash_key: tuple[str, bytes] | None = None
        self._degraded = False
        self._retry_at = 0.0

    def fail(self, remote_ip: str | None) -> bool:
        if super().fail(remote_ip):
            return True  # over by this process's own count: over everywhere, no write
        if self._degraded and time.monotonic() < self._retry_at:
            return False
        try:
            over = self.count(limiter_key(remote_ip or ""), time.time())
        except Exception as exc:
            self._retry_at = time.monotonic() + self.retry_s
            if not self._degraded:
                _log.error(
                    "the %s limiter cannot count in the warehouse (%s); counting in this "
                    "process only until it can",
                    self.surface,
                    type(exc).__name__,
                )
                self._degraded = True
            return False
        if self._degraded:
            _log.info("the %s limiter counts in the warehouse again", self.surface)
            self._degraded = False
        return over

    def count(self, key: str, now: float) -> bool:
        """Record one failure of ``key`` at ``now`` (Unix seconds); whether it is over budget.
        Once a window, the rows older than it go (any process's), in a second transaction
        so that a slow sweep never loses the count."""
        values = {"surface": self.surface, "key": self.key_hmac(key), "ring": self.max_failures}
        with _quick_transaction(self.runtime.db) as conn:
            previous = conn.execute(_COUNT_FAILURE, {**values, "now": now}).scalar()
        if now >= self._next_sweep:
            self._next_sweep = now + self.window_s
            try:
                with _quick_transaction(self.runtime.db) as conn:
                    conn.execute(delete(GuessFailure).where(GuessFailure.at < now - self.window_s))
            except Exception as exc:  # the next window's sweep takes these rows too
                _log.warning(
                    "the %s limiter could not sweep (%s)", self.surface, type(exc).__name__
                )
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


# SQLite: the warehouse's own engine waits up to 30 s for the write lock (right for a
# refresh, wrong for the event loop), so the limiter has an engine of its own per warehouse
# whose connections wait ``_LOCK_WAIT_MS``. PostgreSQL: the warehouse's engine, with the
# waits bounded for the limiter's transaction only (SET LOCAL).
_SQLITE_ENGINES: weakref.WeakKeyDictionary[Database, Engine] = weakref.WeakKeyDictionary()
_SQLITE_ENGINES_LOCK = threading.Lock()


@contextlib.contextmanager
def _quick_transaction(db: Database) -> Iterator[Connection]:
    """A transaction whose statements wait at most a moment for a lock, then raise."""
    if not db.is_sqlite:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_LOCK_WAIT_MS}ms'")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = '{_STATEMENT_MS}ms'")
            yield conn
        return
    with _SQLITE_ENGINES_LOCK:
        engine = _SQLITE_ENGINES.get(db)
        if engine is None:
            engine = _SQLITE_ENGINES[db] = _sqlite_engine(db.url)
    with engine.begin() as conn:
        yield conn


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": _LOCK_WAIT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is ours (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_LOCK_WAIT_MS}")
        # as the warehouse's engine: deleted rows are overwritten with zeros; in WAL mode
        # NORMAL never corrupts (database.py)
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        # the write lock at BEGIN, where busy_timeout waits for it (a transaction that
        # asks for it later, after reading, may be refused at once)
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
