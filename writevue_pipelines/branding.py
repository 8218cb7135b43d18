"""Brands (white label): the name, logo and colours an agency's clients see instead of WriteVue's.

A brand is agency data, not a client's: it has no tenant id, so erasing a tenant leaves
it alone (the tenant's ``TenantSettings`` row, which points to it, goes). A tenant shows
its own brand (``TenantSettings.brand_id``), else its template's
(``DashboardTemplate.brand_id``), else none: WriteVue's default look.

What is stored is checked first, so the dashboard server can serve it as is:

- the logo is a PNG (by its signature) or an SVG (an XML document whose root is
  ``<svg>`` in the SVG namespace), at most 200 kB. An SVG is refused, never silently
  rewritten, if it holds anything that could run or fetch: ``<script>``, event
  handlers (``on…``), ``<foreignObject>``, animation elements (which can set an
  ``href``), a DOCTYPE or entity, a processing instruction (``xml-stylesheet``), an
  ``href`` to anything but ``#fragment`` or an inline ``data:image/png;base64``, or a
  CSS ``url()`` or ``@import`` pointing elsewhere. The server also sends it with a CSP
  that runs nothing, so the check is the first of two fences;
- colours are ``#rgb`` or ``#rrggbb`` (kept as lower-case ``#rrggbb``), for the roles
  ``primary``, ``accent``, ``background`` and ``text``; text on the background must
  reach WCAG AA (4.5:1), or the brand is refused; a weaker accent is only a warning
  (``color_warnings``);
- the display name is printable text of at most 100 characters.

The logo is kept as base64 text (not a binary column: key rotation treats every
binary column as ciphertext), so every dashboard process can serve it.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import registry
from .errors import InvalidInput, NotFound
from .models import Brand, DashboardTemplate, TenantSettings

MAX_LOGO_BYTES = 200 * 1024
MAX_DISPLAY_NAME = 100
COLOR_ROLES = ("primary", "accent", "background", "text")
#: WriteVue's own colours (assets/theme.css), what a role not given falls back to
DEFAULT_COLORS = {
    "primary": "#2f6fde",
    "accent": "#2f6fde",
    "background": "#f4f6fa",
    "text": "#1d2433",
}
AA_TEXT = 4.5
#: what non-text UI (a link's colour, a button's background against white) should reach
AA_UI = 3.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
LOGO_TYPES = {"image/png": "png", "image/svg+xml": "svg"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
#: SVG elements that can run script, embed another document or change attributes later
_BANNED_ELEMENTS = frozenset(
    {
        "script",
        "foreignobject",
        "iframe",
        "embed",
        "object",
        "audio",
        "video",
        "set",
        "animate",
        "animatemotion",
        "animatetransform",
        "animatecolor",
        "discard",
        "handler",
        "listener",
        "meta",
        "link",
        "base",
    }
)
_SAFE_HREF = re.compile(r"^(?:#[^\s]*|data:image/png;base64,[A-Za-z0-9+/=\s]*)$", re.IGNORECASE)
_CSS_URL = re.compile(r"url\s*\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)
_CSS_ESCAPE = re.compile(r"\\[0-9a-fA-F]|\\\S")


@dataclass(frozen=True)
class BrandInfo:
    id: str
    name: str
    display_name: str
    logo: bytes | None
    logo_type: str | None
    colors: Mapping[str, str]
    created_at: dt.datetime | None = field(default=None, compare=False)
    updated_at: dt.datetime | None = field(default=None, compare=False)

    @property
    def logo_extension(self) -> str | None:
        return LOGO_TYPES.get(self.logo_type or "")

    def color(self, role: str) -> str:
        """The brand's colour for ``role``, else WriteVue's."""
        return self.colors.get(role) or DEFAULT_COLORS[role]


def _info(row: Brand) -> BrandInfo:
    return BrandInfo(
        id=row.id,
        name=row.name,
        display_name=row.display_name,
        logo=base64.b64decode(row.logo_b64) if row.logo_b64 else None,
        logo_type=row.logo_type,
        colors=dict(row.colors or {}),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


# -- checks ------------------------------------------------------------------------------


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not _NAME.match(name):
        raise InvalidInput(
            f"The brand name {name[:40]!r} is not usable: 1 to 100 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (e.g. northwind)."
        )
    return name


def check_display_name(display_name: str) -> str:
    text = (display_name or "").strip()
    if not text:
        raise InvalidInput("The display name is empty; give the name clients should see.")
    if len(text) > MAX_DISPLAY_NAME:
        raise InvalidInput(
            f"The display name is {len(text)} characters long; at most {MAX_DISPLAY_NAME}."
        )
    if not text.isprintable():
        raise InvalidInput("The display name must be printable text on one line (no tabs).")
    return text


def normalise_color(role: str, value: str) -> str:
    value = (value or "").strip()
    if not _HEX.match(value):
        raise InvalidInput(
            f"The {role} colour {value[:20]!r} is not a colour: write it #rgb or #rrggbb."
        )
    digits = value[1:].lower()
    if len(digits) == 3:
        digits = "".join(ch * 2 for ch in digits)
    return "#" + digits


def _luminance(color: str) -> float:
    channels = []
    for i in (1, 3, 5):
        c = int(color[i : i + 2], 16) / 255
        channels.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = channels
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21)."""
    a = _luminance(normalise_color("first", first))
    b = _luminance(normalise_color("second", second))
    light, dark = max(a, b), min(a, b)
    return (light + 0.05) / (dark + 0.05)


