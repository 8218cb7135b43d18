"""What one notifications run does, for many tenants at once.

1. Judge the tenants whose aggregates changed: record anomalous days
   (``evaluate.detect_anomalies``) and evaluate their alert rules
   (``evaluate.evaluate_alerts``); an alert that starts an episode is queued for each
   of its recipients.
2. Compute each due scorecard's figures for the time it was due and queue it for each
   recipient (rendered when sent), then move the scorecard on to its next send.
3. Send what is due (``delivery.send_due``): the new messages, and earlier failures
   whose retry time has come.

Steps 1 and 2 run for a batch of tenants together (``batch``: a few statements and one
numpy pass for all of them); what the batch cannot do goes one tenant at a time
(``evaluate_each``). Queuing is idempotent (one row per scorecard or alert episode and
recipient), so a run that is retried, or a scheduler that asks twice, sends each message
once. A tenant whose evaluation fails is reported by id and exception kind and does not
stop the others. The Dagster job ``notifications`` and ``writevue scorecard send-now`` both
call ``run``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .. import registry
from ..errors import InvalidInput, NotFound
from ..models import Connection, NotificationDelivery, Scorecard
from ..runtime import Runtime
from . import batch, config, delivery, evaluate, schedule


@dataclass
class RunReport:
    tenants: int = 0
    anomalies: int = 0
    alerts_fired: int = 0
    scorecards: int = 0
    #: messages queued by this run (one per recipient)
    queued: int = 0
    delivery: delivery.DeliveryReport | None = None
    #: seconds spent judging and rendering, and sending
    eval_s: float = 0.0
    send_s: float = 0.0
    #: scorecards due whose period's data is not all refreshed yet: held, asked again
    held: int = 0
    #: "tenant <id>: <exception kind>" for each tenant or scorecard that could not be judged
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [
            f"{self.tenants} tenants judged: {self.anomalies} unusual days, "
            f"{self.alerts_fired} alerts fired; {self.scorecards} scorecards rendered; "
            f"{self.queued} messages queued"
        ]
        if self.held:
            lines.append(
                f"{self.held} scorecards held: their period's data is not all refreshed yet"
            )
        if self.delivery is not None:
            lines.extend(self.delivery.lines())
        lines.extend(f"not judged: {error}" for error in self.errors)
        return lines


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def judge_tenants(
    runtime: Runtime, tenant_ids: Iterable[str], *, today: dt.date, report: RunReport
) -> None:
    """Anomalies and alerts of these tenants; each fired alert queued for its recipients."""
    for tenant_id in sorted(set(tenant_ids)):
        try:
            # SQLite's write lock from the start: a run that reads, then writes (rule
            # states, anomalies, the outbox) must not meet another run's writes midway
            with runtime.db.locked_session() as session:
                # the days a refresh may have changed: those it re-reads, and the new one
                found = evaluate.detect_anomalies(
                    session, [tenant_id], today=today, days=runtime.settings.lookback_days + 1
                )
                report.anomalies += sum(len(days) for days in found.values())
                fired = evaluate.evaluate_alerts(session, runtime.keys, [tenant_id], today=today)
                link = None
                if fired:
                    link = config.message_link_url(
                        session, runtime.keys, tenant_id, runtime.settings
                    )
                for alert in fired:
                    alert = dataclasses.replace(alert, dashboard_url=link)
                    report.alerts_fired += 1
                    report.queued += delivery.enqueue(
                        session,
                        runtime.keys,
                        tenant_id=alert.tenant_id,
                        kind="alert",
                        subject_id=alert.alert_id,
                        # one episode: the rule and the day it started
                        episode=alert.day.isoformat(),
                        scheduled_for=_utcnow(),
                        content=alert,
                        recipients=config.active_recipients(
                            session, runtime.keys, alert_id=alert.alert_id
                        ),
                        settings=runtime.settings,
                    )
            report.tenants += 1
        except Exception as exc:  # one tenant's trouble never stops the others
            report.errors.append(f"tenant {tenant_id}: {type(exc).__name__}")


#: the longest a due scorecard waits for its period's data before it goes out as it is
HOLD_MAX = dt.timedelta(hours=6)


def _data_complete(session: Session, card: Scorecard, scheduled_for: dt.datetime) -> bool:
    """Whether every connection of the scorecard's tenant was refreshed after the last day
    of the period ended (UTC, as facts are kept), or the scorecard has waited HOLD_MAX.

    A scorecard due at 08:00 in Tokyo reports a "yesterday" that is a UTC day still
    running: it waits for the refresh after that day, rather than report part of it."""
    if _utcnow() - scheduled_for >= HOLD_MAX:
        return True
    timezone = config.tenant_timezone(session, card.tenant_id)
    _, end = schedule.period_window(card.period, schedule.local_today(timezone, scheduled_for))
    ended = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
    refreshed = session.scalars(
        select(Connection.last_refreshed_at).where(
            # a paused connection will not be refreshed: it is not waited for
            Connection.tenant_id == card.tenant_id,
            Connection.status.not_in(registry.NOT_REFRESHED),
        )
    ).all()
    return all(at is not None and at >= ended for at in refreshed)


def _give_up(runtime: Runtime, scorecard_id: str, report: RunReport) -> None:
    """A scheduled scorecard that has failed to render for HOLD_MAX: this send is skipped
    and the scorecard moved on to its next, so it is not asked for again and again."""
    try:
        with runtime.db.session() as session:
            config.advance_scorecard(session, scorecard_id, after=_utcnow())
        report.errors.append(f"scorecard {scorecard_id}: this send given up")
    except Exception as exc:  # removed meanwhile, or the database is away: next time
        report.errors.append(f"scorecard {scorecard_id}: not moved on ({type(exc).__name__})")


def render_scorecards(
    runtime: Runtime,
    due: Sequence[tuple[str, dt.datetime]],
    *,
    report: RunReport,
    today: dt.date | None = None,
    advance: bool = True,
    episode: str | None = None,
    strict: bool = False,
) -> None:
    """Queue each due scorecard (id, the time it was due) for its recipients.

    ``advance`` moves a scheduled scorecard on to its next send in the same commit as its
    messages; ``send-now`` neither advances it nor shares the schedule's episode.
    """
    for scorecard_id, scheduled_for in due:
        try:
            with runtime.db.locked_session() as session:
                card = session.get(Scorecard, scorecard_id)
                if card is None:
                    raise NotFound(f"No scorecard with id {scorecard_id}.")
                if advance and card.next_due_at > scheduled_for:
                    continue  # an earlier run sent this one and moved the scorecard on
                if advance and not _data_complete(session, card, scheduled_for):
                    report.held += 1
                    continue  # asked again by the sensor's next run; sent when refreshed
                link = config.message_link_url(
                    session, runtime.keys, card.tenant_id, runtime.settings
                )
                content = evaluate.scorecard_content(
                    session,
                    runtime.keys,
                    scorecard_id,
                    scheduled_for=scheduled_for,
                    base_url_link=link,
                    today=today,
                )
                report.queued += delivery.enqueue(
                    session,
                    runtime.keys,
                    tenant_id=card.tenant_id,
                    kind="scorecard",
                    subject_id=scorecard_id,
                    episode=episode or scheduled_for.isoformat(),
                    scheduled_for=scheduled_for,
                    content=content,
                    recipients=config.active_recipients(
                        session, runtime.keys, scorecard_id=scorecard_id
                    ),
                    settings=runtime.settings,
                )
                if advance:
                    # the next send after now: a scorecard missed for weeks (the
                    # scheduler down) is sent once, late, not once per missed week
                    config.advance_scorecard(
                        session, scorecard_id, after=max(scheduled_for, _utcnow())
                    )
            report.scorecards += 1
        except Exception as exc:
            if strict:
                raise
            report.errors.append(f"scorecard {scorecard_id}: {type(exc).__name__}")
            if advance and _utcnow() - scheduled_for >= HOLD_MAX:
                _give_up(runtime, scorecard_id, report)


def evaluate_batch(
    runtime: Runtime,
    *,
    tenant_ids: Iterable[str],
    scorecards: Sequence[tuple[str, dt.datetime]],
    now: dt.datetime,
    report: RunReport,
) -> None:
    """Judge ``tenant_ids`` and queue the due ``scorecards``: ``WRITEVUE_NOTIFY_BATCH``
    tenants at a time together (``batch``: a few statements and one polars pass for all of
    them); what the batch cannot do, a tenant at a time (``evaluate_each``)."""
    judged = sorted(set(tenant_ids))
    owners: dict[str, str] = {}
    with runtime.db.session() as session:
        owners = scorecard_tenants(session, [card for card, _ in scorecards])
    size = max(1, runtime.settings.notify_batch)
    everyone = sorted(set(judged) | set(owners.values()))

    def fallback(tenants, due) -> None:
        evaluate_each(runtime, tenant_ids=tenants, scorecards=due, now=now, report=report)

    # scorecards removed since they were due have no tenant: the per-tenant path says so
    orphans = [(card, when) for card, when in scorecards if card not in owners]
    if orphans:
        fallback([], orphans)
    for start in range(0, len(everyone), size):
        chunk = set(everyone[start : start + size])
        batch.evaluate_batch(
            runtime,
            tenant_ids=[t for t in judged if t in chunk],
            scorecards=[(c, w) for c, w in scorecards if owners.get(c) in chunk],
            now=now,
            report=report,
            fallback=fallback,
        )


def evaluate_each(
    runtime: Runtime,
    *,
    tenant_ids: Iterable[str],
    scorecards: Sequence[tuple[str, dt.datetime]],
    now: dt.datetime,
    report: RunReport,
) -> None:
    """``evaluate_batch`` one tenant at a time: a tenant's settings and facts are read
    once for its anomalies, alerts and scorecards (``evaluate.shared_loads``), and only
    one tenant's are held at a time. Each tenant's or scorecard's trouble is named."""
    judged = set(tenant_ids)
    with runtime.db.session() as session:
        owners = scorecard_tenants(session, [card for card, _ in scorecards])
    cards: dict[str, list[tuple[str, dt.datetime]]] = {}
    for card, when in scorecards:
        # a scorecard removed since it was due has no tenant: rendering it says so
        cards.setdefault(owners.get(card, ""), []).append((card, when))
    for tenant_id in sorted(judged | set(cards)):
        with evaluate.shared_loads():
            if tenant_id in judged:
                judge_tenants(runtime, [tenant_id], today=now.date(), report=report)
            render_scorecards(runtime, cards.get(tenant_id, []), report=report)


