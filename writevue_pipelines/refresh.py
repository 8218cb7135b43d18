"""A refresh, in two steps that Dagster runs as two assets (and the CLI can run directly).

1. ``fetch``: read a connection's source incrementally from its cursor (less a
   lookback for late data) into transient staging.
2. ``load``: aggregate the staged records with polars, check that the facts are
   aggregates (``aggregates_only``: declared categorical dimension, cap, no personal
   identifiers, declared metrics), and upsert them, advancing the cursor in the same
   commit; the staged raw records are then deleted.

A refresh run (``refresh_connections``) hands each connection's records from its fetch
to its load in memory, as long as those waiting for a load stay under
``WRITEVUE_STAGING_MEMORY_MB``; past that (the loads fall behind, say while another run
holds the database's write lock), and for a fetch run on its own, they are staged on disk
under ``WRITEVUE_HOME/staging``.

Staged raw records never sit readable on disk: ``records.parquet`` holds the records'
Arrow IPC stream (zstd; the file keeps its first name) sealed with AES-256-GCM under a
key made when the run's process starts (or is forked) and held only in its memory
(``_RUN_KEY``). Fetch and load run in the same process (one Dagster step, one CLI
command), so the run reads back what it staged; a run that dies in between leaves
ciphertext whose key died with it, which nobody can read (the load of a later run
refuses it: fetch again), and the retention sweep removes it. Records handed over in
memory die with the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import httpx
import polars as pl
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from . import registry, warehouse
from .aggregates_only import AggregatesRefused, FactsProfile, check_profile, profile_facts
from .errors import CredentialRejected, SourceError, WriteVueError
from .models import Connection, SyncCursor
from .registry import ConnectionInfo
from .runtime import Runtime
from .sources import FetchRequest, get_source
from .sources.base import Source
from .sources.http import open_client
from .vault import VaultError

RECORDS_FILE = "records.parquet"  # a sealed Arrow IPC stream (see the module docstring)


class NotRefreshed(SourceError):
    """The connection is paused, disabled or being removed: nothing was fetched for it."""


@dataclass(frozen=True)
class FetchSummary:
    connection_id: str
    records: int
    requests: int
    latency_s: float
    window_start: str
    next_cursor: str | None


@dataclass(frozen=True)
class LoadSummary:
    connection_id: str
    facts: int
    written: int
    removed: int
    days: int
    first_day: str | None
    last_day: str | None


def _staging_dir(runtime: Runtime, connection_id: str) -> Path:
    return runtime.settings.staging_dir / connection_id


#: the key staged records are sealed with: made per process (a run), never written down
_RUN_KEY = AESGCM(AESGCM.generate_key(bit_length=256))


def _new_run_key() -> None:
    global _RUN_KEY
    _RUN_KEY = AESGCM(AESGCM.generate_key(bit_length=256))


# A run forked from a process that imported this module (the code server's forkserver
# forks every run from one) makes a key of its own: an inherited one would let a later
# run read what an earlier run that died left staged.
os.register_at_fork(after_in_child=_new_run_key)
_SEALED = b"WVSEAL1\n"  # what a sealed staging file starts with (so no format sniffs it)
_NONCE_BYTES = 12


def _seal(connection_id: str, name: str, data: bytes) -> bytes:
    """``data`` encrypted under this run's key, bound to the connection and file name."""
    nonce = os.urandom(_NONCE_BYTES)
    binding = f"{connection_id}/{name}".encode()
    return _SEALED + nonce + _RUN_KEY.encrypt(nonce, data, binding)


def _unseal(connection_id: str, name: str, sealed: bytes) -> bytes:
    header, nonce_end = len(_SEALED), len(_SEALED) + _NONCE_BYTES
    try:
        if not sealed.startswith(_SEALED):
            raise InvalidTag
        binding = f"{connection_id}/{name}".encode()
        return _RUN_KEY.decrypt(sealed[header:nonce_end], sealed[nonce_end:], binding)
    except InvalidTag:
        raise SourceError.of_connection(
            connection_id,
            "its staged records were sealed by another run (one that stopped before loading "
            "them) and cannot be read; fetch it again",
        ) from None


