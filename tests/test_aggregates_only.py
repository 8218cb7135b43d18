"""The privacy promise "We store aggregate data only", for every source.

A dimension is a declared, small category whose values are not personal identifiers; a
metric that keeps one record's value is a gauge; the load refuses anything else for that
connection alone, before a byte is written; and staged raw records are ciphertext under
a key that dies with the run, so a crash leaves nothing readable on disk.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import polars as pl
import pytest
from support import add_connection, add_stripe_connection, fetch_to_staging, new_stripe_key
from test_rest_source import KEY as REST_KEY
from test_rest_source import _spec, _write_spec

from writevue_pipelines import refresh, registry, warehouse
from writevue_pipelines.aggregates_only import (
    DEFAULT_MAX_VALUES,
    MAX_VALUES_LIMIT,
    AggregatesRefused,
    check_facts,
    personal_identifier_kind,
    profile_facts,
)
from writevue_pipelines.errors import SourceError
from writevue_pipelines.sources import SOURCES, get_source
from writevue_pipelines.sources.base import METRIC_KINDS, Dimension
from writevue_pipelines.sources.rest_spec import SpecError, parse_spec
from writevue_sandbox import rest as rest_sandbox
from writevue_sandbox import stripe_data

ROOT = Path(__file__).resolve().parents[1]
CATEGORICAL = {"field": "currency", "categorical": True}


# -- the personal-identifier detector ------------------------------------------------------

PERSONAL = {
    "jane.doe@example.com": "an email address",
    "c17@example.test": "an email address",
    "+44 20 7946 0958": "a phone number",
    "(555) 123-4567": "a phone number",
    "0049 30 1234567": "a phone number",
    "12345678": "a long numeric id",
    "customer 9876543": "a long numeric id",
    "ord_abc12302000101": "a long numeric id",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301": "a UUID",
    "3f2504e04f8911d39a0c0305e82c3301": "a UUID",
    "a94a8fe5ccb1": "a hex id",
    "cus_NffrFeUfNV2Hib": "a random-looking id",
    "tok_1N3T00LkdIwHu7ixt44h1F8k": "a random-looking id",
    "aB3xQ9zK7mP2": "a random-looking id",
    "192.168.10.24": "an IP address",
    "2001:db8:85a3::8a2e:370:7334": "an IP address",
}
CATEGORICAL_VALUES = [
    "usd",
    "EUR",
    "paid",
    "Premium plan",
    "acme-org/widgets",
    "eu-west-1",
    "2026-01-15",
    "iOS 17",
    "python311",
    "SKU-1234",
    "Berlin",
    "Chrome",
    "mobile",
    "",
]


@pytest.mark.parametrize("value, kind", PERSONAL.items())
def test_values_that_look_like_personal_identifiers_are_recognised(value, kind):
    assert personal_identifier_kind(value) == kind


@pytest.mark.parametrize("value", CATEGORICAL_VALUES)
def test_categorical_values_pass_the_detector(value):
    assert personal_identifier_kind(value) is None


# -- the load-time check, on facts -----------------------------------------------------------

DAY = dt.date(2026, 3, 2)


def _facts(dimensions: list[str], metric: str = "orders") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "metric": [metric] * len(dimensions),
            "dimension": dimensions,
            "day": [DAY] * len(dimensions),
            "value": [1.0] * len(dimensions),
        },
        schema=warehouse.FACT_SCHEMA,
    )


def _check(facts, dimension, kinds=None):
    check_facts(
        facts, connection_id="c-1", dimension=dimension, kinds=kinds or {"orders": "counter"}
    )


def test_facts_profiled_together_read_as_each_profiled_alone():
    """A load checks every connection staged with it from one profile of them all: each
    must read exactly as it would alone (metrics, widest breakdown, values in order)."""
    wide = pl.concat(
        [
            _facts([f"plan{i}" for i in range(9)]),
            _facts(["a", "b"], metric="refunds"),
            _facts(["x", "x", "y"]).with_columns(pl.lit(DAY - dt.timedelta(days=1)).alias("day")),
        ]
    )
    frames = [
        _facts([""] * 3),  # no breakdown
        wide,
        _facts([]),  # nothing
        _facts(["ann@shop.test", "", "bob@shop.test"], metric="visits"),
        _facts(["eu", "us"]).with_columns(pl.lit(None, pl.String).alias("dimension")),
    ]
    together = profile_facts(frames)
    assert together == [profile_facts([frame])[0] for frame in frames]
    assert together[1].widest == (9, "orders", DAY)
    assert together[0].widest is None and together[0].metrics == {"orders"}
    assert together[3].dimensions == ("ann@shop.test", "bob@shop.test")
    assert together[4].widest is None  # a null breakdown is none
    assert together[2].metrics == frozenset() and together[2].widest is None


def test_the_cap_is_fifty_distinct_values_per_metric_and_day_by_default():
    assert DEFAULT_MAX_VALUES == 50 and Dimension("plan").max_values == 50
    plans = [f"plan {chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(51)]
    _check(_facts(plans[:50]), Dimension("plan"))
    with pytest.raises(AggregatesRefused) as caught:
        _check(_facts(plans), Dimension("plan"))
    text = str(caught.value)
    assert text.startswith("connection c-1: dimension 'plan' has 51 distinct values")
    assert "cap of 50" in text and "plan aa" not in text
    # a higher declared cap, up to the limit, lets it through; beyond the limit is refused
    _check(_facts(plans), Dimension("plan", max_values=60))
    with pytest.raises(ValueError, match=f"max_values must be 1 to {MAX_VALUES_LIMIT}"):
        Dimension("plan", max_values=MAX_VALUES_LIMIT + 1)


def test_personal_values_are_refused_unless_the_dimension_is_a_declared_code():
    emails = ["ann@shop.test", "bob@shop.test"]
    with pytest.raises(AggregatesRefused) as caught:
        _check(_facts(emails), Dimension("customer.email"))
    text = str(caught.value)
    assert "dimension 'customer.email'" in text and "email address" in text
    assert not any(email in text for email in emails)  # the error never quotes a value
    skus = ["A94A8FE5CCB1", "B94A8FE5CCB2"]
    with pytest.raises(AggregatesRefused, match="hex id"):
        _check(_facts(skus), Dimension("sku"))
    _check(_facts(skus), Dimension("sku", code=True))


def test_a_breakdown_without_a_declared_dimension_and_an_undeclared_metric_are_refused():
    with pytest.raises(AggregatesRefused, match="declares no dimension"):
        _check(_facts(["usd"]), None)
    _check(_facts([""]), None)
    with pytest.raises(AggregatesRefused, match="metric 'orders' is not declared"):
        _check(_facts([""]), None, kinds={"revenue": "counter"})


# -- the REST spec declares its dimension and its metrics' kinds ------------------------------


def _mapping(**changes) -> dict:
    spec = _spec("offset")
    spec["mapping"].update(changes)
    return spec


def test_a_spec_dimension_must_be_declared_categorical():
    with pytest.raises(SpecError) as caught:
        parse_spec(_mapping(dimension="currency"))
    text = str(caught.value)
    assert text.startswith("spec.mapping.dimension: a breakdown must be declared")
    assert 'dimension = { field = "status", categorical = true }' in text
    with pytest.raises(SpecError, match=r"^spec\.mapping\.dimension\.categorical: must be true"):
        parse_spec(_mapping(dimension={"field": "currency"}))
    with pytest.raises(SpecError, match=r"^spec\.mapping\.dimension\.max_values: must be at most"):
        parse_spec(_mapping(dimension={**CATEGORICAL, "max_values": MAX_VALUES_LIMIT + 1}))
    with pytest.raises(SpecError, match=r"^spec\.mapping\.dimension\.code: must be true or false"):
        parse_spec(_mapping(dimension={**CATEGORICAL, "code": "yes"}))
    declared = parse_spec(_mapping(dimension={**CATEGORICAL, "max_values": 5, "code": True}))
    assert declared.mapping.dimension == Dimension("currency", max_values=5, code=True)
    assert parse_spec(_mapping(dimension=CATEGORICAL)).mapping.dimension.max_values == 50


def test_last_and_first_are_allowed_only_for_gauges():
    for agg in ("last", "first"):
        metric = {"name": "stock", "field": "items", "agg": agg}
        with pytest.raises(SpecError) as caught:
            parse_spec(_mapping(metrics=[metric]))
        assert str(caught.value).startswith("spec.mapping.metrics[0].kind: agg")
        assert 'kind = "gauge"' in str(caught.value)
        with pytest.raises(SpecError, match=r"'counter' does not fit agg"):
            parse_spec(_mapping(metrics=[{**metric, "kind": "counter"}]))
        parsed = parse_spec(_mapping(metrics=[{**metric, "kind": "gauge"}]))
        assert parsed.mapping.metrics[0].kind == "gauge"
    kinds = parse_spec(
        _mapping(
            metrics=[
                {"name": "revenue", "field": "amount", "agg": "sum"},
                {"name": "orders", "agg": "count"},
                {"name": "mean_rating", "field": "rating", "agg": "mean"},
                {"name": "stock", "field": "items", "agg": "sum", "kind": "gauge"},
            ]
        )
    ).mapping.metrics
    assert [m.kind for m in kinds] == ["counter", "counter", "ratio", "gauge"]
    with pytest.raises(SpecError, match=r"kind: unknown value 'level'"):
        parse_spec(_mapping(metrics=[{"name": "o", "agg": "count", "kind": "level"}]))


def test_the_docs_example_spec_declares_its_dimension():
    from writevue_pipelines.sources.rest_spec import load_spec

    spec = load_spec(ROOT / "docs" / "sources" / "example-rest.toml")
    assert spec.mapping.dimension is not None and spec.mapping.dimension.name == "currency"


# -- refused at load time, for that connection only, keeping what it had ----------------------


def _rest_connection(runtime, sandbox, tmp_path, mapping_changes: dict) -> tuple[str, str, Path]:
    spec = _spec("page_number")
    spec["mapping"].update(mapping_changes)
    path = _write_spec(tmp_path, spec)
    options = get_source("rest").validate_options({"spec": str(path), "base_url": sandbox.url})
    tenant, connection = add_connection(
        runtime, "rest", "api_key", options, {"api_key": REST_KEY}, name="Shop", email="o@s.test"
    )
    return tenant, connection, path


def _stored(runtime, connection_id: str):
    with runtime.db.session() as session:
        return (
            warehouse.daily_totals(session, connection_id, dt.date(2000, 1, 1)),
            registry.get_cursor(session, connection_id, "records"),
        )


def _rewrite_dimension(path: Path, dimension: dict) -> None:
    spec = _spec("page_number")
    spec["mapping"]["dimension"] = dimension
    os.utime(path, ns=(0, 0))  # a new mtime below, whatever the clock's resolution
    _write_spec(path.parent, spec, path.name)


@pytest.mark.parametrize(
    "dimension, problem",
    [
        ({"field": "customer.email", "categorical": True}, "look like an email address"),
        ({"field": "id", "categorical": True}, "look like a long numeric id"),
        ({"field": "id", "categorical": True, "code": True, "max_values": 2}, "cap of 2"),
    ],
    ids=["email", "order-id", "over-the-cap"],
)
def test_a_per_record_dimension_is_refused_at_load_and_nothing_stored_is_lost(
    runtime, sandbox, tmp_path, dimension, problem
):
    _tenant, connection, path = _rest_connection(runtime, sandbox, tmp_path, {})
    first = refresh.refresh_connections(runtime, [connection])[connection]
    assert first.error is None
    before = _stored(runtime, connection)
    assert before[0] and before[1]

    _rewrite_dimension(path, dimension)
    outcome = refresh.refresh_connections(runtime, [connection])[connection]
    assert isinstance(outcome.error, AggregatesRefused)
    refresh.record_failure(runtime, connection, outcome.error)
    text = refresh.safe_error(outcome.error)
    assert text.startswith(f"connection {connection}: dimension {dimension['field']!r}")
    assert problem in text and "\n" not in text
    assert "@example.test" not in text and "ord_" not in text
    assert _stored(runtime, connection) == before  # facts and cursor as they were
    assert not (runtime.settings.staging_dir / connection).exists()  # raw records gone
    with runtime.db.session() as session:
        row = registry.get_connection(session, connection)
    assert row.status == "failing" and row.last_error == text


def test_the_same_rule_refuses_a_built_in_source_at_the_same_choke_point(
    runtime, sandbox, monkeypatch
):
    stripe = get_source("stripe")
    aggregate = type(stripe).aggregate

    def by_customer(self, records):
        facts = aggregate(self, records)
        return facts.with_columns(pl.lit("ann@shop.test").alias("dimension"))

    monkeypatch.setattr(type(stripe), "aggregate", by_customer)
    _tenant, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    outcome = refresh.refresh_connections(runtime, [connection])[connection]
    assert isinstance(outcome.error, AggregatesRefused)
    assert "dimension 'currency'" in str(outcome.error) and "email" in str(outcome.error)
    assert _stored(runtime, connection)[0] == []


# -- built-in sources pass the rule on the sandbox's data --------------------------------------


def test_every_built_in_source_declares_a_kind_per_metric_and_gauges_for_snapshots():
    for name, source in SOURCES.items():
        if name == "rest":
            continue
        assert set(source.metric_kinds) == set(source.metrics), name
        assert set(source.metric_kinds.values()) <= set(METRIC_KINDS), name
        assert all(source.metric_kinds[m] == "gauge" for m in source.snapshot_metrics), name
    assert get_source("github").metric_kinds["stars"] == "gauge"
    assert get_source("ga4").dimension is None
    assert get_source("stripe").dimension == Dimension("currency", max_values=MAX_VALUES_LIMIT)
    with pytest.raises(TypeError, match=r'snapshot metric .\w+. .* must be "gauge"'):
        type(
            "Broken",
            (type(get_source("github")),),
            {"name": "broken", "metric_kinds": {}, "__module__": __name__},
        )


def _github_connection(runtime, sandbox):
    from test_github_source import _add_connection, _token

    return _add_connection(runtime, sandbox.url, _token())


def _ga4_connection(runtime, sandbox):
    from test_ga4_source import ACCOUNT as GA4_ACCOUNT
    from test_ga4_source import PROPERTY, static_token

    options = get_source("ga4").validate_options({"base_url": sandbox.url, "property_id": PROPERTY})
    secrets = {"access_token": static_token(GA4_ACCOUNT), "expires_at": ""}
    return add_connection(runtime, "ga4", "oauth2", options, secrets, name="Site", email="s@s.t")


def _stripe_connection(runtime, sandbox):
    return add_stripe_connection(runtime, sandbox.url, new_stripe_key())


@pytest.mark.parametrize("make", [_stripe_connection, _github_connection, _ga4_connection])
def test_built_in_sources_pass_the_rule_on_the_sandbox(runtime, sandbox, make, monkeypatch):
    checked = []
    real = refresh.check_profile

    def spy(profile, **kwargs):
        checked.append(len(profile.metrics))
        return real(profile, **kwargs)

    monkeypatch.setattr(refresh, "check_profile", spy)
    _tenant, connection = make(runtime, sandbox)
    outcome = refresh.refresh_connections(runtime, [connection])[connection]
    assert outcome.error is None, outcome.error
    assert checked and checked[0] > 0  # the rule ran on real facts, and they passed
    assert _stored(runtime, connection)[0]


# -- staged raw records are ciphertext under a key that dies with the run ---------------------


def _raw_values_of(key: str) -> list[bytes]:
    """Prefixes of the raw ids the Stripe source stages for this key's sandbox account."""
    account = stripe_data.account_for_key(key)
    return [f"cus_{account[:10]}".encode(), f"txn_{account[:10]}".encode()]