def run(
    runtime: Runtime,
    *,
    tenant_ids: Iterable[str] = (),
    scorecards: Sequence[tuple[str, dt.datetime]] = (),
    now: dt.datetime | None = None,
    run_id: str | None = None,
    send: bool = True,
) -> RunReport:
    """Judge ``tenant_ids``, render the due ``scorecards``, then send what is due."""
    now = now or _utcnow()
    report = RunReport()
    started = time.perf_counter()
    evaluate_batch(runtime, tenant_ids=tenant_ids, scorecards=scorecards, now=now, report=report)
    report.eval_s = time.perf_counter() - started
    if send:
        started = time.perf_counter()
        # now, not when the run started: what this run queued is due too
        report.delivery = delivery.send_due(runtime, now=_utcnow(), run_id=run_id)
        report.send_s = time.perf_counter() - started
    return report


def _check_channels(
    session: Session, runtime: Runtime, *, scorecard_id: str | None = None, alert_id=None
) -> None:
    """Refuse, before anything is queued, a send by email that cannot work: SMTP not set
    or set wrongly (one clear line, from ``smtp``)."""
    from . import smtp

    if scorecard_id is not None:
        config.get_scorecard(session, scorecard_id)  # NotFound first
    else:
        config.get_alert(session, alert_id)
    recipients = config.active_recipients(
        session, runtime.keys, scorecard_id=scorecard_id, alert_id=alert_id
    )
    if not recipients:
        raise InvalidInput("It has no active recipients (all unsubscribed, bounced or removed).")
    if any(r.channel == "email" for r in recipients):
        try:
            found = smtp.SmtpConfig.from_settings(runtime.settings)
        except smtp.ConfigError as exc:
            raise InvalidInput(str(exc)) from None
        if found is None:
            raise InvalidInput(
                "WRITEVUE_SMTP_URL is not set: mail cannot be sent (see docs/notifications.md)."
            )


