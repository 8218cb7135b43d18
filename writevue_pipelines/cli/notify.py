"""``writevue scorecard …``, ``writevue alert …``, ``writevue notifications list``: the
numbers sent to the client by email or webhook.

Recipients are never shown back: listings count them by channel. Email addresses come
from ``--to``; webhook URLs are secrets (whoever has one can post to the channel), so
they come from a file or standard input (``--webhook-file PATH|-``, one URL a line),
never from an argument that would sit in `ps` and the shell's history. Adding a
scorecard or an alert sends the client's figures to its recipients: it is recorded in
the staff audit, like creating a dashboard link; so are adding recipients later
(``scorecard|alert recipients``, by address, never printed back), ``scorecard send-now``
and ``alert test``. ``pause``/``resume`` stop and restart a scorecard or an alert
without losing its settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import registry
from ..errors import InvalidInput
from ..notifications import config, schedule
from .app import CliError, arg, command, group
from .goal import parse_target
from .inputs import ACTOR, REASON, ready_runtime, staff_access

group("scorecard", "scheduled summaries of a tenant's metrics, by email or webhook")
group("alert", "a message when a tenant's metric crosses a line or behaves unusually")
group("notifications", "what was sent (or is to be): deliveries and their outcomes")

#: the most bytes a --webhook-file may hold
MAX_WEBHOOK_FILE = 64 * 1024

TO = arg(
    "--to",
    action="append",
    default=[],
    metavar="EMAIL",
    help="an email recipient (repeatable); never shown back",
)
WEBHOOK_FILE = arg(
    "--webhook-file",
    metavar="PATH|-",
    help="webhook URLs (Slack-compatible), one a line, from a file or - for stdin; "
    "they are secrets, so never an argument",
)


def read_webhooks(source: str | None) -> list[str]:
    """The webhook URLs in a file (``-``: stdin), one a line; blank lines and lines
    starting with # are skipped. Never echoed: a URL is a secret."""
    if source is None:
        return []
    try:
        if source == "-":
            text = sys.stdin.read(MAX_WEBHOOK_FILE + 1) if sys.stdin is not None else ""
        else:
            with Path(source).expanduser().open(encoding="utf-8") as handle:
                text = handle.read(MAX_WEBHOOK_FILE + 1)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise InvalidInput(f"--webhook-file: cannot read {source} ({why}).") from None
    if len(text) > MAX_WEBHOOK_FILE:
        raise InvalidInput(f"--webhook-file holds more than {MAX_WEBHOOK_FILE} bytes.")
    urls = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if not urls:
        where = "stdin" if source == "-" else source
        raise InvalidInput(f"--webhook-file: {where} holds no webhook URL (one a line).")
    return urls


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _recipients_text(item) -> str:
    text = f"{_plural(item.emails, 'email')}, {_plural(item.webhooks, 'webhook')}"
    stopped = [
        f"{count} {state}"
        for count, state in ((item.unsubscribed, "unsubscribed"), (item.bounced, "bounced"))
        if count
    ]
    if stopped:
        text += f" ({', '.join(stopped)})"
    return text


def _local(moment, timezone: str) -> str:
    return moment.astimezone(schedule.zone(timezone)).strftime("%a %Y-%m-%d %H:%M")


def _stay_unsubscribed(info) -> None:
    """Say so when addresses that unsubscribed or bounced before were given again: they
    stay off (the tenant's suppression list)."""
    stopped = info.unsubscribed + info.bounced
    if stopped:
        print(
            f"{_plural(stopped, 'recipient')} unsubscribed or bounced earlier and stay off",
            file=sys.stderr,
        )


ADD_TO = arg(
    "--add-to",
    action="append",
    default=[],
    metavar="EMAIL",
    help="an email recipient to add (repeatable); never shown back",
)
REMOVE_TO = arg(
    "--remove-to",
    action="append",
    default=[],
    metavar="EMAIL",
    help="an email recipient to remove, by its address in any case (repeatable)",
)
ADD_WEBHOOK_FILE = arg(
    "--add-webhook-file",
    metavar="PATH|-",
    help="webhook URLs to add, one a line, from a file or - for stdin",
)
REMOVE_WEBHOOK_FILE = arg(
    "--remove-webhook-file",
    metavar="PATH|-",
    help="webhook URLs to remove, one a line, from a file or - for stdin",
)