def write_staged_records(runtime: Runtime, connection_id: str, records: pl.DataFrame) -> None:
    """Stage a connection's raw records: serialised in memory and sealed under this run's
    key before a byte reaches the disk."""
    buffer = io.BytesIO()
    # An Arrow IPC stream: written and read back in under half the CPU of parquet (or
    # of the IPC file format), and as small with zstd.
    records.write_ipc_stream(buffer, compression="zstd")
    sealed = _seal(connection_id, RECORDS_FILE, buffer.getbuffer().tobytes())
    _write_private(_staging_dir(runtime, connection_id) / RECORDS_FILE, sealed)


def read_staged_records(runtime: Runtime, connection_id: str) -> pl.DataFrame:
    """A connection's staged raw records, which only the run that staged them can read
    (a ``SourceError`` saying to fetch again otherwise)."""
    sealed = (_staging_dir(runtime, connection_id) / RECORDS_FILE).read_bytes()
    return pl.read_ipc_stream(io.BytesIO(_unseal(connection_id, RECORDS_FILE, sealed)))


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically (a temporary file, then a rename), readable by us only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(tmp, path)


def window_start(runtime: Runtime, cursor: str | None, *, today: dt.date | None = None) -> dt.date:
    """First day to fetch: whole days from the cursor less the lookback, or the history."""
    today = today or dt.datetime.now(dt.UTC).date()
    settings = runtime.settings
    if cursor is None:
        return today - dt.timedelta(days=settings.history_days)
    try:
        seen = dt.datetime.fromtimestamp(int(cursor), dt.UTC).date()
    except ValueError:
        seen = dt.date.fromisoformat(cursor[:10])
    return min(today, seen) - dt.timedelta(days=settings.lookback_days)


NEEDS_RECONNECT = "needs_reauth"  # the status OAuth2 connections already use (oauth.tokens)


def safe_error(exc: BaseException) -> str:
    """An error text that may be stored and shown: our own messages, or just the type."""
    if isinstance(exc, CredentialRejected):
        return f"needs reconnect: {exc}"
    if isinstance(exc, WriteVueError):
        return str(exc)
    return f"unexpected {type(exc).__name__}; see the run's logs"


def stored_secrets(session, runtime: Runtime, connection: ConnectionInfo) -> dict[str, str]:
    """A connection's decrypted credentials; one that cannot be decrypted needs reconnecting.

    A ciphertext copied from another row, or sealed under a key since removed from the
    ring, never decrypts: no retry helps, so it is reported like a refused credential,
    naming the connection and what to do, never the ciphertext.
    """
    try:
        return registry.get_secrets(session, runtime.keys, connection)
    except VaultError:
        how = (
            f"`writevue connection authorize {connection.tenant_id} {connection.source} "
            f"--reconnect {connection.id}`"
            if connection.auth_kind == "oauth2"
            else f"`writevue connection rekey {connection.id}`"
        )
        raise CredentialRejected.of_connection(
            connection.id,
            f"its stored {connection.auth_kind} credential could not be decrypted (it was not "
            "sealed for this connection, or its key is no longer in the key ring); "
            f"re-enter it with {how}",
        ) from None


