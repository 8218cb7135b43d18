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

import base64
import binascii
import functools
import html
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
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


@dataclass(frozen=True)
class _Parts:
    """What an email says, before it is addressed: its subject, heading, plain text and
    HTML body, and why the recipient gets it."""

    subject: str
    heading: str
    text: str
    body_html: str
    why: str


def _scorecard_parts(content: ScorecardContent) -> _Parts:
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
    text = "\n".join(text_lines).rstrip() + "\n"
    return _Parts(subject, content.title, text, body_html, "this scorecard")


def _alert_parts(content: AlertContent) -> _Parts:
    subject = f"Alert: {content.label} · {content.tenant_name}"
    body_html = (
        f'<p style="margin:0 0 16px;font-size:16px;line-height:1.5">{_e(content.sentence)}</p>'
        + (_chart(content.series, content.brand, highlight_last=True) if content.series else "")
    )
    text = f"{content.tenant_name}: {content.sentence}\n"
    return _Parts(subject, f"{content.label}", text, body_html, "this alert")


def scorecard_email(
    content: ScorecardContent, *, sender: str, to: str, unsubscribe_url: str, message_id: str
) -> EmailMessage:
    """The scorecard as an email to ``to``: its figures with their comparisons and charts."""
    return email(
        content, sender=sender, to=to, unsubscribe_url=unsubscribe_url, message_id=message_id
    )


def alert_email(
    content: AlertContent, *, sender: str, to: str, unsubscribe_url: str, message_id: str
) -> EmailMessage:
    """The alert as an email: its one sentence, and the days around it as a small chart."""
    return email(
        content, sender=sender, to=to, unsubscribe_url=unsubscribe_url, message_id=message_id
    )


def email(
    content: Content, *, sender: str, to: str, unsubscribe_url: str, message_id: str
) -> EmailMessage:
    """The message (``email_bytes``) as an ``EmailMessage``."""
    raw = email_bytes(
        content, sender=sender, to=to, unsubscribe_url=unsubscribe_url, message_id=message_id
    )
    return BytesParser(_class=EmailMessage, policy=POLICY).parsebytes(raw)


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


def email_bytes(
    content: Content, *, sender: str, to: str, unsubscribe_url: str, message_id: str
) -> bytes:
    """The email to ``to`` as it goes over SMTP (CRLF line ends, 7-bit): headers folded
    within 78 characters (``List-Unsubscribe`` whole on one line, as a mail client reads
    it), a text and an HTML part (UTF-8, quoted-printable), the brand's logo as an inline
    part of the HTML.

    Written out directly rather than built with ``email.message`` and flattened, which
    costs some fifty times more for the same message; ``email`` parses it back for whoever
    needs an ``EmailMessage`` (a preview), and the tests read what an SMTP server got."""
    parts = (
        _scorecard_parts(content)
        if isinstance(content, ScorecardContent)
        else _alert_parts(content)
    )
    brand = content.brand
    link = content.dashboard_url
    footer_text = (
        (f"\nOpen the dashboard: {link}\n" if link else "")
        + f"\nYou receive {parts.why} from {brand.display_name} about {content.tenant_name}. "
        f"To stop receiving it: {unsubscribe_url}\n"
    )
    domain = _parse(sender)[1].rpartition("@")[2] or "writevue"
    boundary = f"=_wv_{secrets.token_hex(16)}"
    headers = [
        _mail_header("Subject", _one_line(parts.subject)),
        _address_header("From", _sender(sender, brand)),
        _address_header("To", to),
        "Date: " + format_datetime(_now()),
        _mail_header("Message-ID", f"<{message_id}@{domain}>"),
        # on one line, however long (``_URL_HEADERS``): a mail client reads it as a URL
        f"List-Unsubscribe: <{unsubscribe_url}>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        # RFC 3834: no vacation replies to an automatic message
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative;{_CRLF} boundary="{boundary}"',
    ]
    page = _page(content, parts.heading, parts.body_html, unsubscribe_url, parts.why)
    html_part = _html_part(page)
    if brand.logo and brand.logo_type and "/" in brand.logo_type:
        related = f"=_wv_{secrets.token_hex(16)}"
        logo_type = _one_line(brand.logo_type)
        extension = logo_type.split("/", 1)[1].split("+")[0]
        logo = base64.encodebytes(brand.logo).decode("ascii").replace("\n", _CRLF)
        html_part = (
            f'Content-Type: multipart/related;{_CRLF} boundary="{related}"{_CRLF}{_CRLF}'
            f"--{related}{_CRLF}{html_part}{_CRLF}"
            f"--{related}{_CRLF}"
            f"Content-Type: {logo_type}{_CRLF}"
            f"Content-Transfer-Encoding: base64{_CRLF}"
            f"Content-ID: <{_LOGO_CID}>{_CRLF}"
            f'Content-Disposition: inline; filename="logo.{extension}"{_CRLF}{_CRLF}'
            f"{logo}{_CRLF}--{related}--{_CRLF}"
        )
    body = (
        f"--{boundary}{_CRLF}{_text_part('plain', parts.text + footer_text)}{_CRLF}"
        f"--{boundary}{_CRLF}{html_part}{_CRLF}--{boundary}--{_CRLF}"
    )
    return (_CRLF.join(headers) + _CRLF + _CRLF + body).encode("ascii")