def check_colors(colors: Mapping[str, str] | None) -> dict[str, str]:
    """The colours normalised; refused when unknown, malformed or text unreadable."""
    given = {k: v for k, v in (colors or {}).items() if v is not None}
    unknown = sorted(set(given) - set(COLOR_ROLES))
    if unknown:
        raise InvalidInput(
            f"Unknown colour {', '.join(unknown)}: a brand has primary, accent, background, text."
        )
    normal = {role: normalise_color(role, given[role]) for role in COLOR_ROLES if role in given}
    if "text" in normal or "background" in normal:
        text = normal.get("text", DEFAULT_COLORS["text"])
        background = normal.get("background", DEFAULT_COLORS["background"])
        ratio = contrast_ratio(text, background)
        if ratio < AA_TEXT:
            raise InvalidInput(
                f"Text {text} on background {background} has a contrast of {ratio:.2f}:1; "
                f"clients could not read it (WCAG AA needs {AA_TEXT}:1). Choose a darker text "
                "or a lighter background (or the other way round)."
            )
    return normal


def color_warnings(colors: Mapping[str, str] | None) -> list[str]:
    """What is legal but hard to see: accents too close to the background or to white text."""
    normal = check_colors(colors)
    background = normal.get("background", DEFAULT_COLORS["background"])
    warnings = []
    for role in ("primary", "accent"):
        if role not in normal:
            continue
        value = normal[role]
        on_background = contrast_ratio(value, background)
        if on_background < AA_UI:
            warnings.append(
                f"the {role} colour {value} has a contrast of {on_background:.2f}:1 on the "
                f"background {background}; links and borders in it will be hard to see "
                f"(at least {AA_UI}:1 is advised)."
            )
        on_white = contrast_ratio(value, "#ffffff")
        if role == "accent" and on_white < AA_TEXT and on_background >= AA_UI:
            warnings.append(
                f"white button text on the accent colour {value} has a contrast of "
                f"{on_white:.2f}:1 (WCAG AA needs {AA_TEXT}:1)."
            )
    return warnings


def check_logo(data: bytes) -> str:
    """The logo's media type (``image/png`` or ``image/svg+xml``), or why it is refused."""
    if not data:
        raise InvalidInput("The logo file is empty.")
    if len(data) > MAX_LOGO_BYTES:
        raise InvalidInput(
            f"The logo is {len(data) / 1024:.0f} kB; at most 200 kB: export it smaller."
        )
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise InvalidInput("The logo is not a valid PNG image (no IHDR header).")
        return "image/png"
    _check_svg(data)
    return "image/svg+xml"


def _refuse_svg(what: str) -> InvalidInput:
    return InvalidInput(
        f"The SVG logo was refused: {what}. A logo may hold shapes, text, gradients and "
        "inline PNG images only; export it again as a plain SVG or a PNG."
    )


def _not_an_image(why: str) -> InvalidInput:
    return InvalidInput(f"The logo must be a PNG or SVG image; this file is neither{why}.")


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1].lower()


def _check_css(text: str) -> None:
    if _CSS_ESCAPE.search(text):
        raise _refuse_svg("its CSS uses escapes")
    if "@import" in text.lower():
        raise _refuse_svg("its CSS imports another file")
    for _quote, target in _CSS_URL.findall(text):
        if not _SAFE_HREF.match(target.strip()):
            raise _refuse_svg("its CSS refers to an outside file")
    if "javascript:" in text.lower() or "expression(" in text.lower():
        raise _refuse_svg("its CSS holds script")


