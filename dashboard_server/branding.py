"""A brand as the dashboard server shows it: its logo served from this server, its colours
as CSS custom properties, its name wherever a client would otherwise read "WriteVue".

- ``BrandView`` is what a page needs (no logo bytes): the name, the logo's URL, the
  colours and the brand's version, which is part of the page cache key.
- ``/brand/<brand id>/<sha256 of the logo, 16 hex>.<svg|png>`` serves the logo. The URL
  changes with the logo, so it is cached for a year (``immutable``); an SVG carries a
  CSP that runs nothing even when opened on its own (the stored SVG was already checked
  by ``writevue_pipelines.branding``). Anything else under ``/brand/`` (an unknown
  brand, an old digest) gets the same 404 page as any unknown path.
- ``WRITEVUE_DEFAULT_BRAND`` names a brand for everything that has no tenant's (the
  404 and "no longer works" pages) and for tenants without a brand of their own.
"""

from __future__ import annotations

import hashlib
import html
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from tornado.web import RequestHandler

from writevue_pipelines import branding
from writevue_pipelines.branding import BrandInfo
from writevue_pipelines.errors import InvalidInput, NotFound
from writevue_pipelines.models import Brand
from writevue_pipelines.runtime import Runtime

from .static import asset_url

#: the logo route (Tornado anchors it at the end)
LOGO_ROUTE = r"/brand/([0-9a-f-]{36})/([0-9a-f]{16})\.(svg|png)"
LOGO_CACHE_CONTROL = "public, max-age=31536000, immutable"
#: nothing in an image runs or loads, even when the logo is opened as a page of its own
LOGO_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; sandbox"
_DEFAULT_TTL_S = 30.0


@dataclass(frozen=True)
class BrandView:
    """What a page shows of a brand. Hashable: it is part of the page cache key."""

    id: str
    display_name: str
    logo_url: str | None
    #: (role, "#rrggbb") for the roles the brand sets; the others stay WriteVue's
    colors: tuple[tuple[str, str], ...] = ()
    #: the brand's version: a changed brand is a new page at once
    updated_at: object = None

    def color(self, role: str) -> str | None:
        return dict(self.colors).get(role)


def logo_digest(logo: bytes) -> str:
    return hashlib.sha256(logo).hexdigest()[:16]


def logo_url(info: BrandInfo) -> str | None:
    if not info.logo or info.logo_extension is None:
        return None
    return f"/brand/{info.id}/{logo_digest(info.logo)}.{info.logo_extension}"


def brand_view(info: BrandInfo | None) -> BrandView | None:
    if info is None:
        return None
    roles = [role for role in branding.COLOR_ROLES if role in info.colors]
    colors = tuple((role, info.colors[role]) for role in roles)
    return BrandView(info.id, info.display_name, logo_url(info), colors, info.updated_at)


# -- finding a tenant's brand cheaply --------------------------------------------------------


class _Views:
    """Brand views by (id, version), and the default brand's stamp for a few seconds:
    a view costs one small query (the tenant's brand id and version), never the logo."""

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._views: dict[tuple, BrandView | None] = {}
        self._default: tuple[str, float, tuple[str, object] | None] | None = None
        self._lock = threading.Lock()

    def view(self, session: Session, stamp: tuple[str, object]) -> BrandView | None:
        with self._lock:
            if stamp in self._views:
                return self._views[stamp]
        found = brand_view(branding.get_brand(session, stamp[0]))
        with self._lock:
            if len(self._views) >= self.max_entries:
                self._views.clear()
            self._views[stamp] = found
        return found

    def default_stamp(self, session: Session, name: str) -> tuple[str, object] | None:
        now = time.monotonic()
        with self._lock:
            cached = self._default
        if cached is not None and cached[0] == name and now - cached[1] < _DEFAULT_TTL_S:
            return cached[2]
        row = session.execute(select(Brand.id, Brand.updated_at).where(Brand.name == name)).first()
        stamp = None if row is None else (row[0], row[1])
        with self._lock:
            self._default = (name, now, stamp)
        return stamp

    def clear(self) -> None:
        with self._lock:
            self._views.clear()
            self._default = None


