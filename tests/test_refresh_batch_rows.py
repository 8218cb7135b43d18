"""A batch's fetch reads its connections' rows and cursors in a few queries, not in two per
connection, and still starts each connection from its own cursor."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import event
from support import add_stripe_connection, new_stripe_key

from writevue_pipelines import refresh, registry


def test_a_batch_starts_each_connection_from_its_own_cursor_in_a_few_queries(runtime, sandbox):
    tenant, first = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    ids = [first] + [
        add_stripe_connection(runtime, sandbox.url, new_stripe_key(), tenant_id=tenant)[1]
        for _ in range(5)
    ]
    today = dt.datetime.now(dt.UTC).date()
    cursors = {
        ids[1]: (today - dt.timedelta(days=3)).isoformat() + "T10:00:00+00:00",
        ids[2]: (today - dt.timedelta(days=8)).isoformat() + "T00:00:00+00:00",
        ids[4]: str(int(dt.datetime.combine(today, dt.time(), dt.UTC).timestamp()) - 86_400),
    }
    with runtime.db.session() as session:
        for connection_id, cursor in cursors.items():
            connection = registry.get_connection(session, connection_id)
            registry.set_cursor(session, connection, "balance_transactions", cursor)

    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(runtime.db.engine, "before_cursor_execute", count)
    try:
        # One connection asked for by its id in capitals: found all the same, cursor too.
        asked = [*ids[:5], ids[5].upper()]
        fetched = asyncio.run(refresh.fetch_connections(runtime, asked))
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", count)

    for connection_id in ids:
        summary = fetched[connection_id]
        assert not isinstance(summary, BaseException), summary
        cursor = cursors.get(connection_id)
        assert summary.window_start == refresh.window_start(runtime, cursor).isoformat()
    reads = [s for s in statements if "FROM connections" in s or "FROM sync_cursors" in s]
    # Two per batch, and the pair for the one id spelled otherwise: not two per connection.
    assert len(reads) <= 4, reads
