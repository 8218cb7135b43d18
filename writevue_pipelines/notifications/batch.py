"""One notifications run's evaluation, for all its tenants at once.

The per-tenant path (``evaluate``) reads a tenant's settings, facts, rules, scorecards
and recipients and writes its rule states, unusual days and outbox in about eighteen
statements, and builds its figures in Python, day by day: some 20 ms a tenant, a third
of what refreshing the tenant costs. This module does the same work for a run's tenants
together:

1. **Read** (no write lock): the tenants' settings, connections, goals, names, brands,
   message links, alert rules, due scorecards and active recipients, a few statements
   for the whole batch; then their facts, one statement per connection, into one polars
   frame.
2. **Figures**: every series of a metric with one connection and one dimension (most of
   them) is merged for all tenants at once in numpy, exactly as ``figures.Figures``
   merges it (a test holds the two equal); the rest are merged by ``Figures`` itself.
   Each tenant's figures are then the dashboard's ``Resolver`` over those values, so a
   scorecard's figures and an alert's sentence are computed by the same code as before.
3. **Unusual days**: ``anomaly.screen`` passes on, for every series of the batch at once,
   the days that may be unusual; ``anomaly.detect`` judges only those (a property test
   proves the screen never hides a day ``detect`` would flag).
4. **Write** (one transaction, SQLite's write lock held only for it): the unusual days,
   the alert rules' episodes (their states read again under the lock, so two runs never
   fire one episode twice), the outbox (``delivery.enqueue_many``: contents, rendered
   when sent) and the scorecards' next sends, in bulk statements.

A tenant or scorecard whose evaluation fails here, or a batch whose writes fail, is
handed to the per-tenant path, which names what fails (by id and exception kind) and
carries on with the others, as before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
            for row in session.scalars(
                select(TenantSettings).where(TenantSettings.tenant_id.in_(chunk))
            )
        )
        for row in session.scalars(
            select(Connection)
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
        for rule in session.scalars(
            select(AlertRule)
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
            for row in session.scalars(select(Scorecard).where(Scorecard.id.in_(chunk)))
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
            rows += session.scalars(
                select(NotificationRecipient).where(
                    column.in_(chunk), NotificationRecipient.unsubscribed_at.is_(None)
                )
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
    rows.sort(key=lambda row: (row.created_at, row.id))
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


def _facts(
    session: Session, read: _Read, windows: dict[str, tuple[dt.date, dt.date]]
) -> pl.DataFrame:
    """Every fact of the batch's tenants' connections within each tenant's window, one
    statement per connection (a range of the facts' key); on SQLite straight from the
    driver, which is most of what reading them costs."""
    columns: dict[str, list] = {name: [] for name in FACT_SCHEMA}
    sqlite = session.get_bind().dialect.name == "sqlite"
    raw = session.connection().connection.driver_connection if sqlite else None
    for tenant_id, (first, last) in windows.items():
        for connection in read.tenants[tenant_id].connections:
            if connection.id not in read.history[tenant_id]:
                continue  # no facts at all
            if raw is not None:
                rows = raw.execute(
                    "SELECT metric, dimension, day, value FROM facts WHERE tenant_id = ? "
                    "AND connection_id = ? AND day >= ? AND day <= ?",
                    (tenant_id, connection.id, first.isoformat(), last.isoformat()),
                ).fetchall()
            else:
                rows = session.execute(
                    select(Fact.metric, Fact.dimension, Fact.day, Fact.value).where(
                        Fact.tenant_id == tenant_id,
                        Fact.connection_id == connection.id,
                        Fact.day >= first,
                        Fact.day <= last,
                    )
                ).all()
            if not rows:
                continue
            metric, dimension, day, value = zip(*rows, strict=True)
            columns["tenant_id"] += [tenant_id] * len(rows)
            columns["connection_id"] += [connection.id] * len(rows)
            columns["metric"] += metric
            columns["dimension"] += dimension
            columns["day"] += day
            columns["value"] += value
    schema = dict(FACT_SCHEMA)
    if raw is not None:
        schema["day"] = pl.String
    frame = pl.DataFrame(columns, schema=schema)
    if raw is not None:
        frame = frame.with_columns(pl.col("day").str.to_date("%Y-%m-%d"))
    return frame


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


def simple_series(
    facts: pl.DataFrame,
    tenants: dict[str, evaluate._Tenant],
    history: dict[str, dict[str, dt.date]],
) -> list[Series]:
    """The series ``merge`` computes: a metric whose source has one connection with data at
    the tenant, and one dimension in the days read."""
    if facts.height == 0:
        return []
    keys = (
        facts.group_by("tenant_id", "connection_id", "metric")
        .agg(pl.col("dimension").n_unique().alias("dims"), pl.col("dimension").first())
        .filter(pl.col("dims") == 1)
    )
    found = []
    for tenant_id, cid, metric, _, dimension in keys.iter_rows():
        tenant = tenants[tenant_id]
        source = next((c.source for c in tenant.connections if c.id == cid), None)
        with_data = [
            c for c in tenant.connections if c.source == source and c.id in history[tenant_id]
        ]
        if source is None or len(with_data) != 1:
            continue
        meta = tenant.metas.get(source, {}).get(metric)
        kind = meta.kind if meta is not None else "counter"
        unit = meta.unit if meta is not None else "count"
        found.append(
            Series(
                tenant_id,
                f"{source}.{metric}",
                cid,
                dimension,
                kind,
                evaluate._min_spread(unit),
            )
        )
    return found


@dataclass
class Merged:
    """The merged series of a batch: ``values[series, day]`` from ``start`` (NaN where
    ``valid`` is False: no data)."""

    start: dt.date
    values: object  # numpy array (series, days)
    valid: object  # numpy array of bool, the same shape

    def days_of(self, index: int, first: dt.date, last: dt.date) -> list[float | None]:
        """Series ``index`` from ``first`` to ``last``, None on days without data."""
        begin = (first - self.start).days
        end = begin + (last - first).days + 1
        values = self.values[index, begin:end].tolist()
        valid = self.valid[index, begin:end].tolist()
        return [v if ok else None for v, ok in zip(values, valid, strict=True)]


def merge(
    facts: pl.DataFrame,
    series: Sequence[Series],
    windows: dict[str, tuple[dt.date, dt.date]],
    history: dict[str, dict[str, dt.date]],
) -> Merged:
    """Each series' value on every day of its tenant's window, as ``figures.Figures.daily``
    merges a metric of one connection and one dimension: a counter is 0 on a day without
    a row from the connection's first day of data on, a ratio is no data then, and a gauge
    keeps its last level (from the first day read); none before the first day of data."""
    import numpy as np

    if not series:
        empty = np.zeros((0, 0))
        return Merged(dt.date(2000, 1, 1), empty, empty.astype(bool))
    start = min(windows[s.tenant_id][0] for s in series)
    end = max(windows[s.tenant_id][1] for s in series)
    span = (end - start).days + 1
    keys = pl.DataFrame(
        {
            "tenant_id": [s.tenant_id for s in series],
            "connection_id": [s.connection_id for s in series],
            "metric": [s.ref.split(".", 1)[1] for s in series],
            "_row": range(len(series)),
        },
        schema_overrides={"_row": pl.Int64},
    )
    found = facts.join(keys, on=["tenant_id", "connection_id", "metric"]).select(
        "_row", (pl.col("day") - pl.lit(start)).dt.total_days().alias("_at"), "value"
    )
    rows, at = found["_row"].to_numpy(), found["_at"].to_numpy()
    values = np.full((len(series), span), np.nan)
    present = np.zeros((len(series), span), dtype=bool)
    values[rows, at] = found["value"].to_numpy()
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
    found = figures.Figures.prefilled(
        facts, sources, tenant.metas, history, window[0], window[1], daily
    )
    return figures.Resolver(found, figures.calculated_defs(tenant.template), tenant.polarity)


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
        with runtime.db.session() as session:
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
    facts = _facts(session, read, windows)
    series = simple_series(facts, read.tenants, read.history)
    merged = merge(facts, series, windows, read.history)
    # each series' values, by tenant: ref -> (dimension, values)
    prefilled: dict[str, dict[str, tuple[str, list]]] = {}
    by_ref: dict[tuple[str, str], int] = {}
    for index, found in enumerate(series):
        first, last = windows[found.tenant_id]
        prefilled.setdefault(found.tenant_id, {})[found.ref] = (
            found.dimension,
            merged.days_of(index, first, last),
        )
        by_ref[(found.tenant_id, found.ref)] = index
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
    # the facts of every other series, merged by ``Figures`` itself
    merged_keys = pl.DataFrame(
        {
            "tenant_id": [s.tenant_id for s in series],
            "connection_id": [s.connection_id for s in series],
            "metric": [s.ref.split(".", 1)[1] for s in series],
        },
        schema={"tenant_id": pl.String, "connection_id": pl.String, "metric": pl.String},
    )
    rest = facts.join(merged_keys, on=["tenant_id", "connection_id", "metric"], how="anti")
    rest_by_tenant = (
        rest.partition_by("tenant_id", as_dict=True, include_key=False) if rest.height else {}
    )
    empty = facts.drop("tenant_id").clear()
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
                _alerts(read, tenant, resolver, today, outcome)
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
    keys = evaluate._judged(resolver, ((r.metric, r.dimension or "") for r in rules))
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
            values = resolver.figures.daily(ref, None, definition.kind)
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
) -> None:
    """Each unpaused rule's verdict on the last whole day (``evaluate.evaluate_alerts``);
    its message when it holds (sent only if it starts an episode, decided under the lock)."""
    day = today - DAY
    for rule in read.rules[tenant.id]:
        if rule.paused_at is not None:
            continue
        verdict = evaluate._judge(tenant, resolver, rule, day)
        if verdict is None:
            continue  # no data: the episode stays as it is
        holds, value, sentence = verdict
        content = None
        if holds and rule.state != "firing":
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
    "merge",
    "prefilled_figures",
    "simple_series",
]
