"""How one tenant's dashboard is shown: locale (number separators), comparison, polarity
overrides, and which template and brand it uses (table ``tenant_settings``); and, for its
scorecards and alerts, its time zone and whether its messages carry a dashboard link.

A tenant without a row has the defaults: locale "en", the template's comparison (else
the previous period), each metric's own polarity, the automatic layout, no brand, UTC
and no link in messages. Templates are applied through ``writevue_pipelines.templates``;
this module sets the rest.

The link in messages is opt-in per tenant (an email is forwarded more often than a URL
is shared): turning it on makes a dashboard link labelled "in messages" whose token is
kept encrypted so that each message can carry it; turning it off revokes that link.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import links, registry
from .errors import InvalidInput
from .models import Scorecard, TenantSettings, utcnow
from .notifications import schedule
from .templates import COMPARISONS, POLARITIES, check_metric_ref, template_for_tenant

#: locale -> (thousands separator, decimal separator)
LOCALES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "en": (",", "."),
        "de": (".", ","),
        "fr": ("\u202f", ","),
        "es": (".", ","),
        "it": (".", ","),
        "nl": (".", ","),
        "pt": (".", ","),
        "sv": ("\u00a0", ","),
        "ch": ("'", "."),
    }
)
DEFAULT_LOCALE = "en"
#: the most polarity overrides one tenant may have
MAX_POLARITY = 200

_UNSET: Any = object()


@dataclass(frozen=True)
class DashboardSettings:
    locale: str = DEFAULT_LOCALE
    #: "previous" or "last_year"; None: the template's, else the previous period
    comparison: str | None = None
    #: metric ref -> "up_good", "up_bad" or "neutral", overriding the metric's own
    polarity: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    template_id: str | None = None
    brand_id: str | None = None
    #: the IANA time zone its scorecards are scheduled in
    timezone: str = "UTC"
    #: whether its messages carry a dashboard link (opted in by the operator)
    links_in_messages: bool = False

    @property
    def separators(self) -> tuple[str, str]:
        return separators(self.locale)


def separators(locale: str) -> tuple[str, str]:
    """(thousands, decimal) separators of a locale."""
    try:
        return LOCALES[locale]
    except (KeyError, TypeError):
        raise InvalidInput(_bad_locale(locale)) from None


def _bad_locale(locale: Any) -> str:
    shown = str(locale)[:20]
    return f'locale "{shown}" is not one of {", ".join(LOCALES)}'


def get_settings(session: Session, tenant_id: str) -> DashboardSettings:
    """The tenant's settings; the defaults when it has none."""
    row = session.get(TenantSettings, tenant_id)
    if row is None:
        return DashboardSettings()
    locale = row.locale if row.locale in LOCALES else DEFAULT_LOCALE
    return DashboardSettings(
        locale=locale,
        comparison=row.comparison if row.comparison in COMPARISONS else None,
        polarity=MappingProxyType(
            {k: v for k, v in sorted((row.polarity or {}).items()) if v in POLARITIES}
        ),
        template_id=row.template_id,
        brand_id=row.brand_id,
        timezone=_stored_timezone(row.timezone),
        links_in_messages=row.message_link_id is not None,
    )


def _stored_timezone(name: str | None) -> str:
    try:
        return schedule.check_timezone(name or "UTC")
    except InvalidInput:
        return "UTC"


def check_tenant_ref(
    session: Session, tenant_id: str, metric: str, dimension: str | None = None
) -> None:
    """Refuse a metric ref the tenant cannot have: see ``templates.check_metric_ref``;
    ``calc.<name>`` must be a calculated metric of the tenant's template."""
    template = template_for_tenant(session, tenant_id)
    names = [calc.name for calc in template.calculated] if template else []
    check_metric_ref(
        metric,
        dimension,
        calculated=names,
        calc_home="the tenant's template" if template else "the tenant's template (it has none)",
    )


