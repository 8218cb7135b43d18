"""The warehouse schema: registry tables and the aggregate fact table.

Every column that could identify a person or unlock a source is stored encrypted
(``*_ct`` columns hold vault ciphertexts); tokens are stored only as hashes.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on both SQLite and PostgreSQL.

    SQLite keeps no zone, so values are normalised to UTC on the way in and
    marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name_ct: Mapped[bytes] = mapped_column(LargeBinary)
    email_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Connection(Base):
    __tablename__ = "connections"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    auth_kind: Mapped[str] = mapped_column(String(16))
    # Non-secret options such as base_url; secrets live in ``credentials``.
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="active")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_refreshed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index(None, "source", "status"),)


class Credential(Base):
    """One encrypted secret of a connection (an API key, a refresh token, ...)."""

    __tablename__ = "credentials"

    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id"), primary_key=True)
    field: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DashboardLink(Base):
    __tablename__ = "dashboard_links"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SyncCursor(Base):
    """How far a connection's incremental fetch has got; advances with the upsert."""

    __tablename__ = "sync_cursors"

    connection_id: Mapped[str] = mapped_column(ForeignKey("connections.id"), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    value: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    # Counts and ids only: never names, emails, secrets or data.
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    # Why a member of staff did it (--reason): a ticket, not personal data. NULL for events
    # that are no staff access (a client's invite, a token refresh) and for older events.
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)


class Fact(Base):
    """One daily aggregate: the only data from sources that WriteVue keeps.

    The primary key is the whole identity: a tenant's rows lie together and, within
    them, each connection's days in order. A refresh or a check of one connection reads
    and writes one range of the key, and a tenant's view reads one range per connection
    (a tenant has a handful). On SQLite the table is clustered on that key (WITHOUT
    ROWID), so the facts are stored once, not in a table and again in an index. There
    are deliberately no foreign keys: PostgreSQL checks one with a trigger per inserted
    row, which costs more than loading the row itself; the warehouse writes a
    connection's facts only while it holds that connection (see
    ``registry.writable_connections``), and erasure finds the rows by ``tenant_id``.
    """

    __tablename__ = "facts"

    tenant_id: Mapped[str] = mapped_column(String(36))
    connection_id: Mapped[str] = mapped_column(String(36))
    day: Mapped[dt.date] = mapped_column(Date)
    metric: Mapped[str] = mapped_column(String(64))
    # '' when the metric has no breakdown, so the key needs no NULL handling.
    dimension: Mapped[str] = mapped_column(String(128), default="")
    value: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "connection_id", "day", "metric", "dimension"),
        {"sqlite_with_rowid": False},
    )


class OAuthState(Base):
    """A pending OAuth2 authorisation: single-use, short-lived, found by its state's hash."""

    __tablename__ = "oauth_states"

    state_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    source: Mapped[str] = mapped_column(String(64))
    # Set when the authorisation renews an existing connection instead of adding one.
    connection_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Set when the client started it from a connect invite, which completing it spends.
    invite_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    redirect_uri: Mapped[str] = mapped_column(Text)
    code_verifier_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class ConnectInvite(Base):
    """A one-time, expiring link to the client's connect page; found by its token's hash."""

    __tablename__ = "connect_invites"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # The sources offered and their operator-set options (never secrets): the client
    # chooses a source but cannot point a connector at another address.
    sources: Mapped[list] = mapped_column(JSON, default=list)
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Unused since migration 0007 (each OAuth2 state names its invite instead); kept so
    # that older rows still load.
    oauth_state_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    spent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    connection_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


metadata = Base.metadata