VIEWS = _Views()


def load_brand_view(
    session: Session, tenant_id: str, default_brand: str | None = None
) -> BrandView | None:
    """The tenant's brand (its own, else its template's), else the server's default brand,
    else None (WriteVue's look)."""
    return brand_view_of(
        session, branding.brand_stamp_for_tenant(session, tenant_id), default_brand
    )


def brand_view_of(
    session: Session, stamp: tuple[str, object] | None, default_brand: str | None = None
) -> BrandView | None:
    """``load_brand_view`` from the tenant's brand stamp (``brand_stamp_for_tenant``), read
    by the caller."""
    if stamp is None and default_brand:
        stamp = VIEWS.default_stamp(session, default_brand)
    return None if stamp is None else VIEWS.view(session, stamp)


def default_brand_view(runtime: Runtime) -> BrandView | None:
    """The server-wide default brand (``WRITEVUE_DEFAULT_BRAND``), if one is set and exists."""
    name = runtime.settings.default_brand
    if not name:
        return None
    with runtime.db.session() as session:
        stamp = VIEWS.default_stamp(session, name)
        return None if stamp is None else VIEWS.view(session, stamp)


# -- HTML ---------------------------------------------------------------------------------------


def brand_name(brand: BrandView | None) -> str:
    """Who the client deals with: the brand's name, or WriteVue's when the operator left it."""
    return brand.display_name if brand is not None else "WriteVue"


def brand_text(text: str, brand: BrandView | None) -> str:
    """A sentence that names WriteVue, naming the brand instead when there is one."""
    return text if brand is None else text.replace("WriteVue", brand.display_name)


def logo_html(brand: BrandView | None, *, css_class: str = "wv-logo") -> str:
    """The header's logo: the brand's (alt: its name), else its name as a wordmark, else
    WriteVue's."""
    if brand is None:
        return f'<img class="{css_class}" src="{asset_url("logo.svg")}" alt="WriteVue">'
    name = html.escape(brand.display_name)
    mark = f'<span class="wv-brand-name">{name}</span>'
    if brand.logo_url is None:
        return f'<span class="wv-brand">{mark}</span>'
    return (
        f'<span class="wv-brand"><img class="{css_class} wv-brand-logo" '
        f'src="{html.escape(brand.logo_url)}" alt="{name}">{mark}</span>'
    )


def favicon_url(brand: BrandView | None) -> str:
    return (brand.logo_url if brand is not None else None) or asset_url("favicon.svg")


def brand_style(brand: BrandView | None, *, tv: bool = False, scope: str = ".wv-dashboard") -> str:
    """A small inline ``<style>``: the brand's colours as ``--wv-primary``, ``--wv-accent``,
    ``--wv-bg`` and ``--wv-text`` on ``scope``, and the rules that use them.

    In TV mode the dark background and light text stay (a brand's colours were checked
    against its own background, not the TV's): only primary and accent apply, as
    borders and strips, never as text.
    """
    if brand is None:
        return ""
    colors = dict(brand.colors)
    if tv:
        colors.pop("background", None)
        colors.pop("text", None)
    names = {"primary": "--wv-primary", "accent": "--wv-accent"}
    if not tv:
        names |= {"background": "--wv-bg", "text": "--wv-text"}
    props = "".join(f"{names[role]}:{value};" for role, value in colors.items() if role in names)
    rules = [f"{scope}{{{props}}}"] if props else []
    rules.append(
        ".wv-brand{display:inline-flex;align-items:center;gap:10px}"
        ".wv-header .wv-brand-logo{height:40px;width:auto;max-width:220px;object-fit:contain}"
        ".wv-brand-name{font-weight:600;color:var(--wv-muted)}"
    )
    if "primary" in colors:
        rules.append(
            f"{scope} .wv-header{{border-top:4px solid var(--wv-primary);padding-top:8px}}"
        )
    if "accent" in colors:
        rules.append(
            f"{scope} .wv-card,{scope} .wv-chart{{border-top:3px solid var(--wv-accent)}}"
            f"{scope} .wv-s0{{stroke:var(--wv-accent);color:var(--wv-accent)}}"
        )
        if not tv:
            rules.append(f"{scope} a{{color:var(--wv-accent)}}")
    if tv:
        rules.append(f"{scope} .wv-brand-logo{{background:#fff;border-radius:6px;padding:4px}}")
    if not tv and "background" in colors:
        rules.append(f"{scope}{{background:var(--wv-bg)}}")
    if not tv and "text" in colors:
        rules.append(f"{scope}{{color:var(--wv-text)}}")
    return f"<style>{''.join(rules)}</style>"


