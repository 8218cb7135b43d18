"""Hostile input: malformed provider answers against every connector, and fuzzed REST specs.

A provider that answers wrong types, missing fields, huge numbers, deep nesting, odd
unicode, the same page again, a pagination loop or a cursor that never advances ends a
connection's refresh in success or in a ``SourceError`` for that connection: never
another exception, never a hang (each refresh runs under a deadline and the provider
counts requests), never a partial write (a failed connection holds no facts and no
cursor; a successful one holds exactly the facts its load reported), and never raw
records left readable in staging.

The answers come from a real HTTP server on loopback (``HostileProvider``) that replays
what hypothesis generated; the refresh is the product's own (``refresh_connections``:
fetch, stage, load) on a real SQLite warehouse. Examples per connector:
``WRITEVUE_FUZZ_EXAMPLES`` (25 in the normal suite; the ``soak`` form runs 500).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from support import add_connection, add_tenant, remember_secret

from writevue_pipelines import registry
from writevue_pipelines.errors import SourceError
from writevue_pipelines.models import Fact
from writevue_pipelines.refresh import RECORDS_FILE, refresh_connections
from writevue_pipelines.sources import get_source
from writevue_pipelines.sources.rest_spec import SpecError, parse_spec

EXAMPLES = int(os.environ.get("WRITEVUE_FUZZ_EXAMPLES", "25"))
SOAK_EXAMPLES = int(os.environ.get("WRITEVUE_SOAK_FUZZ_EXAMPLES", "500"))
#: requests one refresh may send to the hostile provider: far above what any generated
#: answer needs, far below what a loop sends before its deadline
REQUEST_BUDGET = 400
DEADLINE_S = 60.0
SEALED = b"WVSEAL1\n"


# -- the provider ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)


class HostileProvider:
    """A loopback HTTP server answering each request from a script: route -> the answers
    for its 1st, 2nd, … request (the last one repeats for ever, so a script whose last
    page asks for more is a pagination loop)."""

    def __init__(self):
        self.script: dict[str, list[Answer]] = {}
        self.requests = 0
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                answer = provider.answer(self.path)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                return None

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                return None  # a client that stopped reading mid-answer: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def play(self, script: dict[str, list[Answer]]) -> None:
        with self.lock:
            self.script, self.requests, self.seen = script, 0, {}

    def answer(self, target: str) -> Answer:
        path = unquote(urlsplit(target).path)
        with self.lock:
            self.requests += 1
            if self.requests > REQUEST_BUDGET:
                return Answer(404, b'{"message": "budget spent"}')
            route = next((r for r in self.script if path.endswith(r)), None)
            if route is None:
                return Answer(404, b'{"message": "Not Found"}')
            n = self.seen.get(route, 0)
            self.seen[route] = n + 1
            answers = self.script[route]
            return answers[min(n, len(answers) - 1)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def short_history(monkeypatch):
    # A short window: a GA4 report that loops is stopped after the window's few days.
    monkeypatch.setenv("WRITEVUE_HISTORY_DAYS", "5")


@pytest.fixture(scope="module")
def provider():
    server = HostileProvider()
    yield server
    server.stop()


# -- hostile values -------------------------------------------------------------------------

HUGE = st.sampled_from([10**19, -(10**19), 10**30, 10**308 * 10, 2**63, -(2**63) - 1, 10**400])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**12),
    HUGE,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", " ", "12", "1e999", "NaN", "0x10", "١٢", "\u202e", "\x00", "😀" * 40]),
    st.sampled_from(["2026-13-45", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00-14:00"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
#: bodies that are not a JSON document at all, or one no parser should have to descend
RAW_BODIES = st.sampled_from(
    [
        b"",
        b"{this is not json",
        b'{"data": [',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"1" * 5000,
        b"null",
    ]
)


def mutate(draw, valid: dict) -> dict:
    """``valid`` with some fields dropped or replaced by hostile values."""
    item = dict(valid)
    for name in list(item):
        choice = draw(st.integers(0, 5))
        if choice == 0:
            del item[name]
        elif choice == 1:
            item[name] = draw(JSON)
    return item


def body(draw, valid_document) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(RAW_BODIES)
    if kind == 1:
        return json.dumps(draw(JSON)).encode()
    return json.dumps(valid_document).encode()


def status(draw) -> int:
    # 429 and 5xx are retried with real backoff: the fault matrix covers those.
    return draw(st.sampled_from([200] * 12 + [400, 404, 409, 410, 418, 422]))


# -- the refresh, and what it must leave ------------------------------------------------------


def refresh_within_deadline(runtime, connection_id: str):
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = refresh_connections(runtime, [connection_id])[connection_id]
        except BaseException as exc:
            outcome["raised"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"the refresh hung for {DEADLINE_S} s"
    assert "raised" not in outcome, f"the refresh raised {outcome.get('raised')!r}"
    return outcome["result"]


def check_outcome(runtime, provider, connection_id: str) -> None:
    result = refresh_within_deadline(runtime, connection_id)
    assert provider.requests <= REQUEST_BUDGET, "pagination never ended"
    if result.error is not None:
        assert isinstance(result.error, SourceError), (
            f"{type(result.error).__name__} instead of a SourceError: {result.error}"
        )
        assert result.error.connection_id == connection_id
    with runtime.db.session() as session:
        facts = session.scalar(select(func.count()).where(Fact.connection_id == connection_id))
        cursor = registry.get_cursor(
            session,
            connection_id,
            get_source(registry.get_connection(session, connection_id).source).stream,
        )
    if result.loaded is None:
        assert facts == 0 and cursor is None, "a failed refresh wrote something"
    else:
        assert facts == result.loaded.facts
    folder = runtime.settings.staging_dir / connection_id
    for path in folder.glob("*") if folder.exists() else ():
        if path.name.startswith(RECORDS_FILE):
            assert path.read_bytes().startswith(SEALED)


class Connector:
    """One source under fuzz: how to add a connection to the provider, and a script."""

    source = ""
    auth_kind = "api_key"

    def options(self, tmp_path, url: str) -> dict:
        return {"base_url": url}

    def secrets(self) -> dict:
        return {"api_key": remember_secret("hostile-key-0123456789")}

    def script(self, draw) -> dict[str, list[Answer]]:
        raise NotImplementedError


def _pages(draw, route_page) -> list[Answer]:
    return [
        Answer(status(draw), body(draw, route_page(draw, n)))
        for n in range(draw(st.integers(1, 3)))
    ]


class Stripe(Connector):
    source = "stripe"

    def script(self, draw):
        now = int(dt.datetime.now(dt.UTC).timestamp())

        def transactions(draw, n):
            items = [
                mutate(
                    draw,
                    {
                        "id": f"txn_{n}_{i}",
                        "created": now - 3600 * (i + 1),
                        "type": draw(st.sampled_from(["charge", "refund", "payout"])),
                        "amount": 1200,
                        "fee": 65,
                        "net": 1135,
                        "currency": draw(st.sampled_from(["usd", "eur", "jpy", "ÜSD", ""])),
                    },
                )
                for i in range(draw(st.integers(0, 3)))
            ]
            return {"object": "list", "has_more": draw(JSON | st.booleans()), "data": items}

        def customers(draw, n):
            items = [
                mutate(draw, {"id": f"cus_{n}_{i}", "created": now - 60 * (i + 1)})
                for i in range(draw(st.integers(0, 2)))
            ]
            return {"object": "list", "has_more": draw(st.booleans()), "data": items}

        return {
            "/v1/balance_transactions": _pages(draw, transactions),
            "/v1/customers": _pages(draw, customers),
        }


class GitHub(Connector):
    source = "github"

    def options(self, tmp_path, url):
        return {"base_url": url, "owner": "hostile", "owner_type": "auto"}

    def script(self, draw):
        today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        repos = ["hostile/one", "hostile/ünï-😀"][: draw(st.integers(0, 2))]

        def linked(draw, page_of):
            answers = _pages(draw, page_of)
            for answer in answers:
                if draw(st.booleans()):
                    # next: the same page again, another page, or somewhere odd
                    target = draw(st.sampled_from(["?page=2", "?page=1", "", "//evil.test/x"]))
                    answer.headers["Link"] = f'<{self.url}{self.path}{target}>; rel="next"'
            return answers

        def repo_list(draw, n):
            return [
                mutate(
                    draw,
                    {
                        "full_name": name,
                        "stargazers_count": 3,
                        "forks_count": "2",
                        "open_issues_count": None,
                    },
                )
                for name in repos
            ]

        def pulls(draw, n):
            return [
                mutate(
                    draw,
                    {"number": 7 + i, "created_at": today, "updated_at": today, "merged_at": today},
                )
                for i in range(draw(st.integers(0, 2)))
            ]

        def commits(draw, n):
            return [
                mutate(draw, {"sha": f"abc{n}{i}", "commit": {"committer": {"date": today}}})
                for i in range(draw(st.integers(0, 2)))
            ]

        script = {}
        self.path = "/users/hostile/repos"
        script["/users/hostile"] = [
            Answer(200, body(draw, mutate(draw, {"login": "hostile", "type": "User"})))
        ]
        script["/users/hostile/repos"] = linked(draw, repo_list)
        for name in repos:
            self.path = f"/repos/{name}/pulls"
            script[f"/{name.split('/')[1]}/pulls"] = linked(draw, pulls)
            self.path = f"/repos/{name}/commits"
            script[f"/{name.split('/')[1]}/commits"] = linked(draw, commits)
        return script


class GA4(Connector):
    source = "ga4"
    auth_kind = "oauth2"

    def options(self, tmp_path, url):
        return {"base_url": url, "property_id": "123456"}

    def secrets(self):
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
        return {
            "access_token": remember_secret("ya29.hostile-access-token"),
            "refresh_token": remember_secret("1//hostile-refresh-token"),
            "expires_at": later,
        }

    def script(self, draw):
        day = dt.date.today()

        def report(draw, n):
            rows = [
                {
                    "dimensionValues": [{"value": (day - dt.timedelta(days=i)).strftime("%Y%m%d")}],
                    "metricValues": [{"value": str(10 + i)} for _ in range(4)],
                }
                for i in range(draw(st.integers(0, 3)))
            ]
            rows = [mutate(draw, row) for row in rows]
            document = {
                "dimensionHeaders": [{"name": "date"}],
                "metricHeaders": [
                    {"name": name}
                    for name in ("sessions", "activeUsers", "screenPageViews", "conversions")
                ],
                "rows": rows,
                "rowCount": draw(st.integers(0, 5) | HUGE | JSON),
            }
            return mutate(draw, document) if draw(st.integers(0, 3)) == 0 else document

        return {":runReport": _pages(draw, report)}


class Rest(Connector):
    source = "rest"
    SPEC = {
        "base_url": "https://api.example.com",
        "endpoint": "/orders",
        "records_path": "data",
        "auth": {"type": "api_key", "location": "header", "name": "X-API-Key"},
        "paginator": {"type": "cursor", "cursor_path": "next", "cursor_param": "cursor"},
        "incremental": {"param": "since", "format": "iso_date", "field": "updated_at"},
        "mapping": {
            "date_field": "updated_at",
            "date_format": "iso_datetime",
            "dimension": "status",
            "metrics": [
                {"name": "revenue", "field": "amount", "agg": "sum"},
                {"name": "orders", "agg": "count"},
            ],
        },
    }

    def options(self, tmp_path, url):
        path = tmp_path / "hostile-spec.yaml"
        path.write_text(json.dumps(self.SPEC))  # JSON is YAML
        return {"base_url": url, "spec": str(path)}

    def script(self, draw):
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def page(draw, n):
            records = [
                mutate(draw, {"updated_at": now, "amount": 12.5, "status": "paid"})
                for _ in range(draw(st.integers(0, 3)))
            ]
            return {"data": records, "next": draw(st.sampled_from([None, "c1", f"c{n}"]) | JSON)}

        return {"/orders": _pages(draw, page)}


CONNECTORS = [Stripe(), GitHub(), GA4(), Rest()]


def _fuzz(runtime, provider, tmp_path, connector: Connector, examples: int) -> None:
    tenant_id = add_tenant(runtime, "Hostile Inputs Ltd", "ops@hostile.test")
    connector.url = provider.url
    ran = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=os.environ.get("WRITEVUE_FUZZ_SEED") is None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(st.data())
    def one(data):
        provider.play(connector.script(data.draw))
        _, connection_id = add_connection(
            runtime,
            connector.source,
            connector.auth_kind,
            connector.options(tmp_path, provider.url),
            connector.secrets(),
            tenant_id=tenant_id,
        )
        check_outcome(runtime, provider, connection_id)
        ran.append(connection_id)

    one()
    print(f"\n[fuzz] {connector.source}: {len(ran)} hostile answers, each success or SourceError")


@pytest.mark.parametrize("connector", CONNECTORS, ids=lambda c: c.source)
def test_malformed_answers_end_in_success_or_a_source_error(runtime, provider, tmp_path, connector):
    _fuzz(runtime, provider, tmp_path, connector, EXAMPLES)


@pytest.mark.soak
@pytest.mark.timeout(3 * 3600)  # grows with WRITEVUE_SOAK_KILLS / examples
@pytest.mark.parametrize("connector", CONNECTORS, ids=lambda c: c.source)
def test_soak_malformed_answers(runtime, provider, tmp_path, connector):
    _fuzz(runtime, provider, tmp_path, connector, SOAK_EXAMPLES)


# -- fuzzed declarative specs ---------------------------------------------------------------

SPEC_KEYS = [
    "base_url",
    "endpoint",
    "records_path",
    "auth",
    "paginator",
    "incremental",
    "mapping",
    "params",
    "x",
]


def _spec_mutations(draw) -> dict:
    spec = json.loads(json.dumps(Rest.SPEC))
    for _ in range(draw(st.integers(1, 4))):
        where = spec
        path = draw(
            st.sampled_from(
                [(k,) for k in SPEC_KEYS]
                + [("auth", k) for k in ("type", "location", "name", "token_url", "password")]
                + [("paginator", k) for k in ("type", "cursor_path", "limit", "zzz")]
                + [("mapping", k) for k in ("date_field", "date_format", "dimension", "metrics")]
                + [("incremental", k) for k in ("param", "format", "field")]
            )
        )
        for part in path[:-1]:
            if not isinstance(where.get(part), dict):
                where[part] = {}
            where = where[part]
        if draw(st.booleans()):
            where.pop(path[-1], None)
        else:
            where[path[-1]] = draw(JSON)
    return spec


def _spec_fuzz(examples: int) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None)
    @given(st.data())
    def one(data):
        spec = _spec_mutations(data.draw)
        try:
            parse_spec(spec)
        except SpecError as exc:
            text = str(exc)
            assert text.startswith("spec") and ":" in text, text
            assert "\n" not in text and "Traceback" not in text

    one()


def test_a_fuzzed_spec_is_valid_or_refused_by_a_message_naming_the_field():
    _spec_fuzz(EXAMPLES * 8)


@pytest.mark.soak
@pytest.mark.timeout(3 * 3600)  # grows with WRITEVUE_SOAK_KILLS / examples
def test_soak_fuzzed_specs():
    _spec_fuzz(SOAK_EXAMPLES * 8)