async def fetch_connections(
    runtime: Runtime,
    connection_ids: list[str],
    *,
    on_staged: Callable[[FetchSummary], None] | None = None,
    on_failed: Callable[[str, BaseException], None] | None = None,
    handoff: Handoff | None = None,
) -> dict[str, FetchSummary | BaseException]:
    """Fetch several connections concurrently, one HTTP client per source and base URL.

    A failure is returned for its connection instead of raised, so one connection
    never stops the others. ``on_staged`` is called (in the event loop) as soon as a
    connection's records are staged, while the others are still being fetched;
    ``on_failed`` as soon as a connection's fetch has failed. With a ``handoff``,
    records it has room for wait in memory for ``load_connection`` with the same one;
    the others (and all of them without one) are staged on disk.
    """
    results: dict[str, FetchSummary | BaseException] = {}
    with runtime.db.session() as session:
        # Each connection's row and cursors in one query per batch, not one per connection.
        rows, cursors = _batch_rows(session, connection_ids)
        loaded = {row.id for row in rows}
        work = []
        for connection_id in connection_ids:
            connection = registry.get_connection(session, connection_id)  # a row of `rows`
            if connection.status in registry.NOT_REFRESHED:
                # A run requested before a pause or a removal: no request with a credential
                # being revoked, no figures over the ones a paused connection shows.
                results[connection.id] = exc = NotRefreshed.of_connection(
                    connection.id, f"{connection.status}; not refreshed"
                )
                if on_failed is not None:
                    on_failed(connection.id, exc)
                continue
            try:
                secrets = stored_secrets(session, runtime, connection)
            except CredentialRejected as exc:
                results[connection.id] = exc  # this connection only; the others go on
                if on_failed is not None:
                    on_failed(connection.id, exc)
                continue
            stream = get_source(connection.source).stream
            if connection.id in loaded:
                cursor = cursors.get((connection.id, stream))
            else:  # asked for by an id spelled otherwise than stored
                cursor = registry.get_cursor(session, connection.id, stream)
            work.append((connection, secrets, cursor))

    async with _Clients(runtime) as clients:

        async def one(connection: ConnectionInfo, secrets: dict, cursor: str | None):
            start = window_start(runtime, cursor)
            try:
                source = get_source(connection.source)
                request = _fetch_request(runtime, connection, secrets, start, cursor)
                result = await source.fetch(clients.client_for(connection), request)
                results[connection.id] = summary = _stage(
                    runtime, connection, start, result, handoff
                )
            except Exception as exc:
                results[connection.id] = exc
                if on_failed is not None:
                    on_failed(connection.id, exc)
                return
            if on_staged is not None:
                on_staged(summary)

        await asyncio.gather(*(one(*item) for item in work))
    return results


def _batch_rows(session, connection_ids: list[str]) -> tuple[list, dict[tuple[str, str], str]]:
    """The batch's connection rows, loaded into ``session`` (so ``registry.get_connection``
    reads them from it; held by the list returned, as the session keeps them only while
    referenced), and every cursor of theirs: ``(connection id, stream) -> value``."""
    rows: list = []
    cursors: dict[tuple[str, str], str] = {}
    for start in range(0, len(connection_ids), _BATCH_QUERY_IDS):
        ids = connection_ids[start : start + _BATCH_QUERY_IDS]
        rows += session.scalars(select(Connection).where(Connection.id.in_(ids))).all()
        found = session.execute(
            select(SyncCursor.connection_id, SyncCursor.stream, SyncCursor.value).where(
                SyncCursor.connection_id.in_(ids)
            )
        )
        cursors.update(((connection, stream), value) for connection, stream, value in found)
    return rows, cursors


#: ids per query of ``_batch_rows`` (well under SQLite's limit on bound parameters)
_BATCH_QUERY_IDS = 500


