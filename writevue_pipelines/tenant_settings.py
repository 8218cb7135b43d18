"""How one tenant's dashboard is shown: locale (number separators), comparison, polarity
overrides, and which template and brand it uses (table ``tenant_settings``).

A tenant without a row has the defaults: locale "en", the template's comparison (else
the previous period), each metric's own polarity, the automatic layout and no brand.
Templates are applied through ``writevue_pipelines.templates``; this module sets the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sqlalchemy.orm import Session

from . import registry
from .errors import InvalidInput
from .models import TenantSettings, utcnow
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
    )


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
) -> DashboardSettings:
    """Change some of a tenant's settings (the others stay); the result.

    ``comparison=None`` goes back to the template's. ``polarity_set`` adds or replaces
    overrides (metric ref -> polarity); ``polarity_clear`` removes some. Everything is
    checked before anything changes.
    """
    tenant_id = registry.require_tenant(session, tenant_id)
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
    if row is None:
        row = TenantSettings(tenant_id=tenant_id, locale=DEFAULT_LOCALE, polarity={})
        session.add(row)
    if locale is not _UNSET:
        row.locale = locale
    if comparison is not _UNSET:
        row.comparison = comparison
    row.polarity = polarity
    row.updated_at = utcnow()
    session.flush()
    return get_settings(session, tenant_id)


__all__ = [
    "LOCALES",
    "DashboardSettings",
    "check_tenant_ref",
    "get_settings",
    "separators",
    "update_settings",
]