def _cancel_unsent(
    session: Session, *, kinds: tuple[str, ...], subject_id: str, keep: dt.datetime
) -> int:
    """Cancel the subject's messages still waiting to be sent or retried, but those just
    queued for ``keep`` (the replacement); how many."""
    result = session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.kind.in_(kinds),
            NotificationDelivery.subject_id == subject_id,
            NotificationDelivery.status.in_(("pending", "retrying")),
            NotificationDelivery.scheduled_for != keep,
        )
        .values(status="cancelled", message_ct=None, error="replaced by a later send")
    )
    return result.rowcount or 0


def send_now(
    runtime: Runtime, scorecard_id: str, *, now: dt.datetime | None = None, run_id: str = "cli"
) -> RunReport:
    """Render a scorecard for now and send it to its recipients at once, outside its
    schedule (which stays as it is): ``writevue scorecard send-now`` and the demo."""
    now = now or _utcnow()
    report = RunReport()
    started = time.perf_counter()
    with runtime.db.session() as session:
        _check_channels(session, runtime, scorecard_id=scorecard_id)
    render_scorecards(
        runtime,
        [(scorecard_id, now)],
        report=report,
        advance=False,
        episode=f"now:{now.isoformat()}",
        strict=True,
    )
    report.eval_s = time.perf_counter() - started
    with runtime.db.session() as session:
        # queued: it replaces what of the scorecard was still waiting to go out (a render
        # that failed above raised before anything was cancelled)
        _cancel_unsent(session, kinds=("scorecard",), subject_id=scorecard_id, keep=now)
        tenant_id = config.get_scorecard(session, scorecard_id).tenant_id
    started = time.perf_counter()
    report.delivery = delivery.send_due(runtime, tenant_ids=[tenant_id], now=now, run_id=run_id)
    report.send_s = time.perf_counter() - started
    return report


