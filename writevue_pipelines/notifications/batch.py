"""One notifications run's evaluation, for all its tenants at once.

The per-tenant path (``evaluate``) reads a tenant's settings, facts, rules, scorecards
and recipients and writes its rule states, unusual days and outbox in about eighteen
statements, and builds its figures in Python, day by day: some 20 ms a tenant, a third
of what refreshing the tenant costs. This module does the same work for a run's tenants
together, in some 8 ms a tenant (``bench/notifications.py``):

1. **Read** (no write lock): the tenants' settings, connections, goals, names, brands,
   message links, alert rules, due scorecards and active recipients, a few statements
   for the whole batch, as rows (no ORM objects); then their facts, one statement per
   connection straight from the driver on SQLite (reading them is a third of the
   batch's time).
2. **Figures** (``gather``): every series of a metric with one connection and one
   dimension (most of them) is merged for all tenants at once in numpy, exactly as
   ``figures.Figures`` merges it (a property test holds the two equal); a connection
   whose rows hold the same metrics every day is read as a grid, without looking at its
   rows one by one. The rest are merged by ``Figures`` itself. Each tenant's figures are
   then the dashboard's ``Resolver`` over those values (the merged ones kept as lists,
   a period's value a slice), so a scorecard's figures and an alert's sentence are
   computed by the same code as before.
3. **Unusual days**: ``anomaly.screen_array`` passes on, for every series of the batch at
   once, the days that may be unusual; ``anomaly.detect`` judges only those (a property
   test proves the screen never hides a day ``detect`` would flag), and an anomaly rule
   whose day the screen found usual only asks whether it has a verdict at all.
4. **Write** (one transaction, SQLite's write lock held only for it): the unusual days,
   the alert rules' episodes (their states read again under the lock, so two runs never
   fire one episode twice), the outbox (``delivery.enqueue_many``: contents, rendered
   when sent) and the scorecards' next sends, in bulk statements.

Python's cycle collector is paused meanwhile (``_no_cycle_collection``): the batch's
objects form no cycles, and each full collection would walk them all again.

A tenant or scorecard whose evaluation fails here, or a batch whose writes fail, is
handed to the per-tenant path, which names what fails (by id and exception kind) and
carries on with the others, as before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, repeat

import polars as pl
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from .. import figures, goals, registry, templates
from ..models import (
    AlertRule,
    Brand,
    Connection,
    DashboardTemplate,
    Fact,
    Goal,
    MetricAnomaly,
    NotificationRecipient,
    NotificationSuppression,
    Scorecard,
    Tenant,
    TenantSettings,
    utcnow,
)
from ..runtime import Runtime
from ..vault import Binding
from . import anomaly, config, delivery, evaluate, schedule, suppression
from .content import BrandInfo

DAY = dt.timedelta(days=1)
_log = logging.getLogger("writevue.notifications")
#: ids per IN (...) list
CHUNK = 500
_KIND_CODES = {"gauge": 1, "ratio": 2}


def _chunks(ids: Iterable[str], size: int = CHUNK) -> Iterable[list[str]]:
    ids = sorted(set(ids))
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


@dataclass(frozen=True)
class Target:
    """A recipient to queue a message for: no address (the message is rendered when it is
    sent), its suppression hash instead."""

    id: str
    channel: str
    digest: str


@dataclass
class Outcome:
    """What the batch computed, to be written in one transaction."""

    #: tenant -> its unusual days (tenants judged)
    anomalies: dict[str, list[evaluate.Anomaly]] = field(default_factory=dict)
    #: rule id -> (holds, value, the alert's content when it holds) for rules with data
    verdicts: dict[str, tuple[bool, float, object | None]] = field(default_factory=dict)
    #: scorecard id -> (scheduled for, content)
    cards: dict[str, tuple[dt.datetime, object]] = field(default_factory=dict)
    held: int = 0


@dataclass
class _Read:
    """Everything the batch read of its tenants, but facts."""

    tenants: dict[str, evaluate._Tenant]
    rules: dict[str, list[AlertRule]]
    cards: dict[str, Scorecard]
    recipients: dict[tuple[str, str], list[Target]]
    #: tenant -> last refresh of each connection that is refreshed (not paused/disabled)
    refreshed: dict[str, list[dt.datetime | None]]
    #: tenant -> first day of data, per connection (all its facts, not only the window's)
    history: dict[str, dict[str, dt.date]]
    #: tenant -> its name, encrypted (``name``)
    names: dict[str, bytes] = field(default_factory=dict)
    brands: dict[str, BrandInfo] = field(default_factory=dict)
    links: dict[str, str | None] = field(default_factory=dict)
    keys: object = None

    def name(self, tenant_id: str) -> str:
        """The tenant's name as its messages show it; a name that does not decrypt fails
        this tenant's messages only."""
        return self.keys.decrypt_text(
            self.names[tenant_id], Binding(tenant_id, None, "tenant.name")
        )


# -- reading ----------------------------------------------------------------------------------