class _Clients:
    """The HTTP clients of one batch, shared by its connections, closed at the end."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._clients: dict[tuple, httpx.AsyncClient] = {}

    def client_for(self, connection: ConnectionInfo) -> httpx.AsyncClient:
        source = get_source(connection.source)
        base_url = source.base_url(connection)
        allow = tuple(source.allowed_writes(connection))
        # One client (one pool) per provider and base URL: the provider's in-flight limit
        # is shared by every client of it anyway.
        key = (source.name, base_url, allow)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = open_client(
                base_url=base_url,
                allow=allow,
                provider=source.name,
                max_in_flight=source.max_in_flight,
                timeout=httpx.Timeout(self.runtime.settings.http_timeout_s, connect=10.0),
            )
        return client

    async def __aenter__(self) -> _Clients:
        return self

    async def __aexit__(self, *exc) -> None:
        for client in self._clients.values():
            await client.aclose()


def _fetch_request(
    runtime: Runtime,
    connection: ConnectionInfo,
    secrets: dict[str, str],
    start: dt.date,
    cursor: str | None,
) -> FetchRequest:
    tokens = None
    if connection.auth_kind == "oauth2":
        from .oauth.tokens import token_source

        tokens = token_source(runtime, connection, secrets)
    auth = get_source(connection.source).build_auth(connection, secrets, tokens)
    return FetchRequest(connection=connection, auth=auth, window_start=start, cursor=cursor)


@dataclass(frozen=True)
class CheckResult:
    connection_id: str
    records: int
    requests: int
    latency_s: float


def check_connection(runtime: Runtime, connection_id: str, *, days: int = 1) -> CheckResult:
    """Read the last ``days`` of a connection to prove it works; nothing is kept.

    The records are counted and dropped (no staging, no warehouse, no cursor), so a
    test never changes what the client sees. Errors are raised as ``SourceError``.
    """
    with runtime.db.session() as session:
        connection = registry.get_connection(session, connection_id)
        secrets = stored_secrets(session, runtime, connection)
    return _check(runtime, connection, secrets, days)


def check_credentials(
    runtime: Runtime,
    tenant_id: str,
    source_name: str,
    auth_kind: str,
    options: dict[str, str],
    secrets: dict[str, str],
) -> CheckResult:
    """``check_connection`` for credentials not saved yet: one read of the last day.

    Raises ``CredentialRejected`` when the source refuses them, and ``SourceError`` when
    it cannot say (unreachable, rate limited, failing): the caller saves nothing either way.
    """
    connection = ConnectionInfo(
        id=str(uuid.uuid4()),  # provisional: named in errors, never stored
        tenant_id=tenant_id,
        source=get_source(source_name).name,
        auth_kind=auth_kind,
        options=dict(options),
        status="active",
        last_error=None,
        last_refreshed_at=None,
    )
    return _check(runtime, connection, secrets, 1)


def _check(
    runtime: Runtime, connection: ConnectionInfo, secrets: dict[str, str], days: int
) -> CheckResult:
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)

    async def read() -> CheckResult:
        async with _Clients(runtime) as clients:
            request = _fetch_request(runtime, connection, secrets, start, None)
            source = get_source(connection.source)
            result = await source.fetch(clients.client_for(connection), request)
        return CheckResult(
            connection.id, result.records.height, result.requests, round(result.latency_s, 3)
        )

    return asyncio.run(read())


class Handoff:
    """Fetched records waiting in memory for their load, within a budget of bytes (as
    held: compressed). Filled by the fetches in the event loop and emptied by the loads
    on their thread; what does not fit is staged on disk."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.held_bytes = 0
        self._waiting: dict[str, tuple[bytes, dict]] = {}
        self._lock = threading.Lock()

    def keep(self, connection_id: str, records: pl.DataFrame, manifest: dict) -> bool:
        """Hold a connection's records and manifest if they fit (in place of any held for
        it already); False if they do not."""
        if self.held_bytes >= self.budget_bytes:
            return False  # full: not worth compressing
        # Held as an lz4 Arrow IPC stream, a fraction of the frame's memory (1/8 of the
        # benchmark's; frames held as they are made grew each worker's RSS by tens of MB),
        # for ~0.1 ms a connection.
        buffer = io.BytesIO()
        records.write_ipc_stream(buffer, compression="lz4")
        packed = buffer.getvalue()
        with self._lock:
            replaced = self._waiting.pop(connection_id, None)
            if replaced is not None:
                self.held_bytes -= len(replaced[0])
            if self.held_bytes + len(packed) > self.budget_bytes:
                return False
            self.held_bytes += len(packed)
            self._waiting[connection_id] = (packed, manifest)
        return True

    def take(self, connection_id: str) -> tuple[pl.DataFrame, dict] | None:
        """A connection's held records and manifest, let go of; None if none are held."""
        with self._lock:
            waiting = self._waiting.pop(connection_id, None)
            if waiting is None:
                return None
            packed, manifest = waiting
            self.held_bytes -= len(packed)
        return pl.read_ipc_stream(io.BytesIO(packed)), manifest