def send_alert_test(
    runtime: Runtime, alert_id: str, *, now: dt.datetime | None = None, run_id: str = "cli"
) -> RunReport:
    """A test message of an alert rule to its recipients, now: what the rule says of the
    last whole day, marked as a test; the rule's episode is left as it is."""
    now = now or _utcnow()
    report = RunReport()
    with runtime.db.session() as session:
        _check_channels(session, runtime, alert_id=alert_id)
    with runtime.db.session() as session:
        content = evaluate.alert_test_content(session, runtime.keys, alert_id, today=now.date())
        content = dataclasses.replace(
            content,
            dashboard_url=config.message_link_url(
                session, runtime.keys, content.tenant_id, runtime.settings
            ),
        )
        report.queued += delivery.enqueue(
            session,
            runtime.keys,
            tenant_id=content.tenant_id,
            kind="test",
            subject_id=alert_id,
            episode=f"test:{now.isoformat()}",
            scheduled_for=now,
            content=content,
            recipients=config.active_recipients(session, runtime.keys, alert_id=alert_id),
            settings=runtime.settings,
        )
        # in the same commit: this test replaces an earlier one still waiting
        _cancel_unsent(session, kinds=("test",), subject_id=alert_id, keep=now)
    report.delivery = delivery.send_due(
        runtime, tenant_ids=[content.tenant_id], now=now, run_id=run_id
    )
    return report


# -- what the sensor asks before it requests a run ---------------------------------------


def tenants_of(session: Session, connection_ids: Sequence[str]) -> list[str]:
    """The tenants these connections belong to (connections since deleted drop out)."""
    tenants: set[str] = set()
    ids = sorted(set(connection_ids))
    for start in range(0, len(ids), 500):
        tenants.update(
            session.scalars(
                select(Connection.tenant_id).where(Connection.id.in_(ids[start : start + 500]))
            )
        )
    return sorted(tenants)


def scorecard_tenants(session: Session, scorecard_ids: Sequence[str]) -> dict[str, str]:
    """scorecard id -> its tenant id, for those that exist."""
    found: dict[str, str] = {}
    ids = sorted(set(scorecard_ids))
    for start in range(0, len(ids), 500):
        rows = session.execute(
            select(Scorecard.id, Scorecard.tenant_id).where(
                Scorecard.id.in_(ids[start : start + 500])
            )
        )
        found.update((card, tenant) for card, tenant in rows)
    return found


def due_deliveries(session: Session, now: dt.datetime) -> list[tuple[str, int]]:
    """(delivery id, attempts so far) of each message waiting to be sent or retried."""
    rows = session.execute(
        select(NotificationDelivery.id, NotificationDelivery.attempts).where(
            NotificationDelivery.status.in_(("pending", "retrying")),
            or_(
                NotificationDelivery.next_attempt_at.is_(None),
                NotificationDelivery.next_attempt_at <= now,
            ),
        )
    )
    return sorted((delivery_id, attempts) for delivery_id, attempts in rows)


__all__ = [
    "RunReport",
    "due_deliveries",
    "evaluate_batch",
    "evaluate_each",
    "judge_tenants",
    "render_scorecards",
    "run",
    "scorecard_tenants",
    "send_alert_test",
    "send_now",
    "tenants_of",
]