class DeletionRequest(Base):
    """A client's erasure request; once carried out, the one record kept of the tenant.

    It holds the tenant id, when erasure was asked for and done, how many rows each
    table lost and how many grants were revoked: never a name, an email, a connection
    id or any data. ``tenant_id`` is deliberately no foreign key: the record outlives
    the tenant row.
    """

    __tablename__ = "deletion_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    requested_by: Mapped[str] = mapped_column(String(200))
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: pending -> running -> deleted -> done, or failed. ``done`` only once every row and
    #: file is gone and verification passed; any other status is resumed by a rerun.
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: table name -> rows removed, plus "staging_files"
    removed: Mapped[dict] = mapped_column(JSON, default=dict)
    #: counts only: {"attempted": n, "revoked": n, "failed": n, "unsupported": n}
    revocations: Mapped[dict] = mapped_column(JSON, default=dict)
    verified: Mapped[bool | None] = mapped_column(nullable=True)
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: what is left for the operator, by source and kind only (no ids): grants whose
    #: revocation failed (with the retry command) and keys or passwords the client
    #: should revoke at the provider
    actions: Mapped[list] = mapped_column(JSON, default=list)
    #: while the erasure runs: every identifier to search for (connection, link and
    #: invite ids, the contact fields' plaintext), encrypted; cleared once verified
    scope_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: grants whose revocation failed: what a retry needs (source, endpoint options,
    #: tokens), encrypted; cleared once revoked or the operator confirms it was
    retry_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: the kind of failure (an exception type), never a message that could hold data
    error: Mapped[str | None] = mapped_column(String(200), nullable=True)


class TrendView(Base):
    """Dashboard views of one UTC day counted along one dimension, from the access logs.

    Aggregate only: no IP, no link id, no tenant; nothing joins a row to a client or
    to a visitor. ``dimension`` is browser, platform or referrer_domain.
    """

    __tablename__ = "trend_views"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    dimension: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)
    views: Mapped[int] = mapped_column(Integer)


