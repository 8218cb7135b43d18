"""What the dashboard and warehouse benchmarks compare: like with like, counted as sent.

Fast and without timing thresholds: the bytes a relay reports are the bytes that crossed
it, and the warehouse's baseline is a plain load into the very table the upsert writes.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import polars as pl
from sqlalchemy import func, select

from bench import warehouse
from bench.dashboard import WireCounter
from writevue_pipelines.models import Fact
from writevue_pipelines.warehouse import FACT_SCHEMA

BODY = b"x" * 100_000


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args) -> None:
        pass


def test_the_wire_counter_counts_the_bytes_the_server_sent_through_it():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    wire = WireCounter()
    try:
        wire.target = server.server_address[1]
        response = httpx.get(wire.base + "/", timeout=30)
        assert response.content == BODY
        # the body and the response's head, nothing else
        assert len(BODY) < wire.received < len(BODY) + 1000
        wire.reset()
        assert wire.received == 0
    finally:
        wire.close()
        server.shutdown()
        server.server_close()


def test_the_warehouse_baseline_is_a_plain_load_into_the_upserts_own_table(home, monkeypatch):
    # Warehouse sets these for the runtime it makes; monkeypatch puts them back after.
    monkeypatch.setenv("WRITEVUE_HOME", str(home))
    monkeypatch.setenv("WRITEVUE_DATABASE_URL", f"sqlite:///{home / 'warehouse.db'}")
    target = warehouse.Warehouse(f"sqlite:///{home / 'warehouse.db'}", home)
    try:
        facts = warehouse.make_facts(5_000).sample(fraction=1.0, shuffle=True, seed=1)
        timed = target.baseline(facts)
        assert timed.changed == facts.height and timed.cpu_s > 0
        with target.runtime.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Fact)) == facts.height
            stored = session.execute(select(Fact.metric, Fact.dimension, Fact.day, Fact.value))
            frame = pl.DataFrame(stored.all(), schema=FACT_SCHEMA, orient="row")
        key = ["day", "metric", "dimension"]
        assert frame.sort(key).equals(facts.select(frame.columns).sort(key))
        # the upsert writes the same rows into the same table, as fast as it can
        connection = target.new_connection()
        assert target.upsert(connection, facts).changed == facts.height
    finally:
        target.close()