def _read(
    session: Session, runtime: Runtime, tenant_ids: Sequence[str], card_ids: Sequence[str]
) -> _Read:
    keys, settings = runtime.keys, runtime.settings
    tenant_settings: dict[str, TenantSettings] = {}
    connections: dict[str, list] = {t: [] for t in tenant_ids}
    refreshed: dict[str, list] = {t: [] for t in tenant_ids}
    with_goals: set[str] = set()
    names: dict[str, bytes] = {}
    rules: dict[str, list[AlertRule]] = {t: [] for t in tenant_ids}
    for chunk in _chunks(tenant_ids):
        tenant_settings.update(
            (row.tenant_id, row)
            for row in session.execute(
                select(TenantSettings.__table__).where(TenantSettings.tenant_id.in_(chunk))
            )
        )
        for row in session.execute(
            select(Connection.__table__)
            .where(Connection.tenant_id.in_(chunk), Connection.status != "disabled")
            .order_by(Connection.created_at, Connection.id)
        ):
            # as ``evaluate._Tenant``: a paused connection's figures stay; a paused one is
            # not waited for (it will not be refreshed)
            connections[row.tenant_id].append(registry._connection_info(row))
            if row.status not in registry.NOT_REFRESHED:
                refreshed[row.tenant_id].append(row.last_refreshed_at)
        with_goals.update(
            session.scalars(select(Goal.tenant_id).where(Goal.tenant_id.in_(chunk)).distinct())
        )
        for tenant_id, name_ct in session.execute(
            select(Tenant.id, Tenant.name_ct).where(Tenant.id.in_(chunk))
        ):
            names[tenant_id] = name_ct  # decrypted when a message needs it (``_Read.name``)
        for rule in session.execute(
            select(*_RULE_COLUMNS)
            .where(AlertRule.tenant_id.in_(chunk))
            .order_by(AlertRule.created_at, AlertRule.id)
        ):
            rules[rule.tenant_id].append(rule)
    tenants = {}
    for tenant_id in tenant_ids:
        found = tenant_settings.get(tenant_id)
        template = (
            templates.template_for_tenant(session, tenant_id)
            if found is not None and found.template_id is not None
            else None
        )
        tenant_goals = goals.list_goals(session, tenant_id) if tenant_id in with_goals else []
        tenants[tenant_id] = evaluate._Tenant.of(
            tenant_id, found, template, tenant_goals, connections[tenant_id]
        )
    cards = {}
    for chunk in _chunks(card_ids):
        cards.update(
            (row.id, row)
            for row in session.execute(select(Scorecard.__table__).where(Scorecard.id.in_(chunk)))
        )
    read = _Read(
        tenants=tenants,
        rules=rules,
        cards=cards,
        recipients=_recipients(session, keys, rules, cards),
        refreshed=refreshed,
        history=_history(session, connections),
        names=names,
        keys=keys,
    )
    read.brands = _brands(session, tenant_ids)
    for tenant_id, row in tenant_settings.items():
        if row.message_link_ct is not None:
            read.links[tenant_id] = config.message_link_url(session, keys, tenant_id, settings)
    return read


def _brands(session: Session, tenant_ids: Sequence[str]) -> dict[str, BrandInfo]:
    """The brand of each tenant that has one (its own or its template's)."""
    branded: list[str] = []
    for chunk in _chunks(tenant_ids):
        branded += session.scalars(
            select(TenantSettings.tenant_id)
            .outerjoin(DashboardTemplate, DashboardTemplate.id == TenantSettings.template_id)
            .join(
                Brand,
                Brand.id == func.coalesce(TenantSettings.brand_id, DashboardTemplate.brand_id),
            )
            .where(TenantSettings.tenant_id.in_(chunk))
        )
    return {tenant_id: evaluate._brand(session, tenant_id) for tenant_id in branded}


_RECIPIENT_COLUMNS = (
    NotificationRecipient.id,
    NotificationRecipient.tenant_id,
    NotificationRecipient.scorecard_id,
    NotificationRecipient.alert_id,
    NotificationRecipient.channel,
    NotificationRecipient.address_ct,
    NotificationRecipient.address_sha256,
)
#: what the batch reads of an alert rule (in the order of their making)
_RULE_COLUMNS = (
    AlertRule.id,
    AlertRule.tenant_id,
    AlertRule.metric,
    AlertRule.dimension,
    AlertRule.condition,
    AlertRule.threshold,
    AlertRule.window_days,
    AlertRule.state,
    AlertRule.paused_at,
)


def _recipients(
    session: Session, keys, rules: dict[str, list[AlertRule]], cards: dict[str, Scorecard]
) -> dict[tuple[str, str], list[Target]]:
    """("scorecard" | "alert", id) -> its recipients not unsubscribed and not suppressed at
    the tenant, oldest first (``config.active_recipients``, matched by the stored hash)."""
    alert_ids = [rule.id for found in rules.values() for rule in found]
    found: dict[tuple[str, str], list[Target]] = {}
    rows: list[NotificationRecipient] = []
    for column, ids in (
        (NotificationRecipient.scorecard_id, list(cards)),
        (NotificationRecipient.alert_id, alert_ids),
    ):
        for chunk in _chunks(ids):
            # oldest first: every recipient of one scorecard or rule is in one chunk
            rows += session.execute(
                select(*_RECIPIENT_COLUMNS)
                .where(column.in_(chunk), NotificationRecipient.unsubscribed_at.is_(None))
                .order_by(NotificationRecipient.created_at, NotificationRecipient.id)
            )
    if not rows:
        return found
    stopped: set[tuple[str, str, str]] = set()
    for chunk in _chunks({row.tenant_id for row in rows}):
        stopped.update(
            tuple(row)
            for row in session.execute(
                select(
                    NotificationSuppression.tenant_id,
                    NotificationSuppression.channel,
                    NotificationSuppression.address_sha256,
                ).where(NotificationSuppression.tenant_id.in_(chunk))
            )
        )
    for row in rows:
        digest = row.address_sha256
        if digest is None:  # made before migration 0012: the address gives it
            address = keys.decrypt_text(
                row.address_ct, config.recipient_binding(row.tenant_id, row.id)
            )
            digest = suppression.address_hash(row.tenant_id, row.channel, address)
        if (row.tenant_id, row.channel, digest) in stopped:
            continue
        key = ("scorecard", row.scorecard_id) if row.scorecard_id else ("alert", row.alert_id)
        found.setdefault(key, []).append(Target(row.id, row.channel, digest))
    return found


