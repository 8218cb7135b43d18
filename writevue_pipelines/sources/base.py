"""What a connector is: options it accepts, how it fetches, how it aggregates."""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import httpx
import polars as pl

from ..aggregates_only import DEFAULT_MAX_VALUES, MAX_VALUES_LIMIT
from ..errors import InvalidInput, SourceError
from ..registry import ConnectionInfo
from .auth import ApiKeyPlacement, AuthConfig, OAuthSpec, TokenSource, build_auth
from .urls import NOT_HTTP_URL, http_url_problem

#: What a metric's daily value is, which says how days and breakdowns may be combined:
#: ``counter`` (events counted or summed within the day: payments, commits, sessions),
#: ``gauge`` (a level at a moment: stars, open issues, a balance) or ``ratio`` (a
#: mean or rate). Only a gauge may keep one record's value (a REST spec's ``last`` or
#: ``first``). A metric without a declared kind is a counter.
MetricKind = Literal["counter", "gauge", "ratio"]
METRIC_KINDS: tuple[MetricKind, ...] = get_args(MetricKind)


#: Whether a rise is good news for the client: refunds, fees, churn and open issues going
#: up is bad; a metric left out is ``up_good``.
Polarity = Literal["up_good", "up_bad", "neutral"]
POLARITIES: tuple[Polarity, ...] = get_args(Polarity)
#: How a value reads: ``count`` (whole numbers), ``money`` (the fact's dimension is its
#: ISO 4217 currency code), ``percent`` (a fraction, shown x100 with %), ``number``.
Unit = Literal["count", "money", "percent", "number"]
UNITS: tuple[Unit, ...] = get_args(Unit)


@dataclass(frozen=True)
class MetricMeta:
    """What a dashboard must know about one metric of a connection to show it right."""

    label: str
    kind: MetricKind = "counter"
    polarity: Polarity = "up_good"
    unit: Unit = "count"


@dataclass(frozen=True)
class Dimension:
    """The one categorical breakdown a source's facts carry in their ``dimension`` column.

    ``name`` is the field it comes from (named in errors). At load time a dimension with
    more than ``max_values`` distinct values per metric and day is refused, and so are
    values that look like personal identifiers unless ``code`` says they are
    non-personal codes (see ``aggregates_only``).
    """

    name: str
    max_values: int = DEFAULT_MAX_VALUES
    code: bool = False
    #: where it is declared, for errors ("spec.mapping.dimension"); empty for code
    declared_at: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_values <= MAX_VALUES_LIMIT:
            raise ValueError(
                f"dimension {self.name!r}: max_values must be 1 to {MAX_VALUES_LIMIT}, "
                f"not {self.max_values}"
            )

    def described(self) -> str:
        where = f" ({self.declared_at})" if self.declared_at else ""
        return f"dimension {self.name!r}{where}"


@dataclass(frozen=True)
class FactRules:
    """What a connection's facts are checked against before they are stored."""

    dimension: Dimension | None
    #: every metric the connection may report -> its kind
    kinds: Mapping[str, MetricKind]


@dataclass(frozen=True)
class FetchRequest:
    connection: ConnectionInfo
    auth: httpx.Auth
    window_start: dt.date
    cursor: str | None


@dataclass(frozen=True)
class FetchResult:
    """Raw records (minimised to the fields aggregation needs) and where to resume."""

    records: pl.DataFrame
    next_cursor: str | None
    requests: int
    latency_s: float