def test_staged_records_hold_no_readable_raw_value(runtime, sandbox):
    key = new_stripe_key()
    _tenant, connection = add_stripe_connection(runtime, sandbox.url, key)
    fetch_to_staging(runtime, connection)
    folder = runtime.settings.staging_dir / connection
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert not any(raw in data for raw in _raw_values_of(key)), path.name
        assert b"PAR1" not in data, path.name
    with pytest.raises(Exception):  # noqa: B017 - not a parquet file anyone can open
        pl.read_parquet(folder / "records.parquet")
    # the run that staged them reads them back
    assert refresh.load_connection(runtime, connection).facts > 0
    assert not folder.exists()


CRASH = """
import asyncio, os, signal, sys
from writevue_pipelines import refresh
from writevue_pipelines.runtime import Runtime
from writevue_pipelines.settings import Settings

runtime = Runtime(Settings.from_env())
result = asyncio.run(refresh.fetch_connections(runtime, [sys.argv[1]]))[sys.argv[1]]
assert not isinstance(result, BaseException), result
print("staged", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the run dies between its fetch and its load
"""


def test_a_run_killed_after_staging_leaves_only_unreadable_ciphertext(runtime, sandbox):
    key = new_stripe_key()
    _tenant, connection = add_stripe_connection(runtime, sandbox.url, key)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH, connection],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert "staged" in crashed.stdout
    folder = runtime.settings.staging_dir / connection
    leftovers = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "records.parquet" for p in leftovers)
    for path in leftovers:
        data = path.read_bytes()
        assert not any(raw in data for raw in _raw_values_of(key)), path.name
        assert b"PAR1" not in data, path.name
    # This process never had the dead run's key: the leftovers cannot be read by anyone,
    # so the load refuses them with a clear error and stores nothing.
    with pytest.raises(SourceError, match="fetch it again") as caught:
        refresh.load_connection(runtime, connection)
    assert str(caught.value).startswith(f"connection {connection}: ")
    assert _stored(runtime, connection)[0] == []
    # a fresh refresh replaces them and works
    assert refresh.refresh_connections(runtime, [connection])[connection].error is None


