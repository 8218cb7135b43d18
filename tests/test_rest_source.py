"""The declarative REST source: spec validation, every paginator and auth kind, on the sandbox."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import logging
from collections import defaultdict
from dataclasses import replace

import pytest
from support import add_connection, fetch_to_staging, remember_secret

from writevue_pipelines import refresh, registry, warehouse
from writevue_pipelines.errors import InvalidInput, SourceError
from writevue_pipelines.registry import ConnectionInfo
from writevue_pipelines.sources import FetchRequest, get_source
from writevue_pipelines.sources.http import RetryPolicy, open_client
from writevue_pipelines.sources.rest import RestSource, format_instant
from writevue_pipelines.sources.rest_spec import SpecError, load_spec, parse_spec
from writevue_sandbox import rest as rest_sandbox
from writevue_sandbox.faults import with_faults

KEY = remember_secret("rest_key_for_the_declarative_source_41")
CONNECTION_ID = "33333333-3333-3333-3333-333333333333"
WINDOW = 45

MAPPING = {
    "date_field": "created_at",
    "date_format": "iso_datetime",
    "dimension": {"field": "currency", "categorical": True},
    "metrics": [
        {"name": "revenue", "field": "amount", "agg": "sum"},
        {"name": "orders", "agg": "count"},
        {"name": "rated_orders", "field": "rating", "agg": "count"},
        {"name": "mean_rating", "field": "rating", "agg": "mean"},
        {"name": "last_items", "field": "items", "agg": "last", "kind": "gauge"},
    ],
}

#: style -> (records_path, paginator, extra params); variants stop in different ways
STYLES = {
    "header_link": (None, {"type": "header_link"}, {"per_page": "10"}),
    "json_link": (
        "data.orders",
        {"type": "json_link", "next_url_path": "links.next"},
        {"per_page": "10"},
    ),
    "cursor": (
        "orders",
        {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "cursor"},
        {"limit": "10"},
    ),
    "offset": ("results", {"type": "offset", "limit": 10, "total_path": "total"}, {}),
    "offset_short_page": ("results", {"type": "offset", "limit": 10}, {}),
    "page_number": (
        "items",
        {
            "type": "page_number",
            "page_size": 10,
            "page_size_param": "page_size",
            "total_pages_path": "total_pages",
        },
        {},
    ),
    "page_number_empty_page": (
        "items",
        {"type": "page_number", "page_size": 10, "page_size_param": "page_size"},
        {},
    ),
}


def _spec(style: str = "cursor", **changes) -> dict:
    records_path, paginator, params = STYLES[style]
    endpoint_style = style.split("_short")[0].split("_empty")[0]
    spec = {
        "base_url": "https://api.example.com",
        "endpoint": f"/rest/{endpoint_style}/orders",
        "params": dict(params),
        "auth": {"type": "api_key", "location": "header", "name": "X-API-Key"},
        "paginator": copy.deepcopy(paginator),
        "incremental": {"param": "since", "format": "iso_date", "field": "updated_at"},
        "mapping": copy.deepcopy(MAPPING),
    }
    if records_path:
        spec["records_path"] = records_path
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


def _toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans read the same in TOML


def _write_spec(tmp_path, spec: dict, name: str = "spec.toml"):
    path = tmp_path / name
    path.write_text("\n".join(f"{k} = {_toml_value(v)}" for k, v in spec.items()) + "\n")
    return path


def _connection(tmp_path, sandbox_url, spec, auth_kind="api_key") -> ConnectionInfo:
    return ConnectionInfo(
        id=CONNECTION_ID,
        tenant_id="t",
        source="rest",
        auth_kind=auth_kind,
        options={"spec": str(_write_spec(tmp_path, spec)), "base_url": sandbox_url},
        status="active",
        last_error=None,
        last_refreshed_at=None,
    )


async def _no_sleep(_seconds: float) -> None:
    return None


def _fetch(tmp_path, sandbox_url, spec, secrets=None, *, auth_kind="api_key", days=WINDOW):
    source = get_source("rest")
    connection = _connection(tmp_path, sandbox_url, spec, auth_kind)
    start = dt.date.today() - dt.timedelta(days=days)

    async def run():
        async with open_client(base_url=sandbox_url, retry=RetryPolicy(sleep=_no_sleep)) as client:
            auth = source.build_auth(connection, secrets or {"api_key": KEY})
            return await source.fetch(client, FetchRequest(connection, auth, start, None))

    return asyncio.run(run()), start


def _expected(credential: str, start: dt.date) -> dict[tuple[str, str, dt.date], float]:
    """The facts, computed in plain Python from the sandbox's own data."""
    groups = defaultdict(list)
    for order in rest_sandbox.all_orders(rest_sandbox.account_for(credential)):
        day = dt.date.fromisoformat(order["created_at"][:10])
        if day >= start:
            groups[(order["currency"], day)].append(order)
    facts = {}
    for (currency, day), orders in groups.items():
        ratings = [o["rating"] for o in orders if o["rating"] is not None]
        facts[("revenue", currency, day)] = sum(float(o["amount"]) for o in orders)
        facts[("orders", currency, day)] = len(orders)
        facts[("rated_orders", currency, day)] = len(ratings)  # zero is a count too
        if ratings:  # a mean of nothing is no fact at all
            facts[("mean_rating", currency, day)] = sum(ratings) / len(ratings)
        latest = max(orders, key=lambda o: o["created_at"])
        facts[("last_items", currency, day)] = latest["items"]
    return facts