def _change_recipients(args, word: str) -> None:
    """`writevue scorecard|alert recipients ID …`: add or remove recipients by address."""
    if args.add_webhook_file == "-" and args.remove_webhook_file == "-":
        raise CliError(
            "--add-webhook-file and --remove-webhook-file: only one of them from stdin (-)."
        )
    access = staff_access(args)
    add_webhooks = read_webhooks(args.add_webhook_file)
    remove_webhooks = read_webhooks(args.remove_webhook_file)
    subject_id = args.scorecard_id if word == "scorecard" else args.alert_id
    runtime = ready_runtime()
    with runtime.db.session() as session:
        change = config.change_recipients(
            session,
            runtime.keys,
            scorecard_id=subject_id if word == "scorecard" else None,
            alert_id=subject_id if word == "alert" else None,
            add_emails=args.add_to,
            add_webhooks=add_webhooks,
            remove_emails=args.remove_to,
            remove_webhooks=remove_webhooks,
        )
        if word == "scorecard":
            info = config.get_scorecard(session, subject_id)
        else:
            info = config.get_alert(session, subject_id)
        # with the change, in one commit: new recipients receive the client's figures
        access.record_in(
            session,
            info.tenant_id,
            **{f"{word}_id": info.id},
            added=change.added,
            removed=change.removed,
        )
    already = f" ({change.already} already there)" if change.already else ""
    print(
        f"{word} {info.id}: {change.added} added, {change.removed} removed{already}; "
        f"now {_recipients_text(info)}"
    )


# -- scorecards ----------------------------------------------------------------------------


@command(
    "scorecard add",
    "schedule a scorecard: a tenant's metrics over a period, sent on a cadence; prints "
    "its id (audited: it sends the client's figures to its recipients)",
    arg("tenant_id"),
    arg("--name", required=True, help='its title in the message ("Monday summary")'),
    arg(
        "--metric",
        dest="metrics",
        action="append",
        required=True,
        metavar="REF",
        help="a metric (repeatable, at most 15): stripe.gross_volume[eur], calc.<name>",
    ),
    arg(
        "--period",
        required=True,
        choices=schedule.PERIODS,
        help="the days it covers; one that fits the cadence (no week sent seven times): "
        + "; ".join(
            f"{cadence}: {', '.join(p for p in schedule.PERIODS if p in fits)}"
            for cadence, fits in schedule.CADENCE_PERIODS.items()
        ),
    ),
    arg(
        "--compare",
        required=True,
        choices=schedule.COMPARISONS,
        help="the previous period, the same period last year, or each metric's goal",
    ),
    arg("--every", required=True, choices=schedule.CADENCES, help="how often it is sent"),
    arg("--on", choices=schedule.WEEKDAYS, help="weekly: the weekday (default mon)"),
    arg("--day", type=int, metavar="1..28", help="monthly: the day of the month (default 1)"),
    arg("--at", default="08:00", metavar="HH:MM", help="local time (tenant's time zone)"),
    TO,
    WEBHOOK_FILE,
    ACTOR,
    REASON,
    audit="scorecard.add",
    example=(
        "writevue scorecard add TENANT_ID --name 'Monday summary' \\\n"
        "    --metric stripe.gross_volume[eur] --metric stripe.charges \\\n"
        "    --period last_week --compare previous --every weekly --on mon --at 08:00 \\\n"
        "    --to owner@client.example --webhook-file slack-url.txt"
    ),
)
def add_scorecard(args) -> None:
    weekday = day = None
    if args.every == "weekly":
        weekday = schedule.WEEKDAYS.index(args.on or "mon")
    elif args.on is not None:
        raise CliError("--on is for --every weekly; --every monthly takes --day.")
    if args.every == "monthly":
        day = 1 if args.day is None else args.day
    elif args.day is not None:
        raise CliError("--day is for --every monthly; --every weekly takes --on.")
    access = staff_access(args)
    webhooks = read_webhooks(args.webhook_file)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        scorecard_id = config.add_scorecard(
            session,
            runtime.keys,
            args.tenant_id,
            name=args.name,
            metrics=args.metrics,
            period=args.period,
            comparison=args.compare,
            cadence=args.every,
            weekday=weekday,
            day_of_month=day,
            send_at=args.at,
            emails=args.to,
            webhooks=webhooks,
        )
        info = config.get_scorecard(session, scorecard_id)
        access.record_in(
            session,
            info.tenant_id,
            scorecard_id=scorecard_id,
            emails=info.emails,
            webhooks=info.webhooks,
        )
    print(
        f"scorecard {info.name!r}: {info.schedule}; next {_local(info.next_due_at, info.timezone)}",
        file=sys.stderr,
    )
    _stay_unsubscribed(info)
    print(scorecard_id)