def test_the_manifest_holds_no_raw_record(runtime, sandbox):
    _tenant, connection = add_stripe_connection(runtime, sandbox.url, new_stripe_key())
    fetch_to_staging(runtime, connection)
    manifest = json.loads((runtime.settings.staging_dir / connection / "manifest.json").read_text())
    assert set(manifest) <= {
        "connection_id",
        "records",
        "requests",
        "latency_s",
        "window_start",
        "next_cursor",
        "source",
        "staged_at",
    }
    uuid.UUID(manifest["connection_id"])


def test_rest_raw_records_of_the_sandbox_hold_emails_only_in_memory(runtime, sandbox, tmp_path):
    # The sandbox's orders carry customer emails; a spec that (wrongly) breaks down by
    # them stages those values: on disk they must be ciphertext all the same.
    dimension = {"field": "customer.email", "categorical": True, "code": True}
    _tenant, connection, _path = _rest_connection(
        runtime, sandbox, tmp_path, {"dimension": dimension}
    )
    fetch_to_staging(runtime, connection)
    account = rest_sandbox.account_for(REST_KEY)
    assert any(
        o["customer"]["email"].endswith("@example.test") for o in rest_sandbox.all_orders(account)
    )
    for path in (runtime.settings.staging_dir / connection).rglob("*"):
        assert b"@example.test" not in path.read_bytes(), path.name


