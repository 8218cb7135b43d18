"""A message as the client reads it: an email (HTML with a plain-text part) or a
Slack-compatible webhook payload.

Nothing in an email is fetched when it is opened: the figures are text, each small chart
is table cells and ``div`` heights, the brand's logo (when it has one) travels inside the
message as an inline part (``cid:``), and there is no tracking pixel and no script. The
one link besides the unsubscribe link is the tenant's dashboard, only when the operator
opted in (``content.dashboard_url``). Every message says how to stop it: a one-time
unsubscribe link in the text and in ``List-Unsubscribe`` with RFC 8058's one-click
``List-Unsubscribe-Post``, so a mail client's own "unsubscribe" works too.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, formataddr, parseaddr

from .content import AlertContent, BrandInfo, Figure, ScorecardContent

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
_DEFAULT_PRIMARY = BrandInfo().primary
_SENTIMENT_COLOURS = {"good": "#15803d", "bad": "#b91c1c", "neutral": "#4b5563"}
_LOGO_CID = "logo@writevue"
#: the small chart's height in pixels, and its bars' width
_CHART_H = 28
_BAR_W = 5
_FONT = "font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif"
PREVIEW_SENDER = "WriteVue <writevue@localhost>"
PREVIEW_TO = "recipient@example.invalid"
PREVIEW_UNSUBSCRIBE = "https://dashboards.example.invalid/unsubscribe/preview"

Content = ScorecardContent | AlertContent

#: headers a mail client reads as a bracketed URL: never folded into RFC 2047 encoded
#: words (``=?utf-8?q?=3Chttps…?=`` is not a URL to a client), which Python's email
#: library does to a value longer than a line with no space to break at
_URL_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
#: RFC 5322's hard limit for a line: a URL header stays on one line up to it
_MAX_LINE = 998


class _Policy(EmailPolicy):
    """The default policy (lines folded at 78), except for ``_URL_HEADERS``, which stay on
    one line of up to 998 characters as RFC 5322 allows."""

    def fold(self, name, value):
        if name.lower() in _URL_HEADERS:
            return super(_Policy, self.clone(max_line_length=_MAX_LINE)).fold(name, value)
        return super().fold(name, value)

    def fold_binary(self, name, value):
        if name.lower() in _URL_HEADERS:
            return super(_Policy, self.clone(max_line_length=_MAX_LINE)).fold_binary(name, value)
        return super().fold_binary(name, value)


#: the policy every message is built, stored, parsed and sent with
POLICY = _Policy()


# -- email --------------------------------------------------------------------------------------


def scorecard_email(
    content: ScorecardContent, *, sender: str, to: str, unsubscribe_url: str, message_id: str
) -> EmailMessage:
    """The scorecard as an email to ``to``: its figures with their comparisons and charts."""
    subject = f"{content.title} · {content.tenant_name} · {content.period_label}"
    intro = f"{content.period_label}, compared with the {content.comparison_label}."
    text_lines = [f"{content.title} · {content.tenant_name}", intro, ""]
    rows = []
    for figure in content.figures:
        text_lines.extend(_figure_text(figure))
        rows.append(_figure_html(figure, content.brand))
    body_html = (
        f'<p style="margin:0 0 16px;color:#4b5563">{_e(intro)}</p>'
        '<table role="presentation" cellpadding="0" cellspacing="0" width="100%" '
        f'style="border-collapse:collapse">{"".join(rows)}</table>'
    )
    return _email(
        content,
        subject=subject,
        heading=content.title,
        text="\n".join(text_lines).rstrip() + "\n",
        body_html=body_html,
        sender=sender,
        to=to,
        unsubscribe_url=unsubscribe_url,
        message_id=message_id,
        why="this scorecard",
    )


def alert_email(
    content: AlertContent, *, sender: str, to: str, unsubscribe_url: str, message_id: str
) -> EmailMessage:
    """The alert as an email: its one sentence, and the days around it as a small chart."""
    subject = f"Alert: {content.label} · {content.tenant_name}"
    body_html = (
        f'<p style="margin:0 0 16px;font-size:16px;line-height:1.5">{_e(content.sentence)}</p>'
        + (_chart(content.series, content.brand, highlight_last=True) if content.series else "")
    )
    return _email(
        content,
        subject=subject,
        heading=f"{content.label}",
        text=f"{content.tenant_name}: {content.sentence}\n",
        body_html=body_html,
        sender=sender,
        to=to,
        unsubscribe_url=unsubscribe_url,
        message_id=message_id,
        why="this alert",
    )


def email(content: Content, *, sender: str, to: str, unsubscribe_url: str, message_id: str):
    """``scorecard_email`` or ``alert_email``, by the content's kind."""
    build = scorecard_email if isinstance(content, ScorecardContent) else alert_email
    return build(
        content, sender=sender, to=to, unsubscribe_url=unsubscribe_url, message_id=message_id
    )


