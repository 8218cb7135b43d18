"""A declarative REST source: a spec file (auth, paging, records, metrics) instead of code.

The spec (``rest_spec``) is read and validated in full before any request, at
``connection add`` and again at each fetch; a bad spec fails with one message that
starts with the field at fault (``spec.paginator.type: …``). Secrets never live in the
spec: its ``auth`` says only how to present the connection's encrypted credentials.
Its paginator and auth are the shared ones every connector uses. See
``docs/sources/example-rest.toml``.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import polars as pl

from ..errors import InvalidInput, SourceError
from ..registry import ConnectionInfo
from ..warehouse import facts_of_each
from .auth import OAuthSpec, TokenSource, build_auth
from .base import FactRules, FetchRequest, FetchResult, MetricMeta, Source
from .http import get_json
from .paginators import PagesSeen, dig
from .rest_spec import RestSpec, SpecError, load_spec
from .urls import LeavesOrigin, same_origin_url

#: the minimised raw records: one row per (record, metric), with what aggregation needs
RAW_SCHEMA = {
    "metric": pl.String,
    "agg": pl.String,
    "dimension": pl.String,
    "day": pl.Date,
    "at": pl.Float64,
    "seq": pl.Int64,
    "value": pl.Float64,
}


# -- dates ----------------------------------------------------------------------------


def parse_instant(value: Any, fmt: str) -> dt.datetime | None:
    """A record's date or time as an aware UTC datetime; None when it is not one."""
    try:
        if fmt in ("unix", "unix_ms"):
            if isinstance(value, bool):
                return None
            number = float(value)
            if not math.isfinite(number):
                return None
            seconds = number / 1000 if fmt == "unix_ms" else number
            return dt.datetime.fromtimestamp(seconds, dt.UTC)
        if not isinstance(value, str):
            return None
        if fmt == "iso_date":
            day = dt.date.fromisoformat(value.strip()[:10])
            return dt.datetime.combine(day, dt.time(), dt.UTC)
        moment = dt.datetime.fromisoformat(value.strip())
    except (ValueError, TypeError, OverflowError, OSError):
        return None
    if moment.tzinfo is None:
        # A time without an offset is taken as UTC, the usual API convention.
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def format_instant(day: dt.date, fmt: str) -> str:
    moment = dt.datetime.combine(day, dt.time(), dt.UTC)
    if fmt == "iso_date":
        return day.isoformat()
    if fmt == "iso_datetime":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if fmt == "unix_ms":
        return str(int(moment.timestamp()) * 1000)
    return str(int(moment.timestamp()))


# -- the source ------------------------------------------------------------------------


