"""What a message says, as data: every figure already formatted in the tenant's locale.

``evaluate`` fills these from the warehouse's aggregates; ``messages`` turns them into
an email or a webhook payload. Nothing here is personal beyond the tenant's own name
(the client's business, shown to the client) and the dashboard link the operator opted
in to; recipients' addresses are never part of the content.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Figure:
    """One metric of a scorecard over its period, with its comparison."""

    ref: str
    dimension: str
    label: str
    value: float | None
    #: compact, in the tenant's locale: "€12.9k", "1,204", "4.2%"; "no data" when None
    value_text: str
    #: the figure compared with (previous period, last year, or the goal's target)
    previous: float | None = None
    previous_text: str = ""
    #: the change as a fraction (0.12 for +12%); None when there is nothing to compare
    change: float | None = None
    #: "+12.3% vs previous period", "62% of the goal (€50k this month)", or why none
    change_text: str = ""
    #: good | bad | neutral: the change read with the metric's polarity
    sentiment: str = "neutral"
    #: daily values over the period (None: no data that day), for the small chart
    series: tuple[float | None, ...] = ()
    #: a goal's progress ("€31k of €50k (62%) · on track"), when the metric has a goal
    goal_text: str = ""


@dataclass(frozen=True)
class BrandInfo:
    """Who the message is from as the client sees it: the agency's brand, or WriteVue."""

    display_name: str = "WriteVue"
    #: "#rrggbb"
    primary: str = "#2563eb"
    #: the logo's bytes and MIME type, sent as an inline part (nothing fetched on open)
    logo: bytes | None = None
    logo_type: str | None = None


@dataclass(frozen=True)
class ScorecardContent:
    tenant_id: str
    scorecard_id: str
    #: the scorecard's name ("Monday summary")
    title: str
    #: the client's name as its dashboard shows it
    tenant_name: str
    period_start: dt.date
    period_end: dt.date
    #: "Mon 23 Nov to Sun 29 Nov 2026"
    period_label: str
    #: "previous period", "same period last year", "goal"
    comparison_label: str
    figures: tuple[Figure, ...]
    brand: BrandInfo = field(default_factory=BrandInfo)
    #: the dashboard link, only when the operator opted in for this tenant
    dashboard_url: str | None = None
    #: the tenant's locale ("en", "de", …), for anything messages format themselves
    locale: str = "en"


@dataclass(frozen=True)
class AlertContent:
    tenant_id: str
    alert_id: str
    tenant_name: str
    #: the metric as cards show it ("Gross volume (EUR)")
    label: str
    #: above | below | change | anomaly
    condition: str
    #: the last whole day judged (the window's last day)
    day: dt.date
    value: float | None
    #: one sentence with the figures: "Gross volume (EUR) was €1,204 on Thu 3 Dec 2026,
    #: below your threshold of €2,000."
    sentence: str
    #: the days around it, for the small chart (the judged day last)
    series: tuple[float | None, ...] = ()
    brand: BrandInfo = field(default_factory=BrandInfo)
    dashboard_url: str | None = None
    locale: str = "en"


# -- stored until sent ------------------------------------------------------------------------
# A queued message keeps its content, not its rendering (``delivery``): the figures as text
# and numbers, rendered for each recipient when it is sent. Stored encrypted, like the
# rendered message it replaces.


def _brand_json(brand: BrandInfo) -> dict:
    return {
        "display_name": brand.display_name,
        "primary": brand.primary,
        "logo": None if brand.logo is None else base64.b64encode(brand.logo).decode(),
        "logo_type": brand.logo_type,
    }


def _brand_of(data: dict) -> BrandInfo:
    logo = data.get("logo")
    return BrandInfo(
        display_name=data["display_name"],
        primary=data["primary"],
        logo=None if logo is None else base64.b64decode(logo),
        logo_type=data.get("logo_type"),
    )


@functools.cache
def _names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


def _fields(item) -> dict:
    """The dataclass's fields by name, in order (its ``__dict__`` holds exactly them)."""
    found = vars(item)
    if len(found) == len(_names(type(item))):
        return dict(found)
    return {name: getattr(item, name) for name in _names(type(item))}


def to_json(content: ScorecardContent | AlertContent) -> dict:
    """The content as JSON-safe data (``from_json`` reads it back equal)."""
    data = _fields(content)
    data["brand"] = _brand_json(content.brand)
    if isinstance(content, ScorecardContent):
        data["kind"] = "scorecard"
        data["period_start"] = content.period_start.isoformat()
        data["period_end"] = content.period_end.isoformat()
        data["figures"] = [
            {**_fields(figure), "series": list(figure.series)} for figure in content.figures
        ]
    else:
        data["kind"] = "alert"
        data["day"] = content.day.isoformat()
        data["series"] = list(content.series)
    return data


def from_json(data: dict) -> ScorecardContent | AlertContent:
    data = dict(data)
    kind = data.pop("kind")
    data["brand"] = _brand_of(data["brand"])
    if kind == "scorecard":
        data["period_start"] = dt.date.fromisoformat(data["period_start"])
        data["period_end"] = dt.date.fromisoformat(data["period_end"])
        data["figures"] = tuple(
            Figure(**{**figure, "series": tuple(figure["series"])}) for figure in data["figures"]
        )
        return ScorecardContent(**data)
    data["day"] = dt.date.fromisoformat(data["day"])
    data["series"] = tuple(data["series"])
    return AlertContent(**data)