def _history(session: Session, connections: dict[str, list]) -> dict[str, dict[str, dt.date]]:
    """tenant -> connection -> its first day of data (as ``warehouse.tenant_connection_facts``
    gives it): the first of the connection's range of the facts' key."""
    found: dict[str, dict[str, dt.date]] = {}
    sqlite = session.get_bind().dialect.name == "sqlite"
    raw = session.connection().connection.driver_connection if sqlite else None
    for tenant_id, found_connections in connections.items():
        found[tenant_id] = {}
        for connection in found_connections:
            if raw is not None:
                (day,) = raw.execute(
                    "SELECT min(day) FROM facts WHERE tenant_id = ? AND connection_id = ?",
                    (tenant_id, connection.id),
                ).fetchone()
                day = None if day is None else dt.date.fromisoformat(day)
            else:
                day = session.scalar(
                    select(func.min(Fact.day)).where(
                        Fact.tenant_id == tenant_id, Fact.connection_id == connection.id
                    )
                )
            if day is not None:
                found[tenant_id][connection.id] = day
    return found


FACT_SCHEMA = {
    "tenant_id": pl.String,
    "connection_id": pl.String,
    "metric": pl.String,
    "dimension": pl.String,
    "day": pl.Date,
    "value": pl.Float64,
}