class RestSource(Source):
    name = "rest"
    title = "REST API"
    description = "Any JSON REST API, described by a spec file: auth, paging, records and metrics."
    auth_kinds = ("api_key", "basic", "oauth2")
    default_base_url = ""
    options = {
        "base_url": "API root; overrides the spec's base_url",
        "spec": "path to the spec file (.toml, or .yaml)",
    }
    #: metric names come from each connection's spec
    metrics: dict[str, str] = {}
    stream = "records"

    def validate_options(self, options: dict[str, str]) -> dict[str, str]:
        options = super().validate_options(options)
        if not options.get("spec"):
            raise InvalidInput("Source 'rest' needs the option spec=PATH to a spec file.")
        path = Path(options["spec"]).expanduser().resolve()
        load_spec(path)
        # Stored absolute, so a refresh run from another directory finds the same file.
        return {**options, "spec": str(path)}

    def spec(self, connection: ConnectionInfo) -> RestSpec:
        """The connection's spec, validated; a bad one is a ``SourceError`` for it alone."""
        try:
            return load_spec(connection.options.get("spec") or "")
        except SpecError as exc:
            raise SourceError.of_connection(connection.id, str(exc)) from None

    def fact_rules(self, connection: ConnectionInfo) -> FactRules:
        """The spec's declared breakdown and metric kinds (checked again at load time)."""
        mapping = self.spec(connection).mapping
        return FactRules(
            dimension=mapping.dimension,
            kinds={metric.name: metric.kind for metric in mapping.metrics},
        )

    def metric_meta(self, connection: ConnectionInfo | None = None) -> dict[str, MetricMeta]:
        if connection is None:
            return {}
        try:
            metrics = self.spec(connection).mapping.metrics
        except SourceError:
            return {}  # a spec gone bad: its facts are shown with plain labels
        return {m.name: MetricMeta(m.label or m.name, m.kind, m.polarity, m.unit) for m in metrics}

    def base_url(self, connection: ConnectionInfo) -> str:
        # Called before the fetch's error handling, so a bad spec must not raise here;
        # fetch reports it.
        if connection.options.get("base_url"):
            return str(connection.options["base_url"]).rstrip("/")
        try:
            return load_spec(connection.options.get("spec") or "").base_url
        except SpecError:
            return self.default_base_url

    def oauth_spec_for(self, options: Mapping[str, Any]) -> OAuthSpec | None:
        """The provider's OAuth2 endpoints from the spec file the options name."""
        auth = load_spec(options.get("spec") or "").auth
        if auth.type != "oauth2" or not auth.token_url or not auth.authorize_url:
            return None
        token = urlsplit(auth.token_url)
        return OAuthSpec(
            base_url=f"{token.scheme}://{token.netloc}",
            authorize_path=auth.authorize_url,
            token_path=auth.token_url,
            revoke_path=auth.revoke_url,
            scopes=auth.scopes,
        )

    def build_auth(
        self,
        connection: ConnectionInfo,
        secrets: dict[str, str],
        tokens: TokenSource | None = None,
    ) -> httpx.Auth:
        spec = self.spec(connection)
        wanted = spec.auth.credential_kind
        if connection.auth_kind != wanted:
            raise SourceError.of_connection(
                connection.id,
                f"the spec's auth type {spec.auth.type!r} needs {wanted} credentials, "
                f"but the connection holds {connection.auth_kind}",
            )
        return build_auth(spec.auth, secrets, tokens, connection_id=connection.id)

    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult:
        connection = request.connection
        spec = self.spec(connection)
        base_url = self.base_url(connection)
        params: dict[str, Any] = dict(spec.params)
        if spec.incremental is not None:
            params[spec.incremental.param] = format_instant(
                request.window_start, spec.incremental.format
            )
        page = spec.paginator.first(spec.endpoint, params) if spec.paginator else None
        url, page_params = (page.url, page.params) if page else (spec.endpoint, params)
        columns = _Columns(spec, request.window_start, connection.id)
        newest: dt.datetime | None = None
        seen = PagesSeen()
        requests = 0
        started = time.perf_counter()
        while True:
            if not seen.advances(url, page_params):
                raise SourceError.of_connection(
                    connection.id,
                    f"{spec.endpoint} pagination does not advance; check the spec's paginator",
                )
            body, response = await get_json(
                client,
                url,
                connection_id=connection.id,
                params=page_params,
                auth=request.auth,
            )
            requests += 1
            records = dig(body, spec.records_path)
            if not isinstance(records, list):
                raise SourceError.of_connection(
                    connection.id,
                    f"{spec.endpoint} answered without a list at "
                    f"spec.records_path {spec.records_path or '(the whole body)'!r}",
                )
            page_newest = columns.add_page(records)
            if page_newest is not None and (newest is None or page_newest > newest):
                newest = page_newest
            if page is None:
                break
            page = spec.paginator.next(page, body, response, records)
            if page is None:
                break
            url = _follow(base_url, page.url, connection.id) if page.is_link else page.url
            page_params = page.params
        frame = columns.frame()
        next_cursor = newest.isoformat() if newest is not None else request.cursor
        return FetchResult(
            records=frame,
            next_cursor=next_cursor,
            requests=requests,
            latency_s=time.perf_counter() - started,
        )

    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        return self.aggregate_many([records])[0]

    def aggregate_many(self, records: list[pl.DataFrame]) -> list[pl.DataFrame]:
        """Every connection's facts from one query: their records side by side, told
        apart by their index (``_k``), grouped by it as well."""
        return facts_of_each(records, _facts)