def preview(
    content: Content,
    *,
    sender: str = PREVIEW_SENDER,
    to: str = PREVIEW_TO,
    unsubscribe_url: str = PREVIEW_UNSUBSCRIBE,
) -> str:
    """The email as an .eml file's text (``scorecard preview``): what a recipient would get,
    with a placeholder recipient and unsubscribe link."""
    message = email(
        content, sender=sender, to=to, unsubscribe_url=unsubscribe_url, message_id="preview"
    )
    return message.as_string()


def _email(
    content: Content,
    *,
    subject: str,
    heading: str,
    text: str,
    body_html: str,
    sender: str,
    to: str,
    unsubscribe_url: str,
    message_id: str,
    why: str,
) -> EmailMessage:
    brand = content.brand
    link = content.dashboard_url
    footer_text = (
        (f"\nOpen the dashboard: {link}\n" if link else "")
        + f"\nYou receive {why} from {brand.display_name} about {content.tenant_name}. "
        f"To stop receiving it: {unsubscribe_url}\n"
    )
    message = EmailMessage(policy=POLICY)
    message["Subject"] = _one_line(subject)
    message["From"] = _sender(sender, brand)
    message["To"] = to
    message["Date"] = format_datetime(_now())
    domain = parseaddr(sender)[1].rpartition("@")[2] or "writevue"
    message["Message-ID"] = f"<{message_id}@{domain}>"
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    # RFC 3834: no vacation replies to an automatic message
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text + footer_text)
    message.add_alternative(
        _page(content, heading, body_html, unsubscribe_url, why), subtype="html"
    )
    if brand.logo and brand.logo_type and "/" in brand.logo_type:
        maintype, subtype = brand.logo_type.split("/", 1)
        html_part = message.get_payload()[1]
        html_part.add_related(
            brand.logo,
            maintype=maintype,
            subtype=subtype,
            cid=f"<{_LOGO_CID}>",
            disposition="inline",
            filename=f"logo.{subtype.split('+')[0]}",
        )
    return message


def _page(content: Content, heading: str, body_html: str, unsubscribe_url: str, why: str) -> str:
    brand = content.brand
    primary = _colour(brand.primary)
    logo = (
        f'<img src="cid:{_LOGO_CID}" alt="{_e(brand.display_name)}" height="28" '
        'style="display:block;height:28px;border:0">'
        if brand.logo and brand.logo_type
        else f'<strong style="font-size:15px;color:#ffffff">{_e(brand.display_name)}</strong>'
    )
    link = content.dashboard_url
    button = (
        f'<p style="margin:24px 0 0"><a href="{_e(link)}" style="display:inline-block;'
        f"background:{primary};color:#ffffff;text-decoration:none;padding:10px 16px;"
        'border-radius:6px">Open the dashboard</a></p>'
        if link
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(heading)}</title></head>"
        f'<body style="margin:0;padding:0;background:#f3f4f6;{_FONT};color:#111827">'
        '<table role="presentation" cellpadding="0" cellspacing="0" width="100%" '
        'style="background:#f3f4f6"><tr><td align="center" style="padding:24px 12px">'
        '<table role="presentation" cellpadding="0" cellspacing="0" width="100%" '
        'style="max-width:600px;background:#ffffff;border-radius:8px;overflow:hidden">'
        f'<tr><td style="background:{primary};padding:14px 24px">{logo}</td></tr>'
        '<tr><td style="padding:24px">'
        f'<h1 style="margin:0 0 4px;font-size:20px">{_e(heading)}</h1>'
        f'<p style="margin:0 0 8px;color:#6b7280">{_e(content.tenant_name)}</p>'
        f"{body_html}{button}</td></tr>"
        '<tr><td style="padding:16px 24px;border-top:1px solid #e5e7eb;font-size:12px;'
        'color:#6b7280">'
        f"You receive {_e(why)} from {_e(brand.display_name)} about "
        f"{_e(content.tenant_name)}. "
        f'<a href="{_e(unsubscribe_url)}" style="color:#6b7280">Unsubscribe</a>'
        "</td></tr></table></td></tr></table></body></html>"
    )


def _figure_text(figure: Figure) -> list[str]:
    line = f"{figure.label}: {figure.value_text}"
    if figure.change_text:
        line += f"  ({figure.change_text})"
    lines = [line]
    if figure.goal_text:
        lines.append(f"  {figure.goal_text}")
    return lines