def _facts(result) -> dict[tuple[str, str, dt.date], float]:
    frame = get_source("rest").aggregate(result.records)
    return {(m, d, day): v for m, d, day, v in frame.iter_rows()}


def _assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


# -- every paginator, every aggregation ------------------------------------------------------


@pytest.mark.parametrize("style", list(STYLES))
def test_every_paginator_reads_every_record_and_gives_the_same_facts(tmp_path, sandbox, style):
    result, start = _fetch(tmp_path, sandbox.url, _spec(style))
    expected = _expected(KEY, start)
    _assert_same(_facts(result), expected)
    orders = sum(v for (m, _, _), v in expected.items() if m == "orders")
    assert orders > 40
    # ten records a page; paginators that stop on an empty page read one more
    pages = -(-orders // 10)
    assert pages <= result.requests <= pages + 1
    endpoint = style.split("_short")[0].split("_empty")[0]
    assert sandbox.counters[f"rest.{endpoint}"] == result.requests


def test_each_aggregation_matches_an_independent_computation(tmp_path, sandbox):
    result, start = _fetch(tmp_path, sandbox.url, _spec("offset"))
    got = _facts(result)
    expected = _expected(KEY, start)
    for agg in ("revenue", "orders", "rated_orders", "mean_rating", "last_items"):
        subset = {k: v for k, v in expected.items() if k[0] == agg}
        assert subset, agg
        assert {k: got[k] for k in subset} == pytest.approx(subset), agg
    # numeric strings and nulls were in the data, and were handled
    raw = rest_sandbox.all_orders(rest_sandbox.account_for(KEY))
    assert any(isinstance(o["amount"], str) for o in raw)
    assert any(o["rating"] is None for o in raw)


def test_fetch_advances_the_cursor_to_the_newest_incremental_field(tmp_path, sandbox):
    spec = _spec(
        "cursor", incremental={"param": "since", "format": "iso_datetime", "field": "updated_at"}
    )
    result, start = _fetch(tmp_path, sandbox.url, spec)
    newest = max(
        dt.datetime.fromisoformat(o["updated_at"])
        for o in rest_sandbox.all_orders(rest_sandbox.account_for(KEY))
        if o["created_at"][:10] >= start.isoformat()
    )
    assert dt.datetime.fromisoformat(result.next_cursor) == newest
    # refresh.window_start reads the cursor's date from its first ten characters
    assert dt.date.fromisoformat(result.next_cursor[:10]) == newest.date()


@pytest.mark.parametrize("fmt", ["iso_date", "iso_datetime", "unix"])
def test_the_incremental_parameter_is_sent_in_its_format(tmp_path, sandbox, fmt):
    spec = _spec(
        "header_link", incremental={"param": "since", "format": fmt, "field": "created_at"}
    )
    result, start = _fetch(tmp_path, sandbox.url, spec)
    sent = format_instant(start, fmt)
    assert (
        sent
        == {
            "iso_date": start.isoformat(),
            "iso_datetime": f"{start.isoformat()}T00:00:00Z",
            "unix": str(int(dt.datetime.combine(start, dt.time(), dt.UTC).timestamp())),
        }[fmt]
    )
    # sent on every page, including the links the server built
    assert sandbox.counters[f"rest.since={sent}"] == result.requests > 1


def test_without_incremental_records_before_the_window_are_dropped(tmp_path, sandbox):
    result, start = _fetch(tmp_path, sandbox.url, _spec("offset", incremental=None), days=10)
    assert not any(k.startswith("rest.since") for k in sandbox.counters)
    assert result.records["day"].min() >= start
    _assert_same(_facts(result), _expected(KEY, start))


# -- auth kinds --------------------------------------------------------------------------------


def test_bearer_api_key_header_and_basic_auth(tmp_path, sandbox):
    bearer, _ = _fetch(tmp_path, sandbox.url, _spec("cursor", auth={"type": "bearer"}))
    assert sandbox.counters["rest.auth.bearer"] == bearer.requests
    header, _ = _fetch(tmp_path, sandbox.url, _spec("cursor"))
    assert sandbox.counters["rest.auth.header"] == header.requests
    password = remember_secret("pw_basic_password_for_rest_7")
    basic, start = _fetch(
        tmp_path,
        sandbox.url,
        _spec("cursor", auth={"type": "basic"}),
        {"username": "shop-owner", "password": password},
        auth_kind="basic",
    )
    assert sandbox.counters["rest.auth.basic"] == basic.requests
    _assert_same(_facts(basic), _expected("shop-owner", start))


def test_a_query_string_key_never_reaches_logs_or_errors(tmp_path, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    spec = _spec("header_link", auth={"type": "api_key", "location": "query", "name": "api_key"})
    result, start = _fetch(tmp_path, sandbox.url, spec)
    assert sandbox.counters["rest.auth.query"] == result.requests > 1
    _assert_same(_facts(result), _expected(KEY, start))
    failing = remember_secret(with_faults("rest_query_key_that_fails_9", "5xx"))
    with pytest.raises(SourceError) as caught:
        _fetch(tmp_path, sandbox.url, spec, {"api_key": failing})
    wrong = remember_secret("wrong_prefix_query_key_123")
    with pytest.raises(SourceError) as refused:
        _fetch(tmp_path, sandbox.url, spec, {"api_key": wrong})
    assert "HTTP 503" in str(caught.value) and "refused the credentials" in str(refused.value)
    for secret in (KEY, failing, wrong):
        assert secret not in caplog.text
        assert secret not in str(caught.value) + repr(caught.value)
        assert secret not in str(refused.value)
    assert "api_key=" not in caplog.text


def test_a_spec_auth_that_does_not_match_the_connection_is_refused(tmp_path, sandbox):
    with pytest.raises(SourceError, match="needs basic credentials"):
        _fetch(tmp_path, sandbox.url, _spec(auth={"type": "basic"}), auth_kind="api_key")
    with pytest.raises(SourceError, match="username or password is missing"):
        _fetch(tmp_path, sandbox.url, _spec(auth={"type": "basic"}), {}, auth_kind="basic")


def test_a_spec_reads_a_stripe_list_with_the_stripe_sources_own_paginator(tmp_path, sandbox):
    # One StartingAfterPaginator serves the hand-written Stripe source and this spec alike.
    key = remember_secret("sk_test_rest_reads_stripe_customers_07")
    spec = {
        "base_url": "https://api.stripe.com",
        "endpoint": "/v1/customers",
        "auth": {"type": "bearer"},
        "paginator": {"type": "starting_after", "limit": 10},
        "records_path": "data",
        "incremental": {"param": "created[gte]", "format": "unix", "field": "created"},
        "mapping": {
            "date_field": "created",
            "date_format": "unix",
            "metrics": [{"name": "new_customers", "agg": "count"}],
        },
    }
    result, start = _fetch(tmp_path, sandbox.url, spec, {"api_key": key})
    assert result.requests > 2

    stripe = get_source("stripe")
    connection = replace(
        _connection(tmp_path, sandbox.url, spec), source="stripe", options={"base_url": sandbox.url}
    )

    async def read_with_the_stripe_source():
        async with open_client(base_url=sandbox.url) as client:
            auth = stripe.build_auth(connection, {"api_key": key})
            return await stripe.fetch(client, FetchRequest(connection, auth, start, None))

    by_stripe = stripe.aggregate(asyncio.run(read_with_the_stripe_source()).records)
    customers = {(m, d, day): v for m, d, day, v in by_stripe.iter_rows() if m == "new_customers"}
    assert customers and _facts(result) == customers


def test_a_next_link_to_another_host_is_not_followed(tmp_path, sandbox):
    # The sandbox builds links from the Host header; asking for another host makes it lie.
    source = RestSource()
    spec = _spec("header_link")
    connection = _connection(tmp_path, sandbox.url, spec)

    async def run():
        async with open_client(
            base_url=sandbox.url, headers={"Host": "elsewhere.example"}
        ) as client:
            auth = source.build_auth(connection, {"api_key": KEY})
            start = dt.date.today() - dt.timedelta(days=WINDOW)
            await source.fetch(client, FetchRequest(connection, auth, start, None))

    with pytest.raises(SourceError, match="another host"):
        asyncio.run(run())
    assert sandbox.counters["rest.header_link"] == 1


# -- drift -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mapping_change, problem",
    [
        ({"date_field": "placed_at"}, "lacks the required field 'placed_at'"),
        ({"date_format": "unix"}, "is not a unix value"),
        ({"metrics": [{"name": "t", "field": "total", "agg": "sum"}]}, "no record .* 'total'"),
        ({"metrics": [{"name": "c", "field": "currency", "agg": "sum"}]}, "'currency' is not"),
        ({"metrics": [{"name": "c", "field": "customer", "agg": "sum"}]}, "'customer' is not"),
    ],
)  # fmt: skip
def test_drift_is_a_source_error_naming_the_field(tmp_path, sandbox, mapping_change, problem):
    spec = _spec("offset", mapping={**MAPPING, **mapping_change})
    with pytest.raises(SourceError, match=problem) as caught:
        _fetch(tmp_path, sandbox.url, spec)
    assert CONNECTION_ID in str(caught.value)


def test_a_wrong_records_path_is_a_source_error(tmp_path, sandbox):
    with pytest.raises(SourceError, match=r"spec\.records_path 'data'"):
        _fetch(tmp_path, sandbox.url, _spec("offset", records_path="data"))


# -- spec validation ---------------------------------------------------------------------------


def _without(key):
    def change(spec):
        spec.pop(key)

    return change


def _set(path, value):
    def change(spec):
        *parents, last = path.split(".")
        target = spec
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change


BAD_SPECS = [
    (
        _set("paginator", {"type": "pages"}),
        "spec.paginator.type: unknown paginator 'pages'; expected one of "
        "cursor, header_link, json_link, offset, page_number",
    ),
    (_without("base_url"), "spec.base_url: is required"),
    (_set("base_url", "ftp://files.example.com"), "spec.base_url: 'ftp://files.example.com' is"),
    (_set("base_url", "https://u:p@api.example.com"), "spec.base_url: must not carry credentials"),
    (_set("endpoint", "orders"), "spec.endpoint: 'orders' is not valid"),
    (_without("auth"), "spec.auth.type: is required"),
    (_set("auth", {"type": "digest"}), "spec.auth.type: unknown auth 'digest'"),
    (_set("auth.password", "hunter2"), "spec.auth.password: secrets do not belong"),
    (_set("auth.api_key", "rest_123"), "spec.auth.api_key: secrets do not belong"),
    (_set("auth.location", "cookie"), "spec.auth.location: unknown value 'cookie'"),
    (_set("auth", {"type": "oauth2", "authorize_url": "https://a.example/auth"}),
     "spec.auth.token_url: is required"),
    (_set("params.api_key", "rest_123"), "spec.params.api_key: secrets do not belong"),
    (_set("params.filter", {"a": 1}), "spec.params.filter: must be a string or a number"),
    (_set("paginator", "cursor"), "spec.paginator: must be a table of settings, not a string"),
    (_set("paginator", {"type": "cursor"}), "spec.paginator.cursor_path: is required"),
    (_set("paginator", {"type": "offset", "limit": 0}), "spec.paginator.limit: must be at least 1"),
    (_set("paginator", {"type": "offset", "limit": "ten"}),
     "spec.paginator.limit: must be a whole number, not a string"),
    (_set("paginator", {"type": "json_link"}), "spec.paginator.next_url_path: is required"),
    (_set("paginator.page", 2), "spec.paginator.page: unknown setting"),
    (_set("pagination", {}), "spec.pagination: unknown setting"),
    (_set("records_path", "data..orders"), "spec.records_path: 'data..orders' is not valid"),
    (_without("mapping"), "spec.mapping: is required"),
    (_set("mapping.date_field", ""), "spec.mapping.date_field: must be a non-empty string"),
    (_set("mapping.date_format", "rfc2822"), "spec.mapping.date_format: unknown value 'rfc2822'"),
    (_set("mapping.metrics", []), "spec.mapping.metrics: must be a non-empty list"),
    (_set("mapping.metrics.0.agg", "median"),
     "spec.mapping.metrics[0].agg: unknown value 'median'; expected one of sum, count, mean, last, "
     "first"),
    (_set("mapping.metrics.0", {"name": "revenue", "agg": "sum"}),
     "spec.mapping.metrics[0].field: is required for agg 'sum'"),
    (_set("mapping.metrics.1.name", "revenue"), "spec.mapping.metrics[1].name: 'revenue' is used"),
    (_set("mapping.metrics.0.name", "Revenue!"), "spec.mapping.metrics[0].name: 'Revenue!' is not"),
    (_set("mapping.metrics.0.colour", "eur"), "spec.mapping.metrics[0].colour: unknown setting"),
    (_set("mapping.metrics.0.unit", "eur"), "spec.mapping.metrics[0].unit: unknown value 'eur'"),
    (_set("mapping.metrics.0.polarity", "down"), "spec.mapping.metrics[0].polarity: unknown value"),
    (_set("incremental", {"format": "iso_date", "field": "x"}), "spec.incremental.param: is req"),
    (_set("incremental.format", "epoch"), "spec.incremental.format: unknown value 'epoch'"),
]  # fmt: skip


@pytest.mark.parametrize("change, message", BAD_SPECS, ids=[m.split(":")[0] for _, m in BAD_SPECS])
def test_a_bad_spec_fails_with_one_message_naming_the_field(change, message):
    spec = _spec("offset")
    parse_spec(spec)  # the starting point is valid
    change(spec)
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text and text.count("spec.") == 1
    assert "hunter2" not in text and "rest_123" not in text


def test_spec_is_checked_at_connection_add_and_again_at_fetch(tmp_path, sandbox):
    source = get_source("rest")
    bad = _write_spec(tmp_path, {**_spec(), "paginator": {"type": "pages"}}, "bad.toml")
    with pytest.raises(InvalidInput, match=r"^spec\.paginator\.type: unknown paginator 'pages'"):
        source.validate_options({"spec": str(bad)})
    with pytest.raises(InvalidInput, match="needs the option spec"):
        source.validate_options({})
    with pytest.raises(InvalidInput, match="cannot read"):
        source.validate_options({"spec": str(tmp_path / "missing.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("base_url = \n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        source.validate_options({"spec": str(broken)})
    good = _write_spec(tmp_path, _spec(), "good.toml")
    assert source.validate_options({"spec": str(good)})["spec"] == str(good.resolve())
    # the file changes after `connection add`: the fetch refuses it before any request
    connection = _connection(tmp_path, sandbox.url, _spec())
    _write_spec(tmp_path, {**_spec(), "paginator": {"type": "pages"}})
    with pytest.raises(SourceError, match=rf"^connection {CONNECTION_ID}: spec\.paginator\.type"):
        source.build_auth(connection, {"api_key": KEY})
    assert source.base_url(connection) == sandbox.url  # never raises before the fetch's guard
    assert not any(k.startswith("rest.") for k in sandbox.counters)


def test_yaml_specs_read_like_toml(tmp_path):
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec("json_link")))
    assert load_spec(path) == parse_spec(_spec("json_link"))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**_spec(), "auth": {"type": "nope"}}))
    with pytest.raises(SpecError, match=r"^spec\.auth\.type: unknown auth 'nope'"):
        load_spec(tmp_path / "bad.yaml")