class Source(ABC):
    """A kind of data source. One instance serves every connection of that kind."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    auth_kinds: ClassVar[tuple[str, ...]]
    default_base_url: ClassVar[str]
    #: option name -> help text; anything else given at `connection add` is refused.
    options: ClassVar[dict[str, str]] = {"base_url": "API root; defaults to the provider's"}
    #: metric name -> label shown on dashboards
    metrics: ClassVar[dict[str, str]]
    stream: ClassVar[str] = "default"
    #: metrics a source can only observe as of today (kept as history, never re-read)
    snapshot_metrics: ClassVar[frozenset[str]] = frozenset()
    #: metrics that may be negative (Stripe's net volume); the checks flag any other below 0
    signed_metrics: ClassVar[frozenset[str]] = frozenset()
    #: requests in flight to this provider per process; None keeps the HTTP layer's default
    max_in_flight: ClassVar[int | None] = None
    #: metric name -> its kind (see ``MetricKind``); a metric left out is a counter.
    #: ``snapshot_metrics`` must be gauges.
    metric_kinds: ClassVar[Mapping[str, MetricKind]] = {}
    #: the breakdown the facts' ``dimension`` column carries; None: always ""
    dimension: ClassVar[Dimension | None] = None
    #: metric name -> whether up is good (see ``Polarity``); a metric left out is up_good
    metric_polarity: ClassVar[Mapping[str, Polarity]] = {}
    #: metric name -> how its values read (see ``Unit``); a metric left out is a count
    metric_units: ClassVar[Mapping[str, Unit]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A built-in source's declarations are checked when its module is imported."""
        super().__init_subclass__(**kwargs)
        metrics = getattr(cls, "metrics", None) or {}
        for metric, kind in cls.metric_kinds.items():
            if kind not in METRIC_KINDS:
                raise TypeError(
                    f"{cls.__qualname__}.metric_kinds[{metric!r}]: {kind!r} is not one of "
                    f"{', '.join(METRIC_KINDS)}"
                )
            if metrics and metric not in metrics:
                raise TypeError(f"{cls.__qualname__}.metric_kinds names no metric {metric!r}")
        for metric in cls.snapshot_metrics:
            if cls.metric_kinds.get(metric) != "gauge":
                raise TypeError(
                    f"{cls.__qualname__}: snapshot metric {metric!r} keeps a value as of one "
                    'moment, so its kind must be "gauge"'
                )
        for table, allowed in ((cls.metric_polarity, POLARITIES), (cls.metric_units, UNITS)):
            for metric, value in table.items():
                if value not in allowed:
                    raise TypeError(
                        f"{cls.__qualname__}: {metric!r} is {value!r}, not one of "
                        f"{', '.join(allowed)}"
                    )
                if metrics and metric not in metrics:
                    raise TypeError(f"{cls.__qualname__} declares no metric {metric!r}")
        if cls.dimension is not None and not isinstance(cls.dimension, Dimension):
            raise TypeError(f"{cls.__qualname__}.dimension must be a Dimension or None")

    def kind_of(self, metric: str) -> MetricKind:
        return self.metric_kinds.get(metric, "counter")

    def metric_meta(self, connection: ConnectionInfo | None = None) -> dict[str, MetricMeta]:
        """Every metric a connection reports, with its label, kind, polarity and unit
        (the REST source reads them from the connection's spec)."""
        return {
            metric: MetricMeta(
                label,
                self.kind_of(metric),
                self.metric_polarity.get(metric, "up_good"),
                self.metric_units.get(metric, "count"),
            )
            for metric, label in self.metrics.items()
        }

    def account_label(self, connection: ConnectionInfo) -> str:
        """Which account a connection reads, in words the client knows (a GitHub owner),
        so two connections of one source are told apart; "" when there is nothing to say."""
        return ""

    def fact_rules(self, connection: ConnectionInfo) -> FactRules:
        """The declarations a connection's facts are checked against at load time."""
        return FactRules(
            dimension=self.dimension,
            kinds={metric: self.kind_of(metric) for metric in self.metrics},
        )

    def validate_options(self, options: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InvalidInput(
                f"Source {self.name!r} has no option {unknown[0]!r}; "
                f"it takes {', '.join(sorted(self.options))}."
            )
        if "base_url" in options:
            problem = http_url_problem(options["base_url"], allow_fragment=True)
            if problem == NOT_HTTP_URL:
                raise InvalidInput(
                    "Option base_url must be an http(s) URL such as https://api.example.com."
                )
            if problem:
                raise InvalidInput("Option base_url must not carry credentials or a query string.")
        return options

    def allowed_writes(self, connection: ConnectionInfo) -> tuple:
        """(method, host, path) requests other than GET this source may make: read-only
        queries that providers document as POST (such as GA4's runReport). None by default."""
        return ()

    def base_url(self, connection: ConnectionInfo) -> str:
        return str(connection.options.get("base_url") or self.default_base_url).rstrip("/")

    #: how an API key is sent, for sources that take one
    api_key_placement: ClassVar[ApiKeyPlacement] = ApiKeyPlacement()
    #: the provider's OAuth2 endpoints, for sources that support OAuth2
    oauth: ClassVar[OAuthSpec | None] = None

    def oauth_spec_for(self, options: Mapping[str, Any]) -> OAuthSpec | None:
        """The OAuth2 endpoints of a connection with these options: ``oauth``, unless the
        source reads them per connection (the REST source, from its spec file)."""
        return self.oauth

    def build_auth(
        self,
        connection: ConnectionInfo,
        secrets: dict[str, str],
        tokens: TokenSource | None = None,
    ) -> httpx.Auth:
        """The credentials of one connection as an ``httpx.Auth``, built by ``AUTHS``."""
        kind = connection.auth_kind
        if kind not in self.auth_kinds:
            raise SourceError.of_connection(
                connection.id, f"{self.title} does not take {kind} credentials"
            )
        config = (
            AuthConfig.api_key(self.api_key_placement) if kind == "api_key" else AuthConfig(kind)
        )
        return build_auth(config, secrets, tokens, connection_id=connection.id)

    @abstractmethod
    async def fetch(self, client: httpx.AsyncClient, request: FetchRequest) -> FetchResult: ...

    @abstractmethod
    def aggregate(self, records: pl.DataFrame) -> pl.DataFrame:
        """Raw records to the warehouse's long format: metric, dimension, day, value."""

    def aggregate_many(self, records: list[pl.DataFrame]) -> list[pl.DataFrame]:
        """``aggregate`` of several connections' records, in their order.

        A load aggregates every connection staged together at once; a source whose
        aggregation can run as one query over all of them overrides this (each polars
        query has a fixed cost that a connection's thousand records do not dwarf).
        """
        return [self.aggregate(frame) for frame in records]