@command(
    "scorecard list",
    "a tenant's scorecards: metrics, period, schedule, recipients by channel (audited)",
    arg("tenant_id"),
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="scorecard.list",
    example="writevue scorecard list TENANT_ID --json --reason TICKET-12",
)
def list_scorecards(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant_id)
        items = config.list_scorecards(session, tenant_id)
    access.record(runtime, tenant_id, scorecards=len(items))
    if args.json:
        print(json.dumps([item.as_json() for item in items], indent=2))
        return
    for item in items:
        paused = "  PAUSED" if item.paused else ""
        print(
            f"{item.id}  {item.name}  {item.period} vs {item.comparison}  {item.schedule}  "
            f"next {_local(item.next_due_at, item.timezone)}  {_recipients_text(item)}{paused}"
        )
        print(f"    {', '.join(item.metrics)}")


@command(
    "scorecard remove",
    "remove a scorecard and its recipients; what it had still to send is cancelled",
    arg("scorecard_id"),
    audit=False,  # shows nothing of the tenant's
    example="writevue scorecard remove SCORECARD_ID",
)
def remove_scorecard(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        info = config.remove_scorecard(session, args.scorecard_id)
    print(f"removed scorecard {info.id}")


@command(
    "scorecard pause",
    "stop sending a scorecard until it is resumed (its recipients and settings stay)",
    arg("scorecard_id"),
    audit=False,  # shows nothing of the tenant's
    example="writevue scorecard pause SCORECARD_ID",
)
def pause_scorecard(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        info = config.pause_scorecard(session, args.scorecard_id)
    print(f"paused scorecard {info.id}")


@command(
    "scorecard resume",
    "send a paused scorecard again, from its next send time (missed sends are not made up)",
    arg("scorecard_id"),
    audit=False,  # shows nothing of the tenant's
    example="writevue scorecard resume SCORECARD_ID",
)
def resume_scorecard(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        info = config.resume_scorecard(session, args.scorecard_id)
    print(f"resumed scorecard {info.id}; next {_local(info.next_due_at, info.timezone)}")


@command(
    "scorecard recipients",
    "add or remove a scorecard's recipients, by address; prints counts, never addresses "
    "(audited: new recipients receive the client's figures)",
    arg("scorecard_id"),
    ADD_TO,
    REMOVE_TO,
    ADD_WEBHOOK_FILE,
    REMOVE_WEBHOOK_FILE,
    ACTOR,
    REASON,
    audit="scorecard.recipients",
    example=(
        "writevue scorecard recipients SCORECARD_ID --add-to new@client.example \\\n"
        "    --remove-to old@client.example --add-webhook-file slack-url.txt"
    ),
)
def scorecard_recipients(args) -> None:
    _change_recipients(args, "scorecard")


@command(
    "scorecard preview",
    "write the scorecard's message, as it would be sent now, to a file (.eml; open it in a "
    "mail reader) without sending it (audited: it holds the client's figures)",
    arg("scorecard_id"),
    arg("--out", required=True, metavar="FILE", help="where to write it (.eml; .html: the page)"),
    ACTOR,
    REASON,
    audit="scorecard.preview",
    example="writevue scorecard preview SCORECARD_ID --out monday.eml --reason TICKET-12",
)
def preview_scorecard(args) -> None:
    import datetime as dt
    import os

    from ..notifications import evaluate, messages

    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        card = config.get_scorecard(session, args.scorecard_id)
        # never the live token: a preview is a file, copied and attached carelessly
        link = config.preview_link_url(session, runtime.keys, card.tenant_id, runtime.settings)
        content = evaluate.scorecard_content(
            session,
            runtime.keys,
            card.id,
            # as if sent now: the period just ended, with its data (the next send's
            # period may not have happened yet)
            scheduled_for=dt.datetime.now(dt.UTC),
            base_url_link=link,
        )
    text = messages.preview(content)
    out = Path(args.out)
    if out.suffix.lower() in (".html", ".htm"):
        import email
        import email.policy

        parsed = email.message_from_string(text, policy=email.policy.default)
        text = parsed.get_body(preferencelist=("html",)).get_content()
    try:
        # the client's figures: readable by the operator only
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # the mode above applies to a new file only: tighten one that exists, before
        # anything is written into it
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise CliError(f"Cannot write {out}: {exc.strerror}.") from None
    access.record(runtime, card.tenant_id, scorecard=card.id)
    print(f"wrote {out} ({content.period_label}, {_plural(len(content.figures), 'figure')})")


#: what a send-now or an alert test says when its messages did not go out at once
NOT_SENT_YET = (
    "Not sent yet: queued; the notifications sensor retries it "
    "(writevue notifications list --status retrying)"
)


def _require_sent(report) -> None:
    if report.delivery is None or not report.delivery.counts.get("sent"):
        raise CliError(NOT_SENT_YET)


@command(
    "scorecard send-now",
    "send the scorecard to its recipients now, outside its schedule (which stays as it "
    "is); audited: staff send the client's figures",
    arg("scorecard_id"),
    ACTOR,
    REASON,
    audit="scorecard.send-now",
    example="writevue scorecard send-now SCORECARD_ID --reason TICKET-12",
)
def send_now(args) -> None:
    from ..notifications import runner

    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        card = config.get_scorecard(session, args.scorecard_id)
    access.record(runtime, card.tenant_id, scorecard=card.id)
    report = runner.send_now(runtime, card.id)
    for line in report.lines():
        print(line)
    _require_sent(report)


# -- alerts --------------------------------------------------------------------------------

_CONDITION_FLAGS = ("above", "below", "change", "anomaly")


def _number(flag: str, text: str, *, percent: bool = False) -> float:
    shown = text.strip()
    if percent and shown.endswith("%"):
        shown = shown[:-1]
    try:
        return parse_target(shown)
    except InvalidInput:
        raise InvalidInput(
            f"--{flag} {text[:20]!r} is not a number (such as 2000, 2k, 1.5M"
            + (" or 20%)." if percent else ").")
        ) from None


@command(
    "alert add",
    "a message when a tenant's metric crosses a threshold, changes by more than a "
    "percentage or behaves unusually; prints its id (audited: it sends the client's figures)",
    arg("tenant_id"),
    arg("metric", help="stripe.charges, stripe.gross_volume[eur], calc.<name>, rest.<metric>"),
    arg("--above", metavar="X", help="fires when the value is above X"),
    arg("--below", metavar="X", help="fires when the value is below X"),
    arg(
        "--change",
        metavar="PCT",
        help="fires when it changes by more than PCT%% against the window before",
    ),
    arg(
        "--anomaly",
        action="store_true",
        help="fires on a day outside what its own history predicts (median and MAD of "
        "the same weekday over the last 8 weeks)",
    ),
    arg(
        "--sensitivity",
        type=float,
        metavar="Z",
        help=f"--anomaly: the robust z-score (default {config.DEFAULT_SENSITIVITY}; lower "
        "flags more days)",
    ),
    arg(
        "--window",
        type=int,
        choices=config.WINDOWS,
        default=1,
        help="judge the last whole day (1, default) or the last 7 days (7)",
    ),
    TO,
    WEBHOOK_FILE,
    ACTOR,
    REASON,
    audit="alert.add",
    example=(
        "writevue alert add TENANT_ID stripe.charges --below 10 --to owner@client.example\n"
        "writevue alert add TENANT_ID stripe.gross_volume[eur] --change 25 --window 7 "
        "--webhook-file -\n"
        "writevue alert add TENANT_ID rest.signups --anomaly --to owner@client.example"
    ),
)
def add_alert(args) -> None:
    given = [
        name
        for name in _CONDITION_FLAGS
        if (getattr(args, name) is not None and getattr(args, name) is not False)
    ]
    if not given:
        raise CliError("Say when it fires: give one of --above, --below, --change or --anomaly.")
    if len(given) > 1:
        raise CliError("Give only one of --above, --below, --change or --anomaly.")
    condition = given[0]
    if args.sensitivity is not None and condition != "anomaly":
        raise CliError("--sensitivity is for --anomaly alerts.")
    if condition == "anomaly":
        threshold = args.sensitivity
    else:
        threshold = _number(condition, getattr(args, condition), percent=condition == "change")
    access = staff_access(args)
    webhooks = read_webhooks(args.webhook_file)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        alert_id = config.add_alert(
            session,
            runtime.keys,
            args.tenant_id,
            metric=args.metric,
            condition=condition,
            threshold=threshold,
            window_days=args.window,
            emails=args.to,
            webhooks=webhooks,
        )
        info = config.get_alert(session, alert_id)
        access.record_in(
            session, info.tenant_id, alert_id=alert_id, emails=info.emails, webhooks=info.webhooks
        )
    print(f"alert: {info.describe()}", file=sys.stderr)
    _stay_unsubscribed(info)
    print(alert_id)


@command(
    "alert list",
    "a tenant's alerts: condition, state, recipients by channel (audited)",
    arg("tenant_id"),
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="alert.list",
    example="writevue alert list TENANT_ID --json --reason TICKET-12",
)
def list_alerts(args) -> None:
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant_id)
        items = config.list_alerts(session, tenant_id)
    access.record(runtime, tenant_id, alerts=len(items))
    if args.json:
        print(json.dumps([item.as_json() for item in items], indent=2))
        return
    for item in items:
        state = item.state
        if item.state == "firing" and item.firing_since:
            state += f" since {item.firing_since.isoformat()}"
        if item.paused:
            state += ", paused"
        print(f"{item.id}  {item.describe()}  {state}  {_recipients_text(item)}")


@command(
    "alert remove",
    "remove an alert and its recipients; what it had still to send is cancelled",
    arg("alert_id"),
    audit=False,  # shows nothing of the tenant's
    example="writevue alert remove ALERT_ID",
)
def remove_alert(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        info = config.remove_alert(session, args.alert_id)
    print(f"removed alert {info.id}")


@command(
    "alert pause",
    "stop judging an alert until it is resumed (its recipients and settings stay)",
    arg("alert_id"),
    audit=False,  # shows nothing of the tenant's
    example="writevue alert pause ALERT_ID",
)
def pause_alert(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        info = config.pause_alert(session, args.alert_id)
    print(f"paused alert {info.id}")


@command(
    "alert resume",
    "judge a paused alert again, from the next evaluation",
    arg("alert_id"),
    audit=False,  # shows nothing of the tenant's
    example="writevue alert resume ALERT_ID",
)
def resume_alert(args) -> None:
    runtime = ready_runtime()
    with runtime.db.session() as session:
        info = config.resume_alert(session, args.alert_id)
    print(f"resumed alert {info.id}")


@command(
    "alert recipients",
    "add or remove an alert's recipients, by address; prints counts, never addresses "
    "(audited: new recipients receive the client's figures)",
    arg("alert_id"),
    ADD_TO,
    REMOVE_TO,
    ADD_WEBHOOK_FILE,
    REMOVE_WEBHOOK_FILE,
    ACTOR,
    REASON,
    audit="alert.recipients",
    example=(
        "writevue alert recipients ALERT_ID --add-to new@client.example "
        "--remove-webhook-file old-slack-url.txt"
    ),
)
def alert_recipients(args) -> None:
    _change_recipients(args, "alert")


@command(
    "alert test",
    "send a test message of an alert to its recipients: what it says of the last whole "
    "day (audited: staff send the client's figures)",
    arg("alert_id"),
    ACTOR,
    REASON,
    audit="alert.test",
    example="writevue alert test ALERT_ID --reason TICKET-12",
)
def test_alert(args) -> None:
    from ..notifications import runner

    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        rule = config.get_alert(session, args.alert_id)
    access.record(runtime, rule.tenant_id, alert=rule.id)
    report = runner.send_alert_test(runtime, rule.id)
    # what was sent; no "0 tenants judged" line: a test judges nothing
    for line in report.delivery.lines() if report.delivery is not None else []:
        print(line)
    _require_sent(report)


# -- deliveries ----------------------------------------------------------------------------

#: as ``delivery.STATUSES`` (not imported: the delivery module loads the mail stack)
DELIVERY_STATUSES = ("pending", "sending", "retrying", "sent", "bounced", "failed", "cancelled")


@command(
    "notifications list",
    "deliveries, newest first: when, tenant, kind, channel, status, attempts, error "
    "(never an address; audited)",
    arg("--tenant", metavar="TENANT_ID"),
    arg("--status", choices=DELIVERY_STATUSES),
    arg("--limit", type=int, default=100, metavar="N", help="at most N (default 100)"),
    arg("--json", action="store_true"),
    ACTOR,
    REASON,
    audit="notifications.list",
    example=(
        "writevue notifications list --status failed\n"
        "writevue notifications list --tenant TENANT_ID --limit 20 --json"
    ),
)
def list_notifications(args) -> None:
    from ..notifications import delivery

    if not 1 <= args.limit <= 10_000:
        raise CliError("--limit is 1 to 10000.")
    access = staff_access(args)
    runtime = ready_runtime()
    with runtime.db.session() as session:
        tenant_id = registry.require_tenant(session, args.tenant) if args.tenant else None
        items = delivery.list_deliveries(
            session, tenant_id=tenant_id, status=args.status, limit=args.limit
        )
        names = config.subject_names(session, [(item.kind, item.subject_id) for item in items])
    rows = [_delivery_row(item, names.get((item.kind, item.subject_id), "")) for item in items]
    if tenant_id is not None:
        access.record(runtime, tenant_id, deliveries=len(rows))
    else:  # one record for the whole list: the counts, no tenant ids
        access.record(
            runtime, None, deliveries=len(rows), tenants=len({r["tenant_id"] for r in rows})
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no deliveries" + (" with these filters" if args.tenant or args.status else ""))
    for item, row in zip(items, rows, strict=True):
        error = f"  {row['error']}" if row["error"] else ""
        when = item.sent_at or item.scheduled_for
        print(
            f"{row['id']}  {_minute(when)}  tenant {row['tenant_id']}  {row['kind']:<9} "
            f"{row['subject']}  {row['channel']:<7} "
            f"{row['status']:<9} attempts {row['attempts']}{error}"
        )


def _minute(moment) -> str:
    """ "2026-12-03 12:00 UTC": a listing's time, to the minute."""
    if moment is None:
        return "-"
    return moment.astimezone(schedule.zone("UTC")).strftime("%Y-%m-%d %H:%M UTC")


_DELIVERY_FIELDS = (
    "id",
    "tenant_id",
    "kind",
    "subject_id",
    "channel",
    "status",
    "attempts",
    "error",
    "scheduled_for",
    "sent_at",
    "next_attempt_at",
)


def _delivery_row(item, subject: str) -> dict:
    """A delivery as the listing shows it: ids, kinds, what it was about (a scorecard's
    name, an alert's description), outcome; never an address."""
    row = {}
    for name in _DELIVERY_FIELDS:
        value = getattr(item, name, None)
        row[name] = value.isoformat() if hasattr(value, "isoformat") else value
    row["subject"] = subject
    row["when"] = row["sent_at"] or row["scheduled_for"]
    return row
