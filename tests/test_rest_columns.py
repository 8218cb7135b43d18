"""The declarative REST source takes a page of records a field at a time (a column per
field) instead of a record at a time; this checks that it is the same as taking each
record on its own: the same columns, cursor and fields seen, or the same error naming
the same record and field, on generated pages full of odd values."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from writevue_pipelines.sources import rest
from writevue_pipelines.sources.rest_spec import parse_spec

CONNECTION = "55555555-5555-5555-5555-555555555555"
WINDOW_START = dt.date(2024, 3, 1)

DATES = st.one_of(
    st.datetimes(
        min_value=dt.datetime(2024, 1, 1), max_value=dt.datetime(2024, 6, 1),
        timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-5))]),
    ).map(lambda d: d.isoformat()),
    st.sampled_from([
        "2024-03-05T10:00:00Z", " 2024-03-05T10:00:00Z ", "2024-03-05", "2024-02-29T23:59:59",
        "2024-03-01T00:00:00+00:00", "2024-02-29T23:00:00-02:00", "20240305T100000",
        "2024-03-05T10:00:00.123456789Z", "not a date", "", "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:59:59-01:00", "2024-13-01",
    ]),
    st.integers(1_700_000_000, 1_720_000_000),
    st.integers(1_700_000_000_000, 1_720_000_000_000),
    st.just(None), st.booleans(), st.floats(), st.just({"a": 1}), st.just([1]),
)  # fmt: skip
VALUES = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(), st.just(None), st.booleans(),
    st.sampled_from(["12.5", " 3 ", "", "  ", "abc", "nan", "inf", "1e400", "-0"]),
    st.just(10**400), st.just({"x": 1}), st.just([2]),
)  # fmt: skip
DIMENSIONS = st.one_of(
    st.sampled_from(["paid", "open", ""]), st.just(None), st.integers(-5, 5), st.floats(),
    st.booleans(), st.just({"k": "v"}), st.just(["a"]), st.just(10**5000),
)  # fmt: skip


CLEAN_DATES = {
    "iso_datetime": DATES.filter(lambda v: isinstance(v, str) and v[:2] in ("20", " 2")),
    "iso_date": st.dates(dt.date(2024, 1, 1), dt.date(2024, 6, 1)).map(dt.date.isoformat),
    "unix": st.integers(1_700_000_000, 1_720_000_000) | st.floats(1.7e9, 1.72e9),
    "unix_ms": st.integers(1_700_000_000_000, 1_720_000_000_000),
}
CLEAN_VALUES = st.integers(-1000, 1000) | st.floats(-1e6, 1e6) | st.just(None)
CLEAN_DIMENSIONS = st.sampled_from(["paid", "open", ""]) | st.just(None) | st.integers(0, 3)


def _record(draw, fmt: str, odd: bool) -> object:
    """A record; an odd one may hold anything, a plain one what an API usually sends."""
    if odd and draw(st.integers(0, 20)) == 0:
        return draw(st.sampled_from([None, "text", 3, ["list"]]))
    dates = DATES if odd else CLEAN_DATES[fmt]
    values = VALUES if odd else CLEAN_VALUES
    dimensions = DIMENSIONS if odd else CLEAN_DIMENSIONS
    record = {}
    for name, strategy in (
        ("created_at", dates), ("updated_at", DATES if odd else CLEAN_DATES["iso_datetime"]),
        ("amount", values), ("rating", values), ("status", dimensions),
    ):  # fmt: skip
        if (name == "created_at" and not odd) or draw(st.integers(0, 12)) != 0:
            record[name] = draw(strategy)
    record["nested"] = {"amount": draw(values), "status": draw(dimensions)}
    return record


def _orders_spec(
    date_format: str,
    *,
    nested: bool,
    rating_agg: str = "mean",
    dimension: bool = True,
    incremental: str | None = None,
) -> dict:
    """A declarative spec over /orders: revenue, orders, rated and rating, by status when
    ``dimension``, the fields nested under ``nested`` when asked, incremental on
    ``updated_at`` in the given format."""
    field = "nested.{}".format if nested else "{}".format
    spec = {
        "base_url": "https://api.example.com",
        "endpoint": "/orders",
        "auth": {"type": "bearer"},
        "mapping": {
            "date_field": "created_at",
            "date_format": date_format,
            "metrics": [
                {"name": "revenue", "field": field("amount"), "agg": "sum"},
                {"name": "orders", "agg": "count"},
                {"name": "rated", "field": "rating", "agg": "count"},
                {"name": "rating", "field": "rating", "agg": rating_agg},
            ],
        },
    }
    if dimension:
        spec["mapping"]["dimension"] = {"field": field("status"), "categorical": True}
    if incremental:
        spec["incremental"] = {"param": "since", "format": incremental, "field": "updated_at"}
    return spec


def _spec(draw) -> dict:
    return _orders_spec(
        draw(st.sampled_from(["iso_datetime", "iso_date", "unix", "unix_ms"])),
        nested=draw(st.booleans()),
        rating_agg=draw(st.sampled_from(["mean", "sum"])),
        dimension=draw(st.booleans()),
        incremental=(
            draw(st.sampled_from(["iso_datetime", "iso_date", "unix"]))
            if draw(st.booleans())
            else None
        ),
    )


def _take(spec, pages, *, one_by_one: bool, never_one_by_one: bool = False):
    columns = rest._Columns(spec, WINDOW_START, CONNECTION)
    if one_by_one:
        columns._add_page_columns = lambda records: rest._ONE_BY_ONE
    if never_one_by_one:

        def add(record):
            raise AssertionError("a plain page was taken one record at a time")

        columns.add = add
    newest = []
    try:
        for page in pages:
            newest.append(columns.add_page(page))
    except Exception as exc:  # the outcome compared: which error, with which message
        return ("error", type(exc), str(exc))
    return (
        "taken",
        newest,
        columns.at,
        columns.dimension,
        [[("nan" if v is not None and math.isnan(v) else v) for v in c] for c in columns.values],
        columns.seen_fields,
    )


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(st.data())
def test_a_page_taken_a_field_at_a_time_is_the_same_as_record_by_record(data):
    spec = parse_spec(_spec(data.draw))
    fmt = spec.mapping.date_format
    pages = []
    for _ in range(data.draw(st.integers(1, 3))):
        odd = data.draw(st.integers(0, 3)) == 0  # most pages are plain, some odd
        size = data.draw(st.integers(0, 8))
        # an odd page holds a few odd records among plain ones
        pages.append(
            [
                _record(data.draw, fmt, odd and data.draw(st.integers(0, 3)) == 0)
                for _ in range(size)
            ]
        )
    assert _take(spec, pages, one_by_one=False) == _take(spec, pages, one_by_one=True)


#: plain pages of every shape a format takes, with the few odd values APIs do send
PLAIN_DATES = {
    "iso_datetime": [
        "2024-03-05T10:00:00Z", "2024-03-05T10:00:00-05:00", "2024-03-05T23:30:00+02:00",
        " 2024-03-06T10:00:00Z ", "2024-03-05", "2024-03-05T10:00:00.25", "2024-02-20T10:00:00Z",
        "2024-03-01T01:00:00+02:00", "2024-02-29T23:00:00-02:00", "20240305T100000Z",
    ],
    "iso_date": ["2024-03-05", " 2024-03-06", "2024-03-07T10:00:00Z", "2024-02-01"],
    "unix": [1_709_632_800, 1_709_632_800.5, "1709632800", 1_706_000_000],
    "unix_ms": [1_709_632_800_000, 1_709_632_800_500.0, 1_706_000_000_000],
}  # fmt: skip
PLAIN_VALUES = [12.5, 3, None, "7.25", " 4 ", "", -2, 0, 1e300]
PLAIN_DIMENSIONS = ["paid", "", None, 3, 2.5, True, {"a": 1}, ["x"]]


@pytest.mark.parametrize("fmt", list(PLAIN_DATES))
@pytest.mark.parametrize("incremental", [None, "iso_datetime", "unix"])
@pytest.mark.parametrize("nested", [False, True])
def test_plain_pages_give_the_same_columns_either_way(fmt, incremental, nested):
    spec = _orders_spec(fmt, nested=nested, incremental=incremental)
    dates, updated = PLAIN_DATES[fmt], PLAIN_DATES[incremental or "iso_datetime"]
    records = []
    for index in range(24):
        value = PLAIN_VALUES[index % len(PLAIN_VALUES)]
        dimension = PLAIN_DIMENSIONS[index % len(PLAIN_DIMENSIONS)]
        record = {
            "created_at": dates[index % len(dates)],
            "updated_at": updated[(index * 7) % len(updated)],
            "rating": PLAIN_VALUES[(index * 5) % len(PLAIN_VALUES)],
        }
        if nested:
            record["nested"] = {"amount": value, "status": dimension}
        else:
            record.update(amount=value, status=dimension)
        records.append(record)
    pages = [records[:10], records[10:11], [], records[11:]]
    spec = parse_spec(spec)
    taken = _take(spec, pages, one_by_one=False, never_one_by_one=True)
    assert taken[0] == "taken" and len(taken[2]) > 15  # most records are in the window
    assert taken == _take(spec, pages, one_by_one=True)


@pytest.mark.parametrize("fmt", ["iso_datetime", "unix"])
def test_clean_pages_are_taken_a_field_at_a_time(fmt, monkeypatch):
    """The common case does not fall back to one record at a time (or this is no faster)."""
    spec = parse_spec(
        {
            "base_url": "https://api.example.com",
            "endpoint": "/orders",
            "auth": {"type": "bearer"},
            "mapping": {
                "date_field": "created_at",
                "date_format": fmt,
                "dimension": {"field": "status", "categorical": True},
                "metrics": [
                    {"name": "revenue", "field": "amount", "agg": "sum"},
                    {"name": "orders", "agg": "count"},
                ],
            },
        }
    )
    when = "2024-03-05T10:00:00Z" if fmt == "iso_datetime" else 1_709_632_800
    early = "2024-01-05T10:00:00+01:00" if fmt == "iso_datetime" else 1_704_448_800
    page = [
        {"created_at": when, "amount": 12.5, "status": "paid"},
        {"created_at": early, "amount": 3, "status": "open"},  # before the window
        {"created_at": when, "amount": None, "status": None},
    ]
    columns = rest._Columns(spec, WINDOW_START, CONNECTION)
    monkeypatch.setattr(columns, "add", None)  # not called: the page is taken whole
    newest = columns.add_page(page)
    assert newest == dt.datetime(2024, 3, 5, 10, tzinfo=dt.UTC)
    assert columns.at == [1_709_632_800.0, 1_709_632_800.0]
    assert columns.dimension == ["paid", ""]
    assert columns.values == [[12.5, None], [1.0, 1.0]]
    assert columns.seen_fields == {"amount"}


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.lists(
        st.tuples(
            # instants around day boundaries, fractions of a microsecond and before 1970
            st.one_of(
                st.floats(-3 * 86_400, 3 * 86_400, allow_nan=False),
                st.integers(-3, 3).map(lambda day: day * 86_400 - 5e-7),
                st.integers(-3, 3).map(lambda day: day * 86_400 + 0.0),
                st.floats(1.7e9, 1.72e9),
            ),
            st.sampled_from(["paid", "open", ""]),
            *[st.floats(-1e6, 1e6) | st.just(None)] * 4,  # the spec's four metrics
        ),
        min_size=1,
        max_size=40,
    )
)
def test_the_long_rows_are_the_columns_unfolded_one_metric_after_another(records):
    """``frame`` unfolds the columns into one row per record and metric, metric after
    metric in the spec's order, each record's UTC day that of its instant floored to the
    microsecond, ``seq`` its place among the records."""
    spec = parse_spec(_orders_spec("unix", nested=False, rating_agg="mean", dimension=True))
    columns = rest._Columns(spec, dt.date(1960, 1, 1), CONNECTION)
    columns.at = [at for at, *_ in records]
    columns.dimension = [dimension for _, dimension, *_ in records]
    columns.values = [[record[2 + index] for record in records] for index in range(4)]
    columns.seen_fields = {metric.field for metric in spec.mapping.metrics}
    epoch = dt.date(1970, 1, 1)
    expected = [
        (
            metric.name,
            metric.agg,
            dimension,
            epoch + dt.timedelta(days=math.floor(at * 1_000_000) // 86_400_000_000),
            at,
            seq,
            values[index],
        )
        for index, metric in enumerate(spec.mapping.metrics)
        for seq, (at, dimension, *values) in enumerate(records)
    ]
    frame = columns.frame()
    assert frame.schema == rest.RAW_SCHEMA
    assert frame.rows() == expected