class TrendInteraction(Base):
    """One UTC day of dashboard use across all clients: views, interactions, exports."""

    __tablename__ = "trend_interactions"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    views: Mapped[int] = mapped_column(Integer)
    interactions: Mapped[int] = mapped_column(Integer)
    exports: Mapped[int] = mapped_column(Integer)
    interactions_per_view: Mapped[float] = mapped_column(Double)
    #: when the day's logs were last rolled up; log retention compares it with the files
    rolled_up_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Brand(Base):
    """An agency's white label: the name, logo and colours a client sees instead of
    WriteVue's. Agency data, not a client's: no tenant id (tenants and templates point
    to it). The logo is kept as base64 text, so every dashboard process serves it."""

    __tablename__ = "brands"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    #: the operator's handle for it (`writevue brand …`)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    #: what clients see ("Northwind Analytics")
    display_name: Mapped[str] = mapped_column(String(200))
    logo_b64: Mapped[str | None] = mapped_column(Text, nullable=True)
    logo_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    #: primary, accent, background, text: "#rrggbb"
    colors: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DashboardTemplate(Base):
    """A dashboard layout an operator applies to many tenants (see
    ``writevue_pipelines.templates``): sections of metrics, calculated metrics, chart
    types and the default comparison, validated and kept as JSON."""

    __tablename__ = "dashboard_templates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    definition: Mapped[dict] = mapped_column(JSON)
    brand_id: Mapped[str | None] = mapped_column(ForeignKey("brands.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TenantSettings(Base):
    """How one tenant's dashboard looks: its template and brand (none: the automatic
    layout and the default look), locale, comparison and per-metric polarity."""

    __tablename__ = "tenant_settings"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    template_id: Mapped[str | None] = mapped_column(
        ForeignKey("dashboard_templates.id"), nullable=True
    )
    brand_id: Mapped[str | None] = mapped_column(ForeignKey("brands.id"), nullable=True)
    #: thousands and decimal separators: "en", "de", "fr", … (default en)
    locale: Mapped[str] = mapped_column(String(16), default="en")
    #: "previous" or "last_year"; None: the template's, else the previous period
    comparison: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: metric ref ("source.metric") -> "up_good", "up_bad" or "neutral"
    polarity: Mapped[dict] = mapped_column(JSON, default=dict)
    #: the IANA time zone scorecards are scheduled in ("Europe/Berlin"); default UTC
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    #: opted in: the dashboard link put into this tenant's messages (a link made for
    #: them, its token encrypted); None: messages carry no link
    message_link_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    message_link_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Goal(Base):
    """A target for one of a tenant's metrics: per calendar period ("month", "quarter",
    "year": reach ``target`` within each) or by a date ("by_date": reach ``target``
    by ``due_on``, a level for a gauge or a total since ``starts_on`` for a counter)."""

    __tablename__ = "goals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    #: a metric ref ("stripe.gross_volume") or a calculated metric's name in the template
    metric: Mapped[str] = mapped_column(String(200))
    #: one dimension value ("eur", "acme/api"), or "" for the metric's total
    dimension: Mapped[str] = mapped_column(String(255), default="")
    period: Mapped[str] = mapped_column(String(16))
    target: Mapped[float] = mapped_column(Double)
    starts_on: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    due_on: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Scorecard(Base):
    """A tenant's scheduled summary: up to 15 metrics over a period, compared with the
    period before, the same period last year or their goals, sent on a cadence at a
    local time (see ``writevue_pipelines.notifications``)."""

    __tablename__ = "scorecards"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    #: the operator's handle ("Monday summary"); shown as the message's title
    name: Mapped[str] = mapped_column(String(100))
    #: metric refs, in order: "stripe.gross_volume", "github.stars[acme/api]", "calc.aov"
    metrics: Mapped[list] = mapped_column(JSON, default=list)
    #: yesterday | last_7_days | last_30_days | week_to_date | month_to_date | last_week
    #: | last_month
    period: Mapped[str] = mapped_column(String(16))
    #: previous | last_year | goal
    comparison: Mapped[str] = mapped_column(String(16))
    #: daily | weekly | monthly
    cadence: Mapped[str] = mapped_column(String(16))
    #: weekly: 0 (Monday) … 6; monthly: the day of the month (1 … 28)
    weekday: Mapped[int | None] = mapped_column(Integer, nullable=True)
    day_of_month: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: "HH:MM" in the tenant's time zone (tenant_settings.timezone)
    send_at: Mapped[str] = mapped_column(String(5))
    #: the next scheduled send, UTC; advanced when a send is scheduled
    next_due_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    paused_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AlertRule(Base):
    """A condition on one of a tenant's metrics: above or below a threshold, a change of
    more than a percentage against the period before, or an anomaly (a value its own
    history does not predict). It fires once per episode: when the condition starts to
    hold, not again until it has stopped holding."""

    __tablename__ = "alert_rules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    metric: Mapped[str] = mapped_column(String(200))
    dimension: Mapped[str] = mapped_column(String(255), default="")
    #: above | below | change | anomaly
    condition: Mapped[str] = mapped_column(String(16))
    #: above/below: the value; change: the percentage (20 for ±20%); anomaly: the robust
    #: z-score beyond which a value is anomalous (default 3.5)
    threshold: Mapped[float | None] = mapped_column(Double, nullable=True)
    #: the value judged: the last whole day (1) or the last 7 whole days (7)
    window_days: Mapped[int] = mapped_column(Integer, default=1)
    #: ok | firing
    state: Mapped[str] = mapped_column(String(16), default="ok")
    #: the day the current episode started (state firing)
    firing_since: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    #: the last whole day evaluated, and the value judged then
    last_day: Mapped[dt.date | None] = mapped_column(Date, nullable=True)
    last_value: Mapped[float | None] = mapped_column(Double, nullable=True)
    paused_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationRecipient(Base):
    """Where one scorecard's or alert's messages go: an email address or a webhook URL,
    both encrypted (a webhook URL is a secret). ``unsubscribed_at`` stops deliveries."""

    __tablename__ = "notification_recipients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    scorecard_id: Mapped[str | None] = mapped_column(
        ForeignKey("scorecards.id"), nullable=True, index=True
    )
    alert_id: Mapped[str | None] = mapped_column(
        ForeignKey("alert_rules.id"), nullable=True, index=True
    )
    #: email | webhook
    channel: Mapped[str] = mapped_column(String(16))
    #: vault ciphertext bound to (tenant, None, "recipient.<id>")
    address_ct: Mapped[bytes] = mapped_column(LargeBinary)
    #: ``notifications.suppression.address_hash`` of the address: matches a suppression
    #: without decrypting (None on rows made before migration 0012)
    address_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class NotificationDelivery(Base):
    """One message to one recipient, scheduled once: its idempotency key (the scorecard
    or alert, the scheduled time or episode, the recipient) is unique, so a scheduler
    that asks twice gets one row, and a retry sends the stored message again.

    Counts, ids and outcome kinds only in clear: the rendered message (figures, its
    unsubscribe token, a dashboard link when the tenant opted in) is encrypted and
    cleared once the message is sent or given up."""

    __tablename__ = "notification_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    #: scorecard | alert | test
    kind: Mapped[str] = mapped_column(String(16))
    #: the scorecard's or alert rule's id (kept after it is removed: no foreign key)
    subject_id: Mapped[str] = mapped_column(String(36))
    recipient_id: Mapped[str] = mapped_column(String(36))
    #: email | webhook
    channel: Mapped[str] = mapped_column(String(16))
    scheduled_for: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    #: pending | retrying | sent | bounced | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: the last failure's kind ("smtp 451", "http 503", "timeout", "refused"), never an
    #: address or a server's text
    error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: the rendered message, encrypted; None once sent, bounced, failed or cancelled
    message_ct: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: ``notifications.suppression.address_hash`` of where it goes, set when queued: a
    #: token spent after its scorecard (and recipient row) was removed still says whom to
    #: suppress, and a suppression cancels it without decrypting
    address_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    #: the hash of the message's one-time unsubscribe token
    unsubscribe_sha256: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    unsubscribe_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: the Dagster run (or "cli") that last tried it
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class NotificationSuppression(Base):
    """An address a tenant's messages no longer go to, whatever scorecard or alert names
    it: the person unsubscribed, or the server refused it for good (an SMTP 5xx, a
    webhook's 404 or 410). Kept when scorecards and alerts are removed, so adding the
    address again does not start its messages again. Only a hash of the address is kept
    (``notifications.suppression.address_hash``), never the address."""

    __tablename__ = "notification_suppressions"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    #: email | webhook
    channel: Mapped[str] = mapped_column(String(16))
    #: sha256 of "<tenant id>|<channel>|<address>" (an email lower-cased, both stripped)
    address_sha256: Mapped[str] = mapped_column(String(64))
    #: unsubscribed | bounced
    reason: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (PrimaryKeyConstraint("tenant_id", "channel", "address_sha256"),)


class MetricAnomaly(Base):
    """A day on which a tenant's metric lay outside what its own history predicts
    (median and MAD per weekday, ``notifications.anomaly``): the dashboard marks it on
    the chart and anomaly alerts fire on it. Aggregates only."""

    __tablename__ = "metric_anomalies"

    tenant_id: Mapped[str] = mapped_column(String(36))
    metric: Mapped[str] = mapped_column(String(200))
    dimension: Mapped[str] = mapped_column(String(255), default="")
    day: Mapped[dt.date] = mapped_column(Date)
    value: Mapped[float] = mapped_column(Double)
    expected: Mapped[float] = mapped_column(Double)
    low: Mapped[float] = mapped_column(Double)
    high: Mapped[float] = mapped_column(Double)
    detected_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (PrimaryKeyConstraint("tenant_id", "metric", "dimension", "day"),)


class GuessFailure(Base):
    """A recent failed token lookup on a surface of the dashboard server (links, invites,
    unsubscribe), shared by every dashboard process: ``dashboard_server.limiter``.

    Each address (its limiter key) has a ring of ``guess_limit`` slots per surface, the
    latest failure overwriting the oldest, so a flood adds no rows; rows older than
    the limiter's window are swept. No address is stored: ``key_hmac`` is a keyed hash
    of the limiter key. Nothing here belongs to a tenant.
    """

    __tablename__ = "guess_failures"

    #: links | invites | unsubscribe
    surface: Mapped[str] = mapped_column(String(16))
    #: HMAC-SHA256 of the limiter key (an IPv4 address, an IPv6 /64), truncated
    key_hmac: Mapped[str] = mapped_column(String(32))
    #: the failure's place in the ring: ``seq`` modulo ``guess_limit``
    slot: Mapped[int] = mapped_column(Integer)
    #: the failure's number, counting this key's failures on this surface
    seq: Mapped[int] = mapped_column(BigInteger)
    #: when it failed (Unix seconds, the dashboard host's clock)
    at: Mapped[float] = mapped_column(Double, index=True)
    #: when the failure this one replaced in its slot failed: ``guess_limit`` failures ago
    previous_at: Mapped[float | None] = mapped_column(Double, nullable=True)

    __table_args__ = (PrimaryKeyConstraint("surface", "key_hmac", "slot"),)