def _facts(records: pl.LazyFrame, by: list[str]) -> pl.DataFrame:
    """The facts of raw rows (``RAW_SCHEMA``) grouped by ``by`` as well, in key order.

    The sort is done first, eagerly: a lazy plan may drop a sort before a grouping whose
    aggregations polars deems order-free, and every one here reads a group's rows in
    time order (the sums too, ``_SUM``).
    """
    keys = [*by, "metric", "dimension", "day"]
    # In time order (the records' order breaks ties), which "last" and "first" read.
    ordered = records.collect().sort("at", "seq", multithreaded=False)
    aggs = set(ordered.get_column("agg").unique().to_list())
    present = [agg for agg in _AGGREGATIONS if agg in aggs]
    # One pass over the groups: a metric has one agg, so (metric, agg, dimension, day)
    # groups as (metric, dimension, day) does, each computing what its agg asks for.
    grouped = ordered.group_by([*keys, "agg"]).agg(_AGGREGATIONS[agg].alias(agg) for agg in present)
    value = pl.when(pl.col("agg") == present[0]).then(pl.col(present[0]))
    for agg in present[1:]:
        value = value.when(pl.col("agg") == agg).then(pl.col(agg))
    facts = grouped.select(*keys, value.cast(pl.Float64).alias("value"))
    return facts.filter(pl.col("value").is_not_null()).sort(keys)


#: a group's non-null values added one after another, in time order: the same bits
#: whatever else is grouped beside them or however polars splits the work (its own sum
#: adds in blocks, whose bounds move with the rows around a group)
_SUM = pl.col("value").drop_nulls().cum_sum().last()

#: agg -> its value over a group of raw rows in time order
_AGGREGATIONS = {
    "sum": _SUM.fill_null(0.0),
    "count": pl.col("value").count().cast(pl.Float64),
    "mean": _SUM / pl.col("value").count(),
    "last": pl.col("value").drop_nulls().last(),
    "first": pl.col("value").drop_nulls().first(),
}


def _follow(base_url: str, link: str, connection_id: str) -> str:
    try:
        return same_origin_url(base_url, link)
    except LeavesOrigin as exc:
        raise SourceError.of_connection(
            connection_id,
            f"a next-page link points to another host ({exc.host}); "
            "WriteVue does not send credentials there",
        ) from None