def gone_html(brand: BrandView | None = None) -> str:
    """The in-page "This link no longer works": neutral, or in the brand's name."""
    who = "whoever sent it to you" if brand is None else html.escape(brand.display_name)
    mark = "" if brand is None else f'<p class="wv-gone-brand">{logo_html(brand)}</p>'
    style = "" if brand is None else brand_style(brand, scope=".wv-gone")
    return (
        f'<div class="wv-gone">{style}{mark}<h1>This link no longer works</h1>'
        f"<p>Ask {who} for a new one.</p></div>"
    )


def not_found_html(brand: BrandView | None) -> bytes:
    """The one 404 page, with the server's default brand: no tenant is known there."""
    name = "whoever sent it to you" if brand is None else html.escape(brand.display_name)
    logo = ""
    if brand is not None and brand.logo_url is not None:
        logo = (
            f'<img src="{html.escape(brand.logo_url)}" alt="{name}" '
            'style="height:48px;width:auto;max-width:240px">'
        )
    elif brand is not None:
        logo = f"<p><strong>{name}</strong></p>"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow"><title>Not found</title>'
        f'<link rel="icon" href="{html.escape(favicon_url(brand))}">\n'
        "<style>body{font-family:system-ui,sans-serif;color:#1d2433;background:#f4f6fa;"
        "display:flex;align-items:center;justify-content:center;height:100vh;margin:0}"
        "main{text-align:center;padding:16px}</style>\n"
        f"</head><body><main>{logo}<h1>Not found</h1><p>There is nothing at this address. "
        f"If a link brought you here, ask {name} for a new one.</p></main></body></html>"
    ).encode()


class DefaultBrandPages:
    """The 404 page in the default brand, rebuilt at most every 30 s (a guesser's 404s
    cost no query of their own), the same for every kind of failure."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self._page: tuple[float, bytes] | None = None

    def __call__(self) -> bytes:
        now = time.monotonic()
        cached = self._page
        if cached is not None and now - cached[0] < _DEFAULT_TTL_S:
            return cached[1]
        try:
            page = not_found_html(default_brand_view(self.runtime))
        except Exception:  # the warehouse is unreachable: the neutral page
            page = not_found_html(None)
        self._page = (now, page)
        return page


# -- the logo route -------------------------------------------------------------------------------


class BrandLogoHandler(RequestHandler):
    """``/brand/<id>/<digest>.<ext>``: a brand's logo, from this server, cached for a year."""

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def get(self, brand_id: str, digest: str, extension: str) -> None:
        from .gate import reject

        info = None
        try:
            with self.runtime.db.session() as session:
                info = branding.get_brand(session, brand_id)
        except (NotFound, InvalidInput):
            pass
        if (
            info is None
            or info.logo is None
            or info.logo_extension != extension
            or logo_digest(info.logo) != digest
        ):
            reject(self, 404)
            return
        self.request.writevue_immutable = True  # see headers.security_transform
        self.set_header("Content-Type", info.logo_type)
        self.set_header("Cache-Control", LOGO_CACHE_CONTROL)
        self.set_header("Content-Security-Policy", LOGO_CSP)
        self.set_header("Content-Disposition", f'inline; filename="logo.{extension}"')
        self.finish(info.logo)

    head = get