def _check_svg(data: bytes) -> None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_an_image("") from None
    head = text.lstrip()
    lowered = text.lower()
    if not head.startswith("<"):
        raise _not_an_image("")
    if "<!doctype" in lowered or "<!entity" in lowered:
        raise _refuse_svg("it has a DOCTYPE or entity declaration")
    # Processing instructions other than the XML declaration (xml-stylesheet fetches CSS).
    if re.search(r"<\?(?!xml\s)", text) or len(re.findall(r"<\?", text)) > 1:
        raise _refuse_svg("it has a processing instruction such as xml-stylesheet")
    # No DTD got this far (refused above, as defusedxml does): without one, expat defines
    # no entity and loads nothing; an undefined entity is a parse error.
    try:
        root = ET.fromstring(text)  # noqa: S314
    except ET.ParseError:
        raise _not_an_image(" (its XML does not parse)") from None
    if _local(root.tag) != "svg":
        raise _not_an_image(" (its root is not <svg>)")
    if root.tag != f"{{{SVG_NS}}}svg":
        raise InvalidInput(
            "The SVG logo has no SVG namespace; browsers only draw it as an image with "
            'xmlns="http://www.w3.org/2000/svg" on its <svg> element.'
        )
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        tag = _local(element.tag)
        if tag in _BANNED_ELEMENTS:
            raise _refuse_svg(f"it has a <{tag}> element")
        if tag == "style":
            _check_css(element.text or "")
        for name, value in element.attrib.items():
            attribute = _local(name)
            if attribute.startswith("on"):
                raise _refuse_svg(f"it has an event handler ({attribute})")
            if attribute == "href" or attribute.endswith(":href"):
                if not _SAFE_HREF.match(value.strip()):
                    raise _refuse_svg("it refers to an outside resource or script (href)")
            elif attribute == "style":
                _check_css(value)
            elif "url(" in value.lower():
                _check_css(value)
            if "javascript:" in value.lower().replace(" ", ""):
                raise _refuse_svg("an attribute holds a javascript: address")


# -- storage ------------------------------------------------------------------------------


def _row(session: Session, name_or_id: str) -> Brand:
    text = (name_or_id or "").strip()
    row = None
    try:
        row = session.get(Brand, str(uuid.UUID(text)))
    except ValueError:
        pass
    if row is None:
        row = session.scalar(select(Brand).where(Brand.name == text))
    if row is None:
        raise NotFound(f"No brand {text[:100]!r}; `writevue brand list` shows them.")
    return row


def save_brand(
    session: Session,
    name: str,
    display_name: str,
    *,
    logo_path: Path | str | None = None,
    logo: bytes | None = None,
    colors: Mapping[str, str] | None = None,
    replace: bool = False,
) -> str:
    """Add a brand (or, with ``replace``, make an existing one exactly what is given:
    a logo or colour not given is not kept). Everything is checked before anything is
    written. The brand's id."""
    name = check_name(name)
    display_name = check_display_name(display_name)
    if logo_path is not None and logo is not None:
        raise InvalidInput("Give the logo as a file or as bytes, not both.")
    if logo_path is not None:
        path = Path(logo_path)
        try:
            if path.stat().st_size > MAX_LOGO_BYTES:
                raise InvalidInput(f"The logo file {path.name} is over 200 kB; export it smaller.")
            logo = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInput(f"No logo file at {path}.") from None
        except IsADirectoryError:
            raise InvalidInput(f"{path} is a folder, not a logo file.") from None
    logo_type = check_logo(logo) if logo is not None else None
    normal = check_colors(colors)
    existing = session.scalar(select(Brand).where(Brand.name == name))
    if existing is not None and not replace:
        raise InvalidInput(
            f"A brand named {name!r} already exists; add --replace to change it "
            "(its tenants keep it)."
        )
    now = dt.datetime.now(dt.UTC)
    row = existing or Brand(id=str(uuid.uuid4()), name=name, created_at=now)
    if existing is not None and existing.updated_at is not None and now <= existing.updated_at:
        now = existing.updated_at + dt.timedelta(microseconds=1)  # always a new version
    row.display_name = display_name
    row.logo_b64 = base64.b64encode(logo).decode("ascii") if logo is not None else None
    row.logo_type = logo_type
    row.colors = normal
    row.updated_at = now
    if existing is None:
        session.add(row)
    session.flush()
    return row.id