def test_the_example_spec_in_the_docs_is_valid():
    from pathlib import Path

    spec = load_spec(Path(__file__).parent.parent / "docs" / "sources" / "example-rest.toml")
    assert spec.paginator is not None and spec.mapping.metrics


# -- end to end through a refresh --------------------------------------------------------------


def test_a_refresh_lands_the_specs_metrics_in_the_warehouse(runtime, sandbox, tmp_path):
    source = get_source("rest")
    options = source.validate_options(
        {"spec": str(_write_spec(tmp_path, _spec("page_number"))), "base_url": sandbox.url}
    )
    tenant, connection = add_connection(
        runtime,
        "rest",
        "api_key",
        options,
        {"api_key": KEY},
        name="Shop Ltd",
        email="ops@shop.test",
    )
    fetched = fetch_to_staging(runtime, connection)
    refresh.load_connection(runtime, connection)
    start = dt.date.fromisoformat(fetched.window_start)
    with runtime.db.session() as session:
        facts = warehouse.tenant_facts(session, tenant, start, dt.date.today())
        cursor = registry.get_cursor(session, connection, source.stream)
    got = {
        (m, d, day): v
        for m, d, day, v in facts.select("metric", "dimension", "day", "value").iter_rows()
    }
    _assert_same(got, _expected(KEY, start))
    assert cursor == fetched.next_cursor and cursor is not None