def _seal_in_a_fork(queue) -> None:
    queue.put(refresh._seal("c0ffee", refresh.RECORDS_FILE, b"raw records of a run"))


def _unseal_in_a_fork(sealed: bytes, queue) -> None:
    try:
        queue.put(refresh._unseal("c0ffee", refresh.RECORDS_FILE, sealed))
    except SourceError as exc:
        queue.put(str(exc))


def test_runs_forked_from_one_process_seal_their_staging_under_keys_of_their_own():
    """The code server forks every run from one preloaded process, which has imported
    this module: a run's staging key must be made in the run, not inherited, so that a
    later run (or the forkserver) cannot read what a run that died left behind."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    sealer = context.Process(target=_seal_in_a_fork, args=(queue,))
    sealer.start()
    sealed = queue.get(timeout=30)
    sealer.join(30)
    assert sealed.startswith(b"WVSEAL1\n")
    reader = context.Process(target=_unseal_in_a_fork, args=(sealed, queue))
    reader.start()
    answer = queue.get(timeout=30)
    reader.join(30)
    assert answer != b"raw records of a run"
    assert "sealed by another run" in answer and "fetch it again" in answer
    with pytest.raises(SourceError, match="sealed by another run"):
        refresh._unseal("c0ffee", refresh.RECORDS_FILE, sealed)  # nor the process forked from