def get_brand(session: Session, name_or_id: str) -> BrandInfo:
    return _info(_row(session, name_or_id))


def list_brands(session: Session) -> list[BrandInfo]:
    return [_info(row) for row in session.scalars(select(Brand).order_by(Brand.name))]


def brand_usage(session: Session, brand_id: str) -> tuple[int, int]:
    """(tenants, templates) that point to the brand."""
    tenants = session.scalar(
        select(func.count()).select_from(TenantSettings).where(TenantSettings.brand_id == brand_id)
    )
    templates = session.scalar(
        select(func.count())
        .select_from(DashboardTemplate)
        .where(DashboardTemplate.brand_id == brand_id)
    )
    return int(tenants or 0), int(templates or 0)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def delete_brand(session: Session, name_or_id: str) -> str:
    """Remove a brand no tenant or template uses; its id."""
    row = _row(session, name_or_id)
    tenants, templates = brand_usage(session, row.id)
    if tenants or templates:
        users = " and ".join(
            text
            for count, text in (
                (tenants, _plural(tenants, "tenant")),
                (templates, _plural(templates, "template")),
            )
            if count
        )
        raise InvalidInput(
            f"The brand {row.name!r} is used by {users}; clear it from them first "
            "(`writevue brand clear TENANT_ID…`, or the template's brand)."
        )
    session.delete(row)
    session.flush()
    return row.id


def _tenants(session: Session, tenant_ids: Iterable[str]) -> list[str]:
    ids = [registry.require_tenant(session, tenant_id) for tenant_id in tenant_ids]
    if not ids:
        raise InvalidInput("Name at least one tenant id.")
    return list(dict.fromkeys(ids))


def _set_brand(session: Session, tenant_ids: list[str], brand_id: str | None) -> None:
    now = dt.datetime.now(dt.UTC)
    for tenant_id in tenant_ids:
        settings = session.get(TenantSettings, tenant_id)
        if settings is None:
            settings = TenantSettings(tenant_id=tenant_id, locale="en", polarity={})
            session.add(settings)
        settings.brand_id = brand_id
        settings.updated_at = now
    session.flush()


def apply_brand(session: Session, name: str, tenant_ids: Iterable[str]) -> list[str]:
    """Give these tenants the brand (every id checked before any is changed); their ids."""
    row = _row(session, name)
    ids = _tenants(session, tenant_ids)
    _set_brand(session, ids, row.id)
    return ids


def clear_brand(session: Session, tenant_ids: Iterable[str]) -> list[str]:
    """Take these tenants' own brand away (their template's, if any, applies again)."""
    ids = _tenants(session, tenant_ids)
    _set_brand(session, ids, None)
    return ids


def _brand_of_tenant(tenant_id: str):
    """The brand id a tenant shows: its own, else its template's."""
    return (
        select(Brand)
        .select_from(TenantSettings)
        .outerjoin(DashboardTemplate, DashboardTemplate.id == TenantSettings.template_id)
        .join(Brand, Brand.id == func.coalesce(TenantSettings.brand_id, DashboardTemplate.brand_id))
        .where(TenantSettings.tenant_id == tenant_id)
    )


def brand_for_tenant(session: Session, tenant_id: str) -> BrandInfo | None:
    """The tenant's brand, else its template's, else None (WriteVue's look). One query."""
    row = session.scalar(_brand_of_tenant(tenant_id))
    return None if row is None else _info(row)


def brand_stamp_for_tenant(session: Session, tenant_id: str) -> tuple[str, dt.datetime] | None:
    """(brand id, updated_at) of ``brand_for_tenant`` without reading the logo: one small
    query, for callers that keep brands cached by their version."""
    stamp = _brand_of_tenant(tenant_id).with_only_columns(Brand.id, Brand.updated_at)
    found = session.execute(stamp).first()
    return None if found is None else (found[0], found[1])


__all__ = [
    "COLOR_ROLES",
    "DEFAULT_COLORS",
    "MAX_LOGO_BYTES",
    "BrandInfo",
    "apply_brand",
    "brand_for_tenant",
    "brand_stamp_for_tenant",
    "brand_usage",
    "check_colors",
    "check_logo",
    "clear_brand",
    "color_warnings",
    "contrast_ratio",
    "delete_brand",
    "get_brand",
    "list_brands",
    "save_brand",
]