class _Columns:
    """The records of one fetch, kept as columns: one entry per record in the window.

    Each record is checked as it arrives (a missing date or a value that is not a number
    is a ``SourceError`` naming the field); ``frame`` then unfolds the columns into the
    minimised long rows (one per record and metric, ``RAW_SCHEMA``).
    """

    def __init__(self, spec: RestSpec, window_start: dt.date, connection_id: str):
        self.spec = spec
        self.connection_id = connection_id
        self.window_start_ts = dt.datetime.combine(window_start, dt.time(), dt.UTC).timestamp()
        self.at: list[float] = []
        self.dimension: list[str] = []
        self.values: list[list[float | None]] = [[] for _ in spec.mapping.metrics]
        self.seen_fields: set[str] = set()

    def add_page(self, records: list) -> dt.datetime | None:
        """Take one page's records; return the newest incremental instant among them."""
        taken = self._add_page_columns(records)
        if taken is not _ONE_BY_ONE:
            return taken
        # Something on this page is not what the columns expect: take the records one by
        # one, which raises the error of the first record at fault (or takes them all).
        newest = None
        for record in records:
            moment = self.add(record)
            if moment is not None and (newest is None or moment > newest):
                newest = moment
        return newest

    def _add_page_columns(self, records: list) -> Any:
        """``add`` for a whole page at once, a field at a time: the same columns, cursor
        and checks, without a Python call per record and field. Changes nothing and gives
        ``_ONE_BY_ONE`` for any page it cannot take exactly as ``add`` would (a record
        that is not an object, a missing, odd or unparseable value, any exception), so
        that ``add`` takes it and names the first record at fault."""
        if not records:
            return None
        try:
            return self._take_columns(records)
        except Exception:
            return _ONE_BY_ONE

    def _take_columns(self, records: list) -> Any:
        spec, mapping = self.spec, self.spec.mapping
        if not all(type(record) is dict for record in records):
            return _ONE_BY_ONE
        raw_dates = _column(records, mapping.date_field)
        if mapping.date_format == "iso_datetime":
            if not all(type(value) is str for value in raw_dates):
                return _ONE_BY_ONE
            try:
                parsed = [_fromisoformat(value) for value in raw_dates]
            except ValueError:  # perhaps surrounding blanks, which parse_instant strips
                parsed = [_fromisoformat(value.strip()) for value in raw_dates]
            moments = [
                moment.astimezone(_UTC)
                if moment.tzinfo is not None
                else moment.replace(tzinfo=_UTC)
                for moment in parsed
            ]
        else:
            moments = [parse_instant(value, mapping.date_format) for value in raw_dates]
            if None in moments:
                return _ONE_BY_ONE
        at = [moment.timestamp() for moment in moments]
        if spec.incremental is None:
            cursors = moments
        else:
            incremental = spec.incremental
            cursors = [
                parse_instant(value, incremental.format) if value is not None else None
                for value in _column(records, incremental.field)
            ]
        newest = max((moment for moment in cursors if moment is not None), default=None)
        # The server may ignore the incremental parameter; days before the window are
        # not ours to rewrite.
        start = self.window_start_ts
        if min(at) < start:
            kept = [index for index, instant in enumerate(at) if instant >= start]
            records = [records[index] for index in kept]
            at = [at[index] for index in kept]
            if not records:
                return newest
        columns: list[list[float | None]] = []
        seen: list[str] = []
        for metric in mapping.metrics:
            if metric.field is None:
                columns.append([1.0] * len(records))
                continue
            raw = _column(records, metric.field)
            if raw.count(None) != len(raw):
                seen.append(metric.field)
            kinds = set(map(type, raw))
            if kinds <= _NUMBER_TYPES:
                values: list[float | None] = list(map(float, raw))
                if not all(map(math.isfinite, values)):
                    return _ONE_BY_ONE
            else:
                values = [_number(value) for value in raw]  # ValueError: one by one
            if metric.agg == "count":
                values = [None if value is None else 1.0 for value in values]
            columns.append(values)
        if mapping.dimension is None:
            dimensions = [""] * len(records)
        else:
            raw = _column(records, mapping.dimension.name)
            if all(type(value) is str for value in raw):
                dimensions = raw
            else:
                dimensions = [
                    "" if value is None or isinstance(value, (dict, list)) else str(value)
                    for value in raw
                ]
        # Every check passed: only now does anything change.
        self.at.extend(at)
        self.dimension.extend(dimensions)
        for column, values in zip(self.values, columns, strict=True):
            column.extend(values)
        self.seen_fields.update(seen)
        return newest

    def error(self, message: str) -> SourceError:
        return SourceError.of_connection(self.connection_id, message)

    def add(self, record: Any) -> dt.datetime | None:
        """Take one record; return its incremental instant (for the cursor)."""
        spec, mapping = self.spec, self.spec.mapping
        if not isinstance(record, Mapping):
            raise self.error(f"{spec.endpoint} listed a record that is not an object")
        raw_date = dig(record, mapping.date_field)
        if raw_date is None:
            raise self.error(
                f"a record from {spec.endpoint} lacks the required field "
                f"{mapping.date_field!r} (spec.mapping.date_field)"
            )
        moment = parse_instant(raw_date, mapping.date_format)
        if moment is None:
            raise self.error(
                f"a record's {mapping.date_field!r} is not a {mapping.date_format} value "
                "(spec.mapping.date_format)"
            )
        cursor_instant = moment
        if spec.incremental is not None:
            raw_cursor = dig(record, spec.incremental.field)
            cursor_instant = (
                parse_instant(raw_cursor, spec.incremental.format)
                if raw_cursor is not None
                else None
            )
        at = moment.timestamp()
        # The server may ignore the incremental parameter; days before the window are
        # not ours to rewrite.
        if at < self.window_start_ts:
            return cursor_instant
        values = []
        for metric in mapping.metrics:
            if metric.field is None:
                values.append(1.0)
                continue
            raw = dig(record, metric.field)
            if raw is not None:
                self.seen_fields.add(metric.field)
            try:
                value = _number(raw)
            except ValueError:
                raise self.error(
                    f"a record's {metric.field!r} is not a number "
                    f"(spec.mapping metric {metric.name!r})"
                ) from None
            if metric.agg == "count" and value is not None:
                value = 1.0
            values.append(value)
        dimension = ""
        if mapping.dimension is not None:
            raw = dig(record, mapping.dimension.name)
            dimension = "" if raw is None or isinstance(raw, (dict, list)) else str(raw)
        self.at.append(at)
        self.dimension.append(dimension)
        for column, value in zip(self.values, values, strict=True):
            column.append(value)
        return cursor_instant

    def frame(self) -> pl.DataFrame:
        """The long rows (``RAW_SCHEMA``); a metric field no record carried is drift."""
        spec = self.spec
        if not self.at:
            return pl.DataFrame(schema=RAW_SCHEMA)
        for metric in spec.mapping.metrics:
            if metric.field is not None and metric.field not in self.seen_fields:
                raise self.error(
                    f"no record from {spec.endpoint} has the field {metric.field!r} "
                    f"(metric {metric.name!r}); the API may have changed, update the spec"
                )
        # Built from series, without a query: each polars query costs a fixed ~0.1 ms
        # of planning, several times what these columns of a thousand rows cost.
        rows = len(self.at)
        at = pl.Series("at", self.at, pl.Float64)
        at_us = at * 1_000_000
        if at_us.min() < 0:  # truncating to whole microseconds floors only from 0 on
            at_us = at_us.floor()
        # Instants are UTC, so the day is the UTC calendar day of the timestamp.
        day = at_us.cast(pl.Int64).cast(pl.Datetime("us")).cast(pl.Date).alias("day")
        dimension = pl.Series("dimension", self.dimension, pl.String)
        # The records' order, which breaks ties between equal instants for "last".
        seq = pl.Series("seq", range(rows), pl.Int64)
        return pl.concat(
            [
                pl.DataFrame(
                    [
                        pl.Series("metric", [metric.name], pl.String).new_from_index(0, rows),
                        pl.Series("agg", [metric.agg], pl.String).new_from_index(0, rows),
                        dimension,
                        day,
                        at,
                        seq,
                        pl.Series("value", values, pl.Float64),
                    ]
                )
                for metric, values in zip(spec.mapping.metrics, self.values, strict=True)
            ]
        )


#: what ``_Columns._add_page_columns`` gives for a page that ``add`` must take one by one
_ONE_BY_ONE = object()
_UTC = dt.UTC
_fromisoformat = dt.datetime.fromisoformat
#: metric values taken as they are (``bool`` is neither: a flag is not a number)
_NUMBER_TYPES = frozenset({int, float})


def _column(records: list[dict], path: str) -> list:
    """The value at ``path`` of every record (``dig``), None where absent."""
    if "." not in path:
        return [record.get(path) for record in records]
    return [dig(record, path) for record in records]


def _number(raw: Any) -> float | None:
    """A metric value from a number or a numeric string; None for null or empty.

    Raises ValueError for anything else, which is drift the spec does not cover.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(raw)
    number = float(raw)
    if not math.isfinite(number):
        raise ValueError(raw)
    return number