def _stage(
    runtime: Runtime,
    connection: ConnectionInfo,
    start: dt.date,
    result,
    handoff: Handoff | None = None,
) -> FetchSummary:
    summary = FetchSummary(
        connection_id=connection.id,
        records=result.records.height,
        requests=result.requests,
        latency_s=round(result.latency_s, 3),
        window_start=start.isoformat(),
        next_cursor=result.next_cursor,
    )
    # The manifest holds counts, the window, the cursor and the source: no record.
    manifest = asdict(summary) | {"source": connection.source, "staged_at": time.time()}
    if handoff is not None and handoff.keep(connection.id, result.records, manifest):
        return summary
    folder = _staging_dir(runtime, connection.id)
    folder.mkdir(parents=True, exist_ok=True)
    write_staged_records(runtime, connection.id, result.records)
    _write_private(folder / "manifest.json", json.dumps(manifest).encode())
    return summary


@dataclass(frozen=True)
class RefreshOutcome:
    """One connection's refresh: what was fetched and loaded, or the error that stopped it.

    ``fetched`` without ``loaded`` means the fetch succeeded and the load failed.
    """

    connection_id: str
    fetched: FetchSummary | None = None
    loaded: LoadSummary | None = None
    error: BaseException | None = None


def refresh_connections(
    runtime: Runtime,
    connection_ids: list[str],
    *,
    on_done: Callable[[RefreshOutcome], None] | None = None,
) -> dict[str, RefreshOutcome]:
    """Fetch and load several connections, each loaded as soon as its fetch is staged.

    The loads run one at a time on a thread of their own, overlapping the fetches that
    are still waiting on the network, so a batch costs about its fetch time rather than
    fetch plus load, and a load waiting for the database's write lock (another batch
    is writing) never stalls the fetches. Each load takes every connection staged since
    the previous one began (``load_connections``: one aggregation and one transaction
    for them all), so the loads keep up with the fetches however many finish together.
    Records reach their load in memory while
    those waiting fit in ``WRITEVUE_STAGING_MEMORY_MB``, through sealed staging on disk
    past it. A failure is returned for its connection.
    ``on_done`` is called with each connection's outcome as soon as it is known (in the
    calling thread, which runs the event loop): progress for whoever started the batch.
    """
    return asyncio.run(_refresh_connections(runtime, connection_ids, on_done))