def _figure_html(figure: Figure, brand: BrandInfo) -> str:
    colour = _SENTIMENT_COLOURS.get(figure.sentiment, _SENTIMENT_COLOURS["neutral"])
    change = (
        f'<div style="font-size:13px;color:{colour}">{_e(figure.change_text)}</div>'
        if figure.change_text
        else ""
    )
    goal = (
        f'<div style="font-size:12px;color:#6b7280">{_e(figure.goal_text)}</div>'
        if figure.goal_text
        else ""
    )
    chart = _chart(figure.series, brand) if figure.series else ""
    return (
        '<tr><td style="padding:12px 0;border-bottom:1px solid #f3f4f6;vertical-align:top">'
        f'<div style="font-size:13px;color:#4b5563">{_e(figure.label)}</div>'
        f'<div style="font-size:22px;font-weight:600">{_e(figure.value_text)}</div>'
        f"{change}{goal}</td>"
        '<td align="right" style="padding:12px 0;border-bottom:1px solid #f3f4f6;'
        f'vertical-align:bottom">{chart}</td></tr>'
    )


def _chart(series: Sequence[float | None], brand: BrandInfo, *, highlight_last=False) -> str:
    """A bar per day as table cells: heights in pixels, nothing to load; a day without
    data is an empty cell."""
    values = [v for v in series if v is not None and math.isfinite(v)]
    if not values:
        return ""
    low, high = min(0.0, min(values)), max(0.0, max(values))
    span = (high - low) or 1.0
    primary = _colour(brand.primary)
    cells = []
    last = len(series) - 1
    for index, value in enumerate(series):
        if value is None or not math.isfinite(value):
            bar = ""
        else:
            height = max(1, round((value - low) / span * _CHART_H))
            colour = "#f59e0b" if highlight_last and index == last else primary
            bar = (
                f'<div style="height:{height}px;width:{_BAR_W}px;background:{colour};'
                'font-size:0;line-height:0">&nbsp;</div>'
            )
        cells.append(
            f'<td style="vertical-align:bottom;padding:0 1px;width:{_BAR_W}px;'
            f'height:{_CHART_H}px">{bar}</td>'
        )
    return (
        '<table role="presentation" cellpadding="0" cellspacing="0" aria-hidden="true" '
        f'style="border-collapse:collapse;display:inline-table"><tr>{"".join(cells)}</tr></table>'
    )


# -- webhook ------------------------------------------------------------------------------------


def webhook_payload(content: Content, *, unsubscribe_url: str) -> dict:
    """A Slack-compatible payload: ``text`` (the notification and fallback) and ``blocks``.
    Aggregates only; every text escaped as Slack's mrkdwn needs."""
    if isinstance(content, ScorecardContent):
        title = f"{content.title} · {content.tenant_name}"
        text = f"{title}: " + "; ".join(
            f"{f.label} {f.value_text}" + (f" ({f.change_text})" if f.change_text else "")
            for f in content.figures
        )
        blocks: list[dict] = [
            _header(title),
            _context(
                f"{_m(content.period_label)}, compared with the {_m(content.comparison_label)}"
            ),
        ]
        for figure in content.figures:
            lines = [f"*{_m(figure.label)}*", _m(figure.value_text)]
            if figure.change_text:
                lines[-1] += f" · {_m(figure.change_text)}"
            if figure.goal_text:
                lines.append(_m(figure.goal_text))
            blocks.append(_section("\n".join(lines)))
    else:
        title = f"Alert: {content.label} · {content.tenant_name}"
        text = f"{content.tenant_name}: {content.sentence}"
        blocks = [_header(title), _section(_m(content.sentence))]
    if content.dashboard_url:
        blocks.append(_section(f"<{content.dashboard_url}|Open the dashboard>"))
    blocks.append(
        _context(f"From {_m(content.brand.display_name)} · <{unsubscribe_url}|Stop these messages>")
    )
    return {"text": _m(text)[:3000], "blocks": blocks[:50]}


def _header(text: str) -> dict:
    text = _one_line(text)
    if len(text) > 150:
        text = text[:149] + "…"
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": False}}


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:3000]}]}


# -- helpers ------------------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text or "", quote=True)


def _m(text: str) -> str:
    """Slack mrkdwn's escaping: &, < and > (a < would start a link or a mention)."""
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _colour(value: str) -> str:
    return value if value and _HEX.match(value) else _DEFAULT_PRIMARY


def _one_line(text: str) -> str:
    return " ".join((text or "").split())


def _sender(sender: str, brand: BrandInfo) -> str:
    """The configured address, named as the client knows the sender (the agency's brand)
    unless the operator gave it a name."""
    name, address = parseaddr(sender)
    if name:
        return (
            sender
            if brand.display_name == BrandInfo().display_name
            else formataddr((_one_line(brand.display_name), address))
        )
    return str(Address(display_name=_one_line(brand.display_name), addr_spec=address))


def _now():
    import datetime as dt

    return dt.datetime.now(dt.UTC)


__all__ = [
    "alert_email",
    "email",
    "preview",
    "scorecard_email",
    "webhook_payload",
]