def update_settings(
    session: Session,
    tenant_id: str,
    *,
    locale: str = _UNSET,
    comparison: str | None = _UNSET,
    polarity_set: Mapping[str, str] | None = None,
    polarity_clear: Iterable[str] | None = None,
    timezone: str = _UNSET,
) -> DashboardSettings:
    """Change some of a tenant's settings (the others stay); the result.

    ``comparison=None`` goes back to the template's. ``polarity_set`` adds or replaces
    overrides (metric ref -> polarity); ``polarity_clear`` removes some. ``timezone``
    (IANA, "Europe/Berlin") reschedules every scorecard of the tenant. Everything is
    checked before anything changes.
    """
    tenant_id = registry.require_tenant(session, tenant_id)
    if timezone is not _UNSET:
        schedule.check_timezone(timezone)
    if locale is not _UNSET and locale not in LOCALES:
        raise InvalidInput(_bad_locale(locale) + ".")
    if comparison is not _UNSET and comparison is not None and comparison not in COMPARISONS:
        raise InvalidInput(
            f'comparison "{str(comparison)[:20]}" is not one of {", ".join(COMPARISONS)}.'
        )
    row = session.get(TenantSettings, tenant_id)
    polarity = dict(row.polarity or {}) if row is not None else {}
    for metric in polarity_clear or ():
        polarity.pop(metric, None)
    for metric, value in (polarity_set or {}).items():
        try:
            check_tenant_ref(session, tenant_id, metric)
        except InvalidInput as exc:
            raise InvalidInput(f"polarity of {str(metric)[:80]}: {exc}.") from None
        if value not in POLARITIES:
            raise InvalidInput(
                f"polarity of {metric}: {str(value)[:20]!r} is not up_good, up_bad or neutral."
            )
        polarity[metric] = value
    if len(polarity) > MAX_POLARITY:
        raise InvalidInput(f"A tenant has at most {MAX_POLARITY} polarity overrides.")
    row = row if row is not None else _new_row(session, tenant_id)
    if locale is not _UNSET:
        row.locale = locale
    if comparison is not _UNSET:
        row.comparison = comparison
    row.polarity = polarity
    rescheduled = timezone is not _UNSET and timezone != row.timezone
    if timezone is not _UNSET:
        row.timezone = timezone
    row.updated_at = utcnow()
    session.flush()
    if rescheduled:
        _reschedule(session, tenant_id, timezone)
    return get_settings(session, tenant_id)


def _new_row(session: Session, tenant_id: str) -> TenantSettings:
    row = TenantSettings(tenant_id=tenant_id, locale=DEFAULT_LOCALE, polarity={}, timezone="UTC")
    session.add(row)
    return row


def _reschedule(session: Session, tenant_id: str, timezone: str) -> None:
    """Every scorecard of the tenant not yet due, due at its local send time in
    ``timezone`` from now. One already due (not sent yet) stays due: moved past now, it
    would skip a send."""
    now = utcnow()
    for card in session.scalars(
        select(Scorecard).where(Scorecard.tenant_id == tenant_id, Scorecard.next_due_at > now)
    ):
        card.next_due_at = schedule.next_due(
            card.cadence,
            weekday=card.weekday,
            day_of_month=card.day_of_month,
            send_at=card.send_at,
            timezone=timezone,
            after=now,
        )
    session.flush()


#: what the link put into messages is called among the tenant's dashboard links
MESSAGE_LINK_LABEL = "in messages"


def _message_link_binding(tenant_id: str):
    from .vault import Binding

    return Binding(tenant_id, None, "message_link")


def message_link_id(session: Session, tenant_id: str) -> str | None:
    """The id of the dashboard link the tenant's messages carry (None: opted out)."""
    row = session.get(TenantSettings, tenant_id)
    return None if row is None else row.message_link_id


def set_message_link(session: Session, keys, tenant_id: str, on: bool) -> None:
    """Opt the tenant's messages in to a dashboard link, or out.

    On: a link labelled "in messages" is made (unless the token kept from the one made
    before still opens it), its token kept encrypted for the messages; a link whose
    token no longer works (rotated with `writevue link rotate`) is revoked and replaced.
    Off: that link is revoked and forgotten, so a forwarded old message stops opening
    the dashboard too.
    """
    tenant_id = registry.require_tenant(session, tenant_id)
    row = session.get(TenantSettings, tenant_id) or _new_row(session, tenant_id)
    current = None
    if row.message_link_id is not None:
        current = next(
            (
                item
                for item in links.list_links(session, tenant_id)
                if item.id == row.message_link_id
            ),
            None,
        )
    if on:
        if current is not None and _kept_token_live(session, keys, tenant_id, row):
            return
        if current is not None and current.state() == "live":
            links.revoke_link(session, current.id)  # rotated: nobody has its new token
        info, token = links.create_link(session, tenant_id, label=MESSAGE_LINK_LABEL)
        row.message_link_id = info.id
        row.message_link_ct = keys.encrypt(token, _message_link_binding(tenant_id))
    else:
        if current is not None and current.state() == "live":
            links.revoke_link(session, current.id)
        row.message_link_id = None
        row.message_link_ct = None
    row.updated_at = utcnow()
    session.flush()


def _kept_token_live(session: Session, keys, tenant_id: str, row: TenantSettings) -> bool:
    """Whether the token kept for the tenant's messages still opens a live link."""
    from .vault import VaultError

    if row.message_link_ct is None:
        return False
    try:
        token = keys.decrypt_text(row.message_link_ct, _message_link_binding(tenant_id))
    except VaultError:
        return False
    return bool(links.live_token_hashes(session, [links.hash_token(token)]))


__all__ = [
    "LOCALES",
    "DashboardSettings",
    "check_tenant_ref",
    "get_settings",
    "message_link_id",
    "separators",
    "set_message_link",
    "update_settings",
]