async def _refresh_connections(
    runtime: Runtime,
    connection_ids: list[str],
    on_done: Callable[[RefreshOutcome], None] | None = None,
) -> dict[str, RefreshOutcome]:
    loop = asyncio.get_running_loop()
    budget = runtime.settings.staging_memory_mb * 1024 * 1024
    handoff = Handoff(budget) if budget else None
    loads: dict[str, asyncio.Future] = {}
    staged: dict[str, FetchSummary] = {}
    waiting: list[str] = []  # staged, for the loader's next batch
    loading = False

    def done(outcome: RefreshOutcome) -> None:
        if on_done is not None:
            # Progress is for show: a listener that breaks never fails the refresh.
            with contextlib.suppress(Exception):
                on_done(outcome)

    def fetch_failed(connection_id: str, exc: BaseException) -> None:
        done(RefreshOutcome(connection_id, error=exc))

    def load_finished(connection_id: str, result: LoadSummary | BaseException) -> None:
        future = loads[connection_id]
        if isinstance(result, BaseException):
            future.set_exception(result)
            done(RefreshOutcome(connection_id, fetched=staged[connection_id], error=result))
        else:
            future.set_result(result)
            done(RefreshOutcome(connection_id, fetched=staged[connection_id], loaded=result))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writevue-load") as loader:

        def load_next() -> None:
            # One load at a time, of every connection staged since the last one began
            # (up to LOAD_BATCH): a connection staged while the loader is idle is loaded
            # at once, and those staged while it works share its next transaction.
            nonlocal loading
            if loading or not waiting:
                return
            batch = waiting[:LOAD_BATCH]
            del waiting[:LOAD_BATCH]
            loading = True
            future = loop.run_in_executor(
                loader, partial(load_connections, runtime, batch, handoff=handoff)
            )
            future.add_done_callback(partial(batch_finished, batch))

        def batch_finished(batch: list[str], future: asyncio.Future) -> None:
            nonlocal loading
            loading = False
            if future.cancelled():
                for connection_id in batch:
                    loads[connection_id].cancel()
            else:
                failed = future.exception()
                results = dict.fromkeys(batch, failed) if failed else future.result()
                for connection_id in batch:
                    load_finished(connection_id, results[connection_id])
            load_next()

        def load_when_staged(summary: FetchSummary) -> None:
            staged[summary.connection_id] = summary
            loads[summary.connection_id] = loop.create_future()
            waiting.append(summary.connection_id)
            load_next()

        try:
            fetched = await fetch_connections(
                runtime,
                connection_ids,
                on_staged=load_when_staged,
                on_failed=fetch_failed,
                handoff=handoff,
            )
        finally:
            # Every started load finishes (or fails) before the batch is over.
            settled = await asyncio.gather(*loads.values(), return_exceptions=True)
    loaded = dict(zip(loads, settled, strict=True))
    outcomes = {}
    for connection_id in connection_ids:
        summary = fetched[connection_id]
        if isinstance(summary, BaseException):
            outcomes[connection_id] = RefreshOutcome(connection_id, error=summary)
            continue
        result = loaded[connection_id]
        if isinstance(result, BaseException):
            outcomes[connection_id] = RefreshOutcome(connection_id, fetched=summary, error=result)
        else:
            outcomes[connection_id] = RefreshOutcome(connection_id, fetched=summary, loaded=result)
    return outcomes


def load_connection(
    runtime: Runtime, connection_id: str, *, handoff: Handoff | None = None
) -> LoadSummary:
    """Aggregate a connection's staged records into the warehouse, then drop them: those
    ``handoff`` holds for it, or else those staged on disk. Raises what stopped it."""
    outcome = load_connections(runtime, [connection_id], handoff=handoff)[connection_id]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


#: connections one load takes at most (a run's loader takes those staged meanwhile)
LOAD_BATCH = 25


@dataclass
class _Staged:
    """A connection's records taken for its load, with their manifest and source."""

    connection_id: str
    records: pl.DataFrame
    manifest: dict
    source: Source
    facts: pl.DataFrame | None = None
    profile: FactsProfile | None = None


def load_connections(
    runtime: Runtime, connection_ids: list[str], *, handoff: Handoff | None = None
) -> dict[str, LoadSummary | BaseException]:
    """``load_connection`` for several connections at once: each one's outcome (its
    ``LoadSummary``, or what stopped it), in the order asked.

    Their records are aggregated together, one query per source, before the write lock
    is taken; then one transaction writes them all, their facts compared and written
    together (``warehouse.upsert_facts_many``), so one lock and one commit serve the
    batch, and whatever fails for one connection (erased since its fetch, facts that
    are not aggregates, a write refused: the batch's write is then undone and each
    connection written alone) undoes its own writes only. Should the transaction itself
    fail (its lock or its commit), every connection it held fails with that error and
    nothing is stored.
    Staged records go once their aggregates are committed, and as soon as their load
    fails for good (they cannot be aggregated, the connection is erased, its facts are
    refused); after a failed write they stay for the staging sweep.
    """
    outcomes: dict[str, LoadSummary | BaseException] = {}
    taken: list[_Staged] = []
    for connection_id in connection_ids:
        try:
            taken.append(_take_staged(runtime, connection_id, handoff))
        except Exception as exc:
            outcomes[connection_id] = exc
    # Aggregated before the write lock is taken: other loads may write meanwhile.
    ready = _aggregate(taken, outcomes)
    written: dict[str, LoadSummary] = {}
    drop = [item.connection_id for item in taken if item.connection_id in outcomes]
    if ready:
        try:
            with runtime.db.locked_session() as session:
                written = _write_loads(session, ready, outcomes, drop)
        except Exception as exc:
            # The transaction failed (its lock, its bookkeeping or its commit): nothing of
            # it was stored, so every connection it held failed with it.
            written = {}
            for item in ready:
                outcomes.setdefault(item.connection_id, exc)
    outcomes.update(written)
    # Raw records are transient: once their aggregates are committed they go.
    for connection_id in [*written, *drop]:
        shutil.rmtree(_staging_dir(runtime, connection_id), ignore_errors=True)
    return {connection_id: outcomes[connection_id] for connection_id in connection_ids}