def _fetch(
    session: Session, read: _Read, windows: dict[str, tuple[dt.date, dt.date]]
) -> Iterator[tuple[str, str, list[tuple] | Grid]]:
    """(tenant, connection, its facts as (metric, dimension, day, value)) for every
    connection with data of the batch's tenants, within each tenant's window: a range of
    the facts' key per connection; on SQLite straight from the driver (a day as its ISO
    text), which is most of what reading them costs, and as a ``Grid`` when it is one."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    raw = session.connection().connection.driver_connection if sqlite else None
    for tenant_id, (first, last) in windows.items():
        for connection in read.tenants[tenant_id].connections:
            if connection.id not in read.history[tenant_id]:
                continue  # no facts at all
            if raw is not None:
                rows = _sqlite_rows(
                    raw, (tenant_id, connection.id, first.isoformat(), last.isoformat())
                )
            else:
                rows = [
                    tuple(row)
                    for row in session.execute(
                        select(Fact.metric, Fact.dimension, Fact.day, Fact.value)
                        .where(
                            Fact.tenant_id == tenant_id,
                            Fact.connection_id == connection.id,
                            Fact.day >= first,
                            Fact.day <= last,
                        )
                        .order_by(Fact.day, Fact.metric, Fact.dimension)
                    )
                ]
            yield tenant_id, connection.id, rows


#: in the order of the facts' key (what ``_grid`` reads; no sort: the key's own order)
_FACTS_SQL = (
    "SELECT metric, dimension, day, value FROM facts WHERE tenant_id = ? "
    "AND connection_id = ? AND day >= ? AND day <= ? ORDER BY day, metric, dimension"
)
#: the days with facts, in order; how many keys there are; the keys of a day; the values
_DAYS_SQL = (
    "SELECT DISTINCT day FROM facts WHERE tenant_id = ? AND connection_id = ? "
    "AND day >= ? AND day <= ? ORDER BY day"
)
_KEY_COUNT_SQL = (
    "SELECT count(*) FROM (SELECT DISTINCT metric, dimension FROM facts WHERE tenant_id = ? "
    "AND connection_id = ? AND day >= ? AND day <= ?)"
)
_DAY_KEYS_SQL = (
    "SELECT metric, dimension FROM facts WHERE tenant_id = ? AND connection_id = ? "
    "AND day = ? ORDER BY metric, dimension"
)
_VALUES_SQL = (
    "SELECT value FROM facts WHERE tenant_id = ? AND connection_id = ? "
    "AND day >= ? AND day <= ? ORDER BY day, metric, dimension"
)


@dataclass(frozen=True)
class Grid:
    """A connection's facts when every day holds the same keys (as a refresh usually
    leaves them): fact ``i`` is ``keys[i % len(keys)]`` on ``days[i // len(keys)]``."""

    days: Sequence[str]
    keys: Sequence[tuple[str, str]]
    values: Sequence[float]

    def row(self, index: int) -> tuple[str, str, str, float]:
        """Fact ``index`` as (metric, dimension, day, value)."""
        metric, dimension = self.keys[index % len(self.keys)]
        return metric, dimension, self.days[index // len(self.keys)], self.values[index]


def _sqlite_rows(raw, args: tuple) -> Grid | list[tuple]:
    """A connection's facts in a window (``args``: tenant, connection, first and last day
    as ISO text) from the SQLite driver: as a ``Grid`` when every day holds the same keys,
    otherwise as rows of (metric, dimension, day, value) in the order of the facts' key.

    A grid reads only the values (and the days and one day's keys), not four columns of
    every fact: a third less CPU to read what a refresh leaves. It is one when no
    key but the first day's occurs in the window and there are as many facts as days
    times keys: a key is on a day once (the facts' key), so each day then holds exactly
    the first day's keys, which its values follow in the key's order. Read in the
    caller's transaction, the statements see one snapshot of the warehouse."""
    days = [day for (day,) in raw.execute(_DAYS_SQL, args).fetchall()]
    if not days:
        return []
    keys = raw.execute(_DAY_KEYS_SQL, (args[0], args[1], days[0])).fetchall()
    (distinct,) = raw.execute(_KEY_COUNT_SQL, args).fetchone()
    if distinct == len(keys):
        values = [value for (value,) in raw.execute(_VALUES_SQL, args).fetchall()]
        if len(values) == len(days) * len(keys):
            return Grid(days, keys, values)
    return raw.execute(_FACTS_SQL, args).fetchall()


# -- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """A metric of one tenant with one connection and one dimension: merged in numpy."""

    tenant_id: str
    ref: str
    connection_id: str
    dimension: str
    kind: str
    min_spread: float


@dataclass
class Merged:
    """The merged series of a batch: ``values[series, day]`` from ``start`` (NaN where
    ``valid`` is False: no data)."""

    start: dt.date
    values: object  # numpy array (series, days)
    valid: object  # numpy array of bool, the same shape

    def days_of(self, index: int, first: dt.date, last: dt.date) -> list[float | None]:
        """Series ``index`` from ``first`` to ``last``, None on days without data."""
        return self.rows_of([index], first, last)[0]

    def rows_of(
        self, indices: list[int], first: dt.date, last: dt.date
    ) -> list[list[float | None]]:
        """``days_of`` of several series at once."""
        import numpy as np

        begin = (first - self.start).days
        end = begin + (last - first).days + 1
        values = self.values[indices, begin:end]
        return np.where(self.valid[indices, begin:end], values, None).tolist()


def gather(
    fetched: Iterable[tuple[str, str, Sequence[tuple] | Grid]],
    tenants: dict[str, evaluate._Tenant],
    history: dict[str, dict[str, dt.date]],
    windows: dict[str, tuple[dt.date, dt.date]],
) -> tuple[list[Series], Merged, pl.DataFrame]:
    """The batch's facts (``fetched``: tenant, connection, its rows as (metric, dimension,
    day, value) or its ``Grid``) as (simple series, their values merged, the facts of
    every other series).

    A series is simple, and merged here for all tenants at once, when its metric has one
    dimension in the connection's rows and its source one connection with data at the
    tenant (most series); its values are merged exactly as ``figures.Figures.daily``
    merges them (a property test holds the two equal). The rows of the other series are
    returned as facts (``FACT_SCHEMA``), for ``Figures`` to merge as usual."""
    import numpy as np

    start = min((first for first, _ in windows.values()), default=dt.date(2000, 1, 1))
    span = (max((last for _, last in windows.values()), default=start) - start).days + 1
    day_at: dict = {}
    for offset in range(span):
        day = start + offset * DAY
        day_at[day] = day_at[day.isoformat()] = offset
    series: list[Series] = []
    rows_of, at_of, value_of = [], [], []
    rest: list[tuple] = []
    sources: dict[str, dict[str, int]] = {}
    for tenant_id, connection_id, rows in fetched:
        if not rows:
            continue
        tenant = tenants[tenant_id]
        counted = sources.get(tenant_id)
        if counted is None:
            counted = sources[tenant_id] = {}
            for c in tenant.connections:
                if c.id in history[tenant_id]:
                    counted[c.source] = counted.get(c.source, 0) + 1
        source = next((c.source for c in tenant.connections if c.id == connection_id), None)
        keys: dict[tuple[str, str], int] = {}
        if not isinstance(rows, Grid):
            metric, dimension, day, value = zip(*rows, strict=True)
            grid = _grid(metric, dimension, day)
            if grid is not None:
                days, width = grid
                keys_of_day = list(zip(metric[:width], dimension[:width], strict=True))
                rows = Grid(days, keys_of_day, value)
        if isinstance(rows, Grid):
            # every day the same keys: key k of day j is row j * width + k
            days, width, value = rows.days, len(rows.keys), rows.values
            keys = {key: k for k, key in enumerate(rows.keys)}
            local = np.tile(np.arange(width, dtype=np.int64), len(days))
            at = np.repeat(np.array([day_at[d] for d in days], dtype=np.int64), width)
            row_at = rows.row
        else:
            local = np.asarray(
                [keys.setdefault(key, len(keys)) for key in zip(metric, dimension, strict=True)],
                dtype=np.int64,
            )
            at = np.fromiter((day_at[d] for d in day), np.int64, len(day))
            row_at = rows.__getitem__
        dimensions: dict[str, int] = {}
        for name, _ in keys:
            dimensions[name] = dimensions.get(name, 0) + 1
        single = source is not None and counted.get(source) == 1
        metas = tenant.metas.get(source, {}) if source is not None else {}
        target = []
        for name, one in keys:
            if not single or dimensions[name] != 1:
                target.append(-1)
                continue
            meta = metas.get(name)
            target.append(len(series))
            series.append(
                Series(
                    tenant_id,
                    f"{source}.{name}",
                    connection_id,
                    one,
                    meta.kind if meta is not None else "counter",
                    evaluate._min_spread(meta.unit if meta is not None else "count"),
                )
            )
        index = np.asarray(target, dtype=np.int64)[local]
        values = np.fromiter(value, np.float64, len(value))
        if min(target) >= 0:
            rows_of.append(index)
            at_of.append(at)
            value_of.append(values)
            continue
        simple = index >= 0
        rows_of.append(index[simple])
        at_of.append(at[simple])
        value_of.append(values[simple])
        rest += [(tenant_id, connection_id, *row_at(i)) for i in np.flatnonzero(~simple).tolist()]
    merged = _merge(
        series,
        np.concatenate(rows_of) if rows_of else np.zeros(0, np.int64),
        np.concatenate(at_of) if at_of else np.zeros(0, np.int64),
        np.concatenate(value_of) if value_of else np.zeros(0),
        start,
        span,
        history,
    )
    return series, merged, _rest(rest)


def _grid(metric: tuple, dimension: tuple, day: tuple) -> tuple[tuple, int] | None:
    """(the days, the keys a day) when a connection's rows (in the order of the facts' key:
    day, metric, dimension) hold the same metrics and dimensions every day, as a refresh
    usually leaves them; None otherwise. Whole columns compared at once: a block of rows
    that are all one day and hold the first day's keys, in order, is that day's keys."""
    width = day.count(day[0])  # the first day's rows, sorted, each key once
    if len(day) % width:
        return None
    days = day[::width]
    if (
        metric != metric[:width] * len(days)
        or dimension != dimension[:width] * len(days)
        or day != tuple(chain.from_iterable(repeat(d, width) for d in days))
    ):
        return None
    return days, width


def _rest(rows: list[tuple]) -> pl.DataFrame:
    """Facts (``FACT_SCHEMA``) from rows of (tenant, connection, metric, dimension, day,
    value), a day a date or its ISO text."""
    if rows and isinstance(rows[0][4], str):
        schema = {**FACT_SCHEMA, "day": pl.String}
        frame = pl.DataFrame(rows, schema=schema, orient="row")
        return frame.with_columns(pl.col("day").str.to_date("%Y-%m-%d"))
    return pl.DataFrame(rows, schema=FACT_SCHEMA, orient="row")


def _merge(series: Sequence[Series], rows, at, found, start: dt.date, span: int, history) -> Merged:
    """Each series' value on every day from ``start`` (``span`` days), from its facts
    (``found[i]`` is series ``rows[i]`` on day ``start + at[i]``), as
    ``figures.Figures.daily`` merges a metric of one connection and one dimension: a
    counter is 0 on a day without a row from the connection's first day of data on, a
    ratio is no data then, and a gauge keeps its last level (from the first day read);
    none before the first day of data."""
    import numpy as np

    if not series:
        empty = np.zeros((0, 0))
        return Merged(dt.date(2000, 1, 1), empty, empty.astype(bool))
    values = np.full((len(series), span), np.nan)
    present = np.zeros((len(series), span), dtype=bool)
    values[rows, at] = found
    present[rows, at] = True
    column = np.arange(span)
    # from its connection's first day of data on (a gauge is carried from the first day read)
    begun = (
        column[None, :]
        >= np.array([(history[s.tenant_id][s.connection_id] - start).days for s in series])[:, None]
    )
    kinds = np.array([s.kind for s in series])
    gauge, ratio = (kinds == "gauge")[:, None], (kinds == "ratio")[:, None]
    # a gauge: the last level reported on or before each day
    last_seen = np.maximum.accumulate(np.where(present, column[None, :], -1), axis=1)
    carried = np.take_along_axis(values, np.maximum(last_seen, 0), axis=1)
    merged = np.where(gauge, carried, np.where(present, values, 0.0))
    valid = np.where(gauge, last_seen >= 0, begun & (present | ~ratio))
    # merged as a sum of the one connection's value: -0.0 reads 0.0, as sum() gives it
    return Merged(start, np.where(valid, merged + 0.0, np.nan), valid)


def prefilled_figures(
    tenant: evaluate._Tenant,
    facts: pl.DataFrame,
    history: dict[str, dt.date],
    window: tuple[dt.date, dt.date],
    daily: dict[str, tuple[str, list[float | None]]],
) -> figures.Resolver:
    """The tenant's ``Resolver`` as ``evaluate._Tenant._resolver`` builds it, with the
    series merged in numpy handed in (``daily``) and the rest from ``facts``."""
    sources = {c.id: c.source for c in tenant.connections}
    found = _Figures.listed(facts, sources, tenant.metas, history, window[0], window[1], daily)
    resolver = _Resolver(found, figures.calculated_defs(tenant.template), tenant.polarity)
    resolver._defined = {}
    return resolver


class _Figures(figures.Figures):
    """``figures.Figures`` with the series merged in numpy kept as lists (one value a day
    from ``first_day``): a period's value is a slice of the list, combined as ``Figures``
    combines a window; the dict of days ``daily`` returns is built only when asked."""

    @classmethod
    def listed(cls, facts, sources, metas, history, first_day, last_day, daily) -> _Figures:
        found = cls(facts, sources, metas, history, first_day, last_day)
        found._lists = {}
        found._covers = {}
        for ref, (dimension, values) in daily.items():
            found._raw[ref] = {dimension: {}}
            found._lists[ref] = (dimension, values)
        return found

    def daily(self, ref: str, dimension: str | None, kind: str) -> figures.Values:
        found = self._daily.get((ref, dimension))
        if found is not None:
            return found
        listed = self._lists.get(ref)
        if listed is None or dimension not in (None, listed[0]):
            return super().daily(ref, dimension, kind)
        found = dict(zip(self._days(), listed[1], strict=True))
        self._daily[(ref, None)] = self._daily[(ref, listed[0])] = found
        return found

    def aggregate(
        self, ref: str, dimension: str | None, kind: str, start: dt.date, end: dt.date
    ) -> float | None:
        listed = self._lists.get(ref)
        if listed is None or dimension not in (None, listed[0]):
            return super().aggregate(ref, dimension, kind, start, end)
        values = listed[1]
        begin = (start - self.first_day).days
        stop = (end - self.first_day).days + 1
        if 0 <= begin and stop <= len(values):
            return figures.combine(kind, values[begin:stop])
        # days outside the loaded ones have no data, as ``Figures.window`` reads them
        inside = range(len(values))
        return figures.combine(
            kind, [values[i] if i in inside else None for i in range(begin, stop)]
        )

    def coverage(self, ref: str) -> dt.date | None:
        if ref not in self._covers:
            self._covers[ref] = super().coverage(ref)
        return self._covers[ref]


class _Resolver(figures.Resolver):
    """``figures.Resolver`` that defines each ref once (a tenant's figures, alerts and
    anomalies ask for the same few refs' definitions hundreds of times)."""

    def define(self, ref: str) -> figures.MetricDef | None:
        defined = self._defined
        if ref in defined:
            return defined[ref]
        found = defined[ref] = super().define(ref)
        return found

    def series(self, ref: str, dimension: str | None, days: list[dt.date]) -> list[float | None]:
        listed = self.figures._lists.get(ref)
        definition = self.define(ref)
        if (
            listed is None
            or dimension not in (None, listed[0])
            or definition is None
            or definition.formula is not None
        ):
            return super().series(ref, dimension, days)
        values, first = listed[1], self.figures.first_day
        inside = range(len(values))
        return [values[at] if (at := (day - first).days) in inside else None for day in days]


# -- the batch -----------------------------------------------------------------------------------


def evaluate_batch(
    runtime: Runtime,
    *,
    tenant_ids: Iterable[str],
    scorecards: Sequence[tuple[str, dt.datetime]],
    now: dt.datetime,
    report,
    fallback,
) -> None:
    """Judge ``tenant_ids`` and queue the due ``scorecards`` (see the module's docstring);
    what cannot be done here goes to ``fallback(tenant_ids, scorecards)``, the per-tenant
    path."""
    judged = sorted(set(tenant_ids))
    today = now.date()
    days = runtime.settings.lookback_days + 1
    first_judged, last_judged = today - days * DAY, today - DAY
    try:
        with _no_cycle_collection(), runtime.db.session() as session:
            owners = {}
            for chunk in _chunks([card for card, _ in scorecards]):
                owners.update(
                    (card, tenant)
                    for card, tenant in session.execute(
                        select(Scorecard.id, Scorecard.tenant_id).where(Scorecard.id.in_(chunk))
                    )
                )
            everyone = sorted(set(judged) | set(owners.values()))
            read = _read(session, runtime, everyone, list(owners))
            outcome, failed_tenants, failed_cards = _compute(
                session, read, judged, scorecards, owners, today, first_judged, last_judged
            )
        # the batch's writes, in one transaction
        with _no_cycle_collection():
            counts = _write(runtime, read, outcome, first_judged, last_judged)
    except Exception as exc:
        _log.warning(
            "notifications: the batch of %d tenants is judged one at a time (%s)",
            len(judged),
            type(exc).__name__,
        )
        # read or written as a whole, it failed (and nothing was written): one tenant at a
        # time, so that the one in trouble is named and the others go on
        fallback(judged, scorecards)
        return
    for name, count in counts.items():
        setattr(report, name, getattr(report, name) + count)
    report.held += outcome.held
    if failed_tenants or failed_cards:
        fallback(sorted(failed_tenants), [d for d in scorecards if d[0] in failed_cards])


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Python's cycle collector paused: a batch makes a few million objects that all live
    until it ends and form no cycles, and each full collection would walk all of them
    (and every object the process imported) again, a tenth of the batch's time. Resumed
    as it was; what the batch leaves is collected later as usual."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def _windows(
    read: _Read,
    judged: Sequence[str],
    due: Sequence[tuple[str, dt.datetime]],
    today: dt.date,
    days: int,
) -> dict[str, tuple[dt.date, dt.date]]:
    """The days each tenant's figures read: those its anomalies, alerts and scorecards
    need (``evaluate.shared_loads`` reads the same for one tenant)."""
    found: dict[str, tuple[dt.date, dt.date]] = {}
    last_judged = today - DAY
    for tenant_id in judged:
        # the judged days and the eight weeks before them (no margin: what alerts and
        # scorecards need besides is added below)
        first = evaluate._history_start(today, days)
        widest = max((r.window_days or 1 for r in read.rules[tenant_id]), default=1)
        first = min(first, evaluate._history_start(today, 1, widest) - 7 * widest * DAY)
        found[tenant_id] = (first, last_judged)
    for card_id, scheduled_for in due:
        card = read.cards.get(card_id)
        if card is None:
            continue
        tenant = read.tenants[card.tenant_id]
        first, last = evaluate.scorecard_days(card, tenant, scheduled_for)
        if card.tenant_id in found:
            first, last = min(first, found[card.tenant_id][0]), max(last, found[card.tenant_id][1])
        found[card.tenant_id] = (first, last)
    return found


def _compute(
    session: Session,
    read: _Read,
    judged: Sequence[str],
    scorecards: Sequence[tuple[str, dt.datetime]],
    owners: dict[str, str],
    today: dt.date,
    first_judged: dt.date,
    last_judged: dt.date,
) -> tuple[Outcome, set[str], set[str]]:
    outcome = Outcome()
    failed_tenants: set[str] = set()
    failed_cards: set[str] = {card for card, _ in scorecards if card not in owners}
    due = []
    for card_id, scheduled_for in scorecards:
        card = read.cards.get(card_id)
        if card is None:
            continue
        if card.next_due_at > scheduled_for:
            continue  # an earlier run sent this one and moved the scorecard on
        if not _data_complete(read, card, scheduled_for):
            outcome.held += 1
            continue
        due.append((card_id, scheduled_for))
    windows = _windows(read, judged, due, today, (today - first_judged).days)
    series, merged, rest = gather(
        _fetch(session, read, windows), read.tenants, read.history, windows
    )
    # each series' values, by tenant: ref -> (dimension, values)
    prefilled: dict[str, dict[str, tuple[str, list]]] = {}
    by_ref: dict[tuple[str, str], int] = {}
    of_tenant: dict[str, list[int]] = {}
    for index, found in enumerate(series):
        of_tenant.setdefault(found.tenant_id, []).append(index)
        by_ref[(found.tenant_id, found.ref)] = index
    for tenant_id, indices in of_tenant.items():
        first, last = windows[tenant_id]
        lists = merged.rows_of(indices, first, last)
        prefilled[tenant_id] = {
            series[index].ref: (series[index].dimension, values)
            for index, values in zip(indices, lists, strict=True)
        }
    flagged: dict[int, list[dt.date]] = {}
    if series:
        import numpy as np

        rows, days = anomaly.screen_array(
            merged.values,
            merged.start,
            np.array([s.min_spread for s in series]),
            first_judged,
            last_judged,
        )
        for index, day in zip(rows, days, strict=True):
            flagged.setdefault(index, []).append(day)
    screened = _Screened(series, by_ref, flagged, first_judged, last_judged)
    # the facts of every other series, merged by ``Figures`` itself
    rest_by_tenant = (
        rest.partition_by("tenant_id", as_dict=True, include_key=False) if rest.height else {}
    )
    empty = rest.drop("tenant_id").clear()
    cards_by_tenant: dict[str, list[tuple[str, dt.datetime]]] = {}
    for card_id, scheduled_for in due:
        cards_by_tenant.setdefault(read.cards[card_id].tenant_id, []).append(
            (card_id, scheduled_for)
        )
    for tenant_id in sorted(set(judged) | set(cards_by_tenant)):
        tenant = read.tenants[tenant_id]
        try:
            resolver = prefilled_figures(
                tenant,
                rest_by_tenant.get((tenant_id,), empty),
                read.history[tenant_id],
                windows[tenant_id],
                prefilled.get(tenant_id, {}),
            )
            if tenant_id in judged:
                outcome.anomalies[tenant_id] = _anomalies(
                    tenant,
                    resolver,
                    read.rules[tenant_id],
                    by_ref,
                    flagged,
                    first_judged,
                    last_judged,
                    today,
                )
                _alerts(read, tenant, resolver, today, outcome, screened)
        except Exception:  # the per-tenant path names it
            failed_tenants.add(tenant_id)
            failed_cards.update(card for card, _ in cards_by_tenant.get(tenant_id, []))
            outcome.anomalies.pop(tenant_id, None)
            continue
        for card_id, scheduled_for in cards_by_tenant.get(tenant_id, []):
            try:
                outcome.cards[card_id] = (
                    scheduled_for,
                    evaluate.build_scorecard(
                        read.cards[card_id],
                        tenant,
                        resolver,
                        scheduled_for=scheduled_for,
                        base_url_link=read.links.get(tenant_id),
                        today=None,
                        tenant_name=read.name(tenant_id),
                        brand=read.brands.get(tenant_id, BrandInfo()),
                    ),
                )
            except Exception:
                failed_cards.add(card_id)
    # rules of failed tenants are judged again by the fallback
    for tenant_id in failed_tenants:
        for rule in read.rules.get(tenant_id, []):
            outcome.verdicts.pop(rule.id, None)
    return outcome, failed_tenants, failed_cards


def _data_complete(read: _Read, card: Scorecard, scheduled_for: dt.datetime) -> bool:
    """``runner._data_complete`` from what was read."""
    from .runner import HOLD_MAX

    if dt.datetime.now(dt.UTC) - scheduled_for >= HOLD_MAX:
        return True
    tenant = read.tenants[card.tenant_id]
    timezone = _timezone(tenant.timezone)
    _, end = schedule.period_window(card.period, schedule.local_today(timezone, scheduled_for))
    ended = dt.datetime.combine(end + DAY, dt.time(), dt.UTC)
    return all(at is not None and at >= ended for at in read.refreshed[card.tenant_id])


def _timezone(name: str) -> str:
    try:
        return schedule.check_timezone(name)
    except Exception:
        return "UTC"


def _anomalies(
    tenant: evaluate._Tenant,
    resolver: figures.Resolver,
    rules: list[AlertRule],
    by_ref: dict[tuple[str, str], int],
    flagged: dict[int, list[dt.date]],
    first_judged: dt.date,
    last_judged: dt.date,
    today: dt.date,
) -> list[evaluate.Anomaly]:
    """``evaluate.detect_anomalies`` of one tenant: a merged series' days come from the
    batch's screen; any other series is screened here, day by day."""
    found: list[evaluate.Anomaly] = []
    history_start = evaluate._history_start(today, (today - first_judged).days)
    # a merged series the batch's screen passed no day of has nothing to judge
    quiet = set()
    for ref in resolver.figures.refs():
        index = by_ref.get((tenant.id, ref))
        if index is not None and not flagged.get(index):
            quiet.update((ref, d) for d in ("", *resolver.figures.dimensions(ref)))
    keys = evaluate._judged(resolver, ((r.metric, r.dimension or "") for r in rules), quiet)
    for ref, dimension in keys:
        definition = resolver.define(ref)
        through = tenant.complete_through(resolver, ref)
        if through is None:
            continue
        spread = evaluate._min_spread(definition.unit)
        index = by_ref.get((tenant.id, ref))
        one = resolver.figures.dimensions(ref) if index is not None else []
        if index is not None and dimension in ("", *one):
            days = flagged.get(index, [])
            # the dict of days only for a series with days to judge (most have none)
            values = resolver.figures.daily(ref, None, definition.kind) if days else {}
        else:
            needed = [d for d in resolver.figures.days() if d >= history_start]
            values = dict(zip(needed, resolver.series(ref, dimension or None, needed), strict=True))
            days = []
            day = first_judged
            while day <= last_judged:
                if anomaly.may_be_anomalous(values, day, min_spread=spread):
                    days.append(day)
                day += DAY
        for day in days:
            if day > min(last_judged, through):
                continue
            verdict = anomaly.detect(values, day, min_spread=spread)
            if verdict is not None and verdict.anomalous:
                found.append(
                    evaluate.Anomaly(
                        tenant.id,
                        ref,
                        dimension,
                        day,
                        verdict.value,
                        verdict.expected,
                        verdict.low,
                        verdict.high,
                        verdict.score,
                    )
                )
    return found


def _alerts(
    read: _Read,
    tenant: evaluate._Tenant,
    resolver: figures.Resolver,
    today: dt.date,
    outcome: Outcome,
    screened: _Screened | None = None,
) -> None:
    """Each unpaused rule's verdict on the last whole day (``evaluate.evaluate_alerts``);
    its message when it holds (sent only if it starts an episode, decided under the lock).
    An anomaly rule whose day the batch's screen found usual is not judged in full
    (``screened``); the sentence is written only for a rule that holds."""
    day = today - DAY
    for rule in read.rules[tenant.id]:
        if rule.paused_at is not None:
            continue
        usual = screened is not None and screened.usual(tenant.id, rule, day)
        verdict = evaluate._judge(tenant, resolver, rule, day, say=False, usual=usual)
        if verdict is None:
            continue  # no data: the episode stays as it is
        holds, value, _ = verdict
        content = None
        if holds and rule.state != "firing":
            _, _, sentence = evaluate._judge(tenant, resolver, rule, day)
            content = evaluate.build_alert(
                tenant,
                resolver,
                rule,
                day,
                value,
                sentence,
                tenant_name=read.name(tenant.id),
                brand=read.brands.get(tenant.id, BrandInfo()),
            )
        outcome.verdicts[rule.id] = (holds, value, content)


@dataclass
class _Screened:
    """What the batch's screen (``anomaly.screen_array``, at the default threshold) found of
    the merged series: the days each may be unusual on, of the days judged."""

    series: Sequence[Series]
    by_ref: dict[tuple[str, str], int]
    flagged: dict[int, list[dt.date]]
    first: dt.date
    last: dt.date

    def usual(self, tenant_id: str, rule: AlertRule, day: dt.date) -> bool:
        """Whether an anomaly rule's day is proven usual: a daily rule at the default
        threshold on a merged series, a day the screen judged and did not pass on."""
        if (
            rule.condition != "anomaly"
            or (rule.window_days or 1) != 1
            or (rule.threshold or anomaly.DEFAULT_THRESHOLD) != anomaly.DEFAULT_THRESHOLD
            or not self.first <= day <= self.last
        ):
            return False
        index = self.by_ref.get((tenant_id, rule.metric))
        if index is None or (rule.dimension or "") not in ("", self.series[index].dimension):
            return False
        return day not in self.flagged.get(index, ())


# -- writing ----------------------------------------------------------------------------------


def _update_many(session: Session, model, rows: list[dict]) -> None:
    """UPDATE by id, one statement executed for many rows (the same columns each)."""
    table = model.__table__
    columns = [name for name in rows[0] if name != "id"]
    statement = (
        update(table)
        .where(table.c.id == bindparam("_id"))
        .values({name: bindparam(f"_{name}") for name in columns})
    )
    session.execute(statement, [{f"_{k}": v for k, v in row.items()} for row in rows])


def _write(
    runtime: Runtime, read: _Read, outcome: Outcome, first_judged: dt.date, last_judged: dt.date
) -> dict[str, int]:
    """Everything the batch computed, in one transaction; what it did, counted as the
    run's report counts it."""
    counts = dict.fromkeys(("tenants", "anomalies", "alerts_fired", "scorecards", "queued"), 0)
    now = utcnow()
    day = last_judged
    with runtime.db.locked_session() as session:
        tenants = sorted(outcome.anomalies)
        for chunk in _chunks(tenants):
            session.execute(
                delete(MetricAnomaly).where(
                    MetricAnomaly.tenant_id.in_(chunk),
                    MetricAnomaly.day >= first_judged,
                    MetricAnomaly.day <= last_judged,
                )
            )
        rows = [
            {
                "tenant_id": a.tenant_id,
                "metric": a.metric,
                "dimension": a.dimension,
                "day": a.day,
                "value": a.value,
                "expected": a.expected,
                "low": a.low,
                "high": a.high,
                "detected_at": now,
            }
            for tenant_id in tenants
            for a in outcome.anomalies[tenant_id]
        ]
        if rows:
            session.execute(insert(MetricAnomaly), rows)
        counts["anomalies"] = len(rows)
        # the rules' episodes, read again under the lock
        queued: list[delivery.Queued] = []
        changes = []
        states = {}
        for chunk in _chunks(outcome.verdicts):
            states.update(
                (rule, state)
                for rule, state in session.execute(
                    select(AlertRule.id, AlertRule.state).where(AlertRule.id.in_(chunk))
                )
            )
        sent_at = dt.datetime.now(dt.UTC)
        for rule_id, (holds, value, content) in outcome.verdicts.items():
            if rule_id not in states:
                continue  # removed meanwhile
            change = {"id": rule_id, "last_day": day, "last_value": value}
            if not holds:
                change.update(state="ok", firing_since=None)
            elif states[rule_id] != "firing" and content is not None:
                change.update(state="firing", firing_since=day)
                alert = dataclasses.replace(
                    content, dashboard_url=read.links.get(content.tenant_id)
                )
                counts["alerts_fired"] += 1
                queued.append(
                    delivery.Queued(
                        alert.tenant_id,
                        "alert",
                        rule_id,
                        day.isoformat(),  # one episode: the rule and the day it started
                        sent_at,
                        alert,
                        read.recipients.get(("alert", rule_id), []),
                    )
                )
            changes.append(change)
        if changes:
            for shape in {tuple(sorted(c)) for c in changes}:
                _update_many(session, AlertRule, [c for c in changes if tuple(sorted(c)) == shape])
        # the scorecards: those an earlier run has not moved on meanwhile
        moved: dict[str, dt.datetime] = {}
        for chunk in _chunks(outcome.cards):
            moved.update(
                (card, due)
                for card, due in session.execute(
                    select(Scorecard.id, Scorecard.next_due_at).where(Scorecard.id.in_(chunk))
                )
            )
        advances = []
        for card_id, (scheduled_for, content) in outcome.cards.items():
            if card_id not in moved or moved[card_id] > scheduled_for:
                continue
            card = read.cards[card_id]
            queued.append(
                delivery.Queued(
                    card.tenant_id,
                    "scorecard",
                    card_id,
                    scheduled_for.isoformat(),
                    scheduled_for,
                    content,
                    read.recipients.get(("scorecard", card_id), []),
                )
            )
            # the next send after now: a scorecard missed for weeks is sent once, late
            advances.append(
                {
                    "id": card_id,
                    "next_due_at": config.next_due_of(
                        card,
                        _timezone(read.tenants[card.tenant_id].timezone),
                        max(scheduled_for, dt.datetime.now(dt.UTC)),
                    ),
                }
            )
            counts["scorecards"] += 1
        if advances:
            _update_many(session, Scorecard, advances)
        counts["queued"] = delivery.enqueue_many(session, runtime.keys, queued, runtime.settings)
    counts["tenants"] = len(outcome.anomalies)
    return counts


__all__ = [
    "Merged",
    "Series",
    "Target",
    "evaluate_batch",
    "gather",
    "prefilled_figures",
]