_CRLF = "\r\n"
#: UTF-8 bytes per encoded word (``=?utf-8?b?…?=`` of at most 75 characters)
_WORD_BYTES = 45


#: where a line of HTML may end: after a table cell (no text there to change)
_LINE_END = "</td>"
#: RFC 5322's longest line, less its CRLF
_LONGEST = 998


def _html_part(page: str) -> str:
    """The HTML part as 7-bit text: every character beyond ASCII as a character reference
    (``&#8364;``), lines ended after table cells, each within RFC 5322's 998
    characters: a few dozen lines where quoted-printable makes hundreds, which every SMTP
    server on the way reads one by one. A page that cannot be cut so (a cell that long)
    goes quoted-printable."""
    pieces = page.encode("ascii", "xmlcharrefreplace").decode("ascii").split(_LINE_END)
    pieces = [piece + _LINE_END for piece in pieces[:-1]] + pieces[-1:]
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + len(piece) <= _LONGEST:
            lines[-1] += piece
        elif len(piece) <= _LONGEST:
            lines.append(piece)
        else:
            return _text_part("html", page)
    return (
        f'Content-Type: text/html; charset="utf-8"{_CRLF}'
        f"Content-Transfer-Encoding: 7bit{_CRLF}{_CRLF}" + _CRLF.join(lines) + _CRLF
    )


def _text_part(subtype: str, text: str) -> str:
    """A text part: UTF-8, quoted-printable (lines of at most 76 characters)."""
    data = text.replace("\r\n", "\n").encode("utf-8")
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True).decode("ascii")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}'
        f"Content-Transfer-Encoding: quoted-printable{_CRLF}{_CRLF}" + encoded.replace("\n", _CRLF)
    )


def _mail_header(name: str, value: str) -> str:
    """``name: value`` folded within 78 characters (RFC 5322) where it can be: at spaces
    when it is ASCII (a word too long for the first line starts the next), otherwise as
    RFC 2047 encoded words (UTF-8, base64), no character split across two."""
    value = _one_line(value)
    if value.isascii():
        lines = [f"{name}:"]
        for word in value.split(" "):
            if len(lines[-1]) + 1 + len(word) <= 78:
                lines[-1] += " " + word
            elif lines[-1] == f"{name}:" and len(lines) == 1 and len(word) > 77:
                lines[-1] += " " + word  # no line can hold it: as it is
            else:
                lines.append(" " + word)
        if lines[0] == f"{name}:":  # the first word went to the next line
            return f"{name}:" + _CRLF + _CRLF.join(lines[1:])
        return _CRLF.join(lines)
    # each encoded word is 12 characters and 4 for every 3 bytes: 42 bytes after the
    # name on the first line, 45 on each of the next (at most 78 characters a line)
    room = (78 - len(name) - 2 - 12) // 4 * 3
    words, chunk = [], ""
    for char in value:
        if chunk and len((chunk + char).encode("utf-8")) > room:
            words.append(chunk)
            chunk, room = "", _WORD_BYTES
        chunk += char
    words.append(chunk)
    encoded = [f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words]
    return f"{name}: " + f"{_CRLF} ".join(encoded)


def _address_header(name: str, value: str) -> str:
    """An address header (one address, perhaps named): a name with specials quoted
    (``formataddr``), one that is not ASCII as RFC 2047 encoded words."""
    display, address = _parse(_one_line(value))
    if not address:
        return _mail_header(name, value)
    if not display:
        return _mail_header(name, address)
    if display.isascii():
        return _mail_header(name, formataddr((display, address)))
    named = _mail_header(name, display)
    last = named.rsplit(_CRLF, 1)[-1]
    joint = " " if len(last) + 3 + len(address) <= 78 else _CRLF + " "
    return f"{named}{joint}<{address}>"


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


_CELL = f'<td style="vertical-align:bottom;padding:0 1px;width:{_BAR_W}px;height:{_CHART_H}px">'
_BAR = (
    '<div style="height:{}px;width:' + str(_BAR_W) + "px;background:{};"
    'font-size:0;line-height:0">&nbsp;</div>'
)


@functools.lru_cache(maxsize=512)
def _cell(height: int, colour: str) -> str:
    """One day's bar (a few heights and colours make every chart)."""
    return _CELL + _BAR.format(height, colour) + "</td>"


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
            cells.append(_CELL + "</td>")
            continue
        height = max(1, round((value - low) / span * _CHART_H))
        colour = "#f59e0b" if highlight_last and index == last else primary
        cells.append(_cell(height, colour))
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
    name, address = _parse(sender)
    if name:
        return (
            sender
            if brand.display_name == BrandInfo().display_name
            else formataddr((_one_line(brand.display_name), address))
        )
    return str(Address(display_name=_one_line(brand.display_name), addr_spec=address))


@functools.lru_cache(maxsize=1024)
def _parse(value: str) -> tuple[str, str]:
    """``parseaddr``, once per address a process sends from or to (a run's thousand
    messages come from one sender)."""
    return parseaddr(value)


def _now():
    import datetime as dt

    return dt.datetime.now(dt.UTC)


__all__ = [
    "alert_email",
    "email",
    "email_bytes",
    "preview",
    "scorecard_email",
    "webhook_payload",
]