def _take_staged(runtime: Runtime, connection_id: str, handoff: Handoff | None) -> _Staged:
    """A connection's records: those ``handoff`` holds for it, or else those on disk."""
    folder = _staging_dir(runtime, connection_id)
    held = handoff.take(connection_id) if handoff is not None else None
    if held is not None:
        records, manifest = held
    else:
        manifest_path = folder / "manifest.json"
        if not manifest_path.exists():
            raise SourceError.of_connection(
                connection_id, "nothing staged to aggregate; run its fetch first"
            )
        manifest = json.loads(manifest_path.read_text())
        try:
            records = read_staged_records(runtime, connection_id)
        except SourceError:
            # Unreadable by anyone now: its key died with the run that staged it.
            shutil.rmtree(folder, ignore_errors=True)
            raise
    source_name = manifest.get("source")
    if source_name is None:  # staged by a version that did not record it
        with runtime.db.session() as session:
            source_name = registry.get_connection(session, connection_id).source
    return _Staged(connection_id, records, manifest, get_source(source_name))


def _aggregate(taken: list[_Staged], outcomes: dict) -> list[_Staged]:
    """Each connection's facts, normalised (``warehouse.normalise_facts``), and their
    profile for the aggregates-only check: one query per source, then a few for all;
    those that fail get their error in ``outcomes``. The connections whose facts are
    ready, in their order."""
    by_source: dict[str, list[_Staged]] = {}
    for item in taken:
        by_source.setdefault(item.source.name, []).append(item)
    for items in by_source.values():
        source = items[0].source
        facts = _all_or_each(
            items, [item.records for item in items], source.aggregate_many, source.aggregate,
            outcomes,
        )  # fmt: skip
        for item, frame in zip(items, facts, strict=True):
            item.facts, item.records = frame, None  # the raw records are done with
    ready = [item for item in taken if item.facts is not None]
    normalised = _all_or_each(
        ready, [item.facts for item in ready], warehouse.normalise_facts_many,
        warehouse.normalise_facts, outcomes,
    )  # fmt: skip
    for item, frame in zip(ready, normalised, strict=True):
        item.facts = frame
    ready = [item for item in ready if item.facts is not None]
    # What the aggregates-only check reads of them, read once for all.
    profiles = _all_or_each(
        ready, [item.facts for item in ready], profile_facts,
        lambda facts: profile_facts([facts])[0], outcomes,
    )  # fmt: skip
    for item, profile in zip(ready, profiles, strict=True):
        item.profile = profile
    return [item for item in ready if item.profile is not None]


def _all_or_each(items: list[_Staged], inputs: list, many, one, outcomes: dict) -> list:
    """``many(inputs)``, one result per input; should it fail, ``one(input)`` for each, so
    that what broke it is the error of its own connection alone (its result None)."""
    try:
        return many(inputs)
    except Exception:
        results = []
        for item, value in zip(items, inputs, strict=True):
            try:
                results.append(one(value))
            except Exception as exc:
                outcomes[item.connection_id] = exc
                results.append(None)
        return results


def _write_loads(
    session, ready: list[_Staged], outcomes: dict, drop: list[str]
) -> dict[str, LoadSummary]:
    """The connections' facts and cursors, in the caller's transaction; what each wrote.

    Those erased since their fetch, or whose facts are refused, get their error in
    ``outcomes`` and their id in ``drop`` (their raw records go). The others' facts are
    written together (``warehouse.upsert_facts_many``); should that fail, it is undone
    and each connection is written alone, so that a write that fails undoes its own
    connection's writes only (a savepoint each).
    """
    # Locked against a concurrent erasure, all at once and in one order: one erased since
    # its fetch gets nothing written back, and its staged records go.
    writable = registry.writable_connections(session, [item.connection_id for item in ready])
    writes: list[tuple[_Staged, warehouse.FactsWrite]] = []
    for item in ready:
        source, connection_id = item.source, item.connection_id
        connection = writable[connection_id]
        try:
            if isinstance(connection, registry.ConnectionErased):
                raise connection
            # The one place every source's facts pass before the warehouse: refused facts
            # leave the connection's stored facts and cursor as they were.
            rules = source.fact_rules(connection)
            check_profile(
                item.profile,
                connection_id=connection.id,
                dimension=rules.dimension,
                kinds=rules.kinds,
            )
        except (registry.ConnectionErased, AggregatesRefused) as exc:
            # Erased, or not aggregates: either way its raw records go now.
            outcomes[connection_id] = exc
            drop.append(connection_id)
            continue
        write = warehouse.FactsWrite(
            connection,
            item.facts,
            window_start=dt.date.fromisoformat(item.manifest["window_start"]),
            snapshot_metrics=source.snapshot_metrics,
        )
        writes.append((item, write))
    # Written together; should that fail, each alone, so that what failed is its own
    # connection's error (each in a savepoint: what failed is undone).
    together = partial(_upsert_in_savepoint, session)
    summaries = []
    if writes:
        summaries = _all_or_each(
            [item for item, _ in writes], [write for _, write in writes],
            together, lambda write: together([write])[0], outcomes,
        )  # fmt: skip
    written: dict[str, LoadSummary] = {}
    loads = []
    for (item, write), summary in zip(writes, summaries, strict=True):
        if summary is None:
            continue
        next_cursor = item.manifest.get("next_cursor")
        loads.append((write.connection, (item.source.stream, next_cursor) if next_cursor else None))
        written[item.connection_id] = LoadSummary(
            connection_id=item.connection_id,
            facts=summary.rows,
            written=summary.written,
            removed=summary.removed,
            days=summary.days,
            first_day=summary.first_day.isoformat() if summary.first_day else None,
            last_day=summary.last_day.isoformat() if summary.last_day else None,
        )
    # Each cursor moves in the same commit as its facts.
    registry.record_loads(session, loads)
    return written


def _upsert_in_savepoint(
    session, writes: list[warehouse.FactsWrite]
) -> list[warehouse.UpsertSummary]:
    with session.begin_nested():
        return warehouse.upsert_facts_many(session, writes)


def record_failure(runtime: Runtime, connection_id: str, exc: BaseException) -> None:
    """Store a refresh's failure; a refused or unreadable credential needs reconnecting.

    A connection that needs reconnecting is not retried by the failing-connections
    sensor (the same credential would be refused again); the dashboard asks the client
    to reconnect and `writevue connection list` shows it to the operator.
    """
    if isinstance(exc, NotRefreshed):
        return  # nothing was tried: the connection keeps its status and last outcome
    with runtime.db.session() as session:
        registry.record_refresh_result(session, connection_id, error=safe_error(exc))
        row = session.get(Connection, connection_id)
        # An erasing or disabled connection keeps its status.
        if isinstance(exc, CredentialRejected) and row is not None and row.status == "failing":
            registry.audit(
                session,
                "refresh",
                "connection.needs_reauth",
                row.tenant_id,
                connection_id=row.id,
            )
            row.status = NEEDS_RECONNECT
