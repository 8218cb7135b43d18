"""Branding per tenant (white label): an agency's name, logo and colours instead of WriteVue's.

Storage and validation (hostile logos refused), the `writevue brand` commands end to end,
the logo route served by the dashboard server itself, and in Chromium: a branded
client's dashboard, TV mode, connect page and "no longer works" page never say
"WriteVue"; an unbranded one keeps the default look.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

import polars as pl
import pytest
from sqlalchemy import select
from support import add_tenant, add_tenant_with_facts, device, home_runtime, run_cli

from writevue_pipelines import branding
from writevue_pipelines.branding import BrandInfo
from writevue_pipelines.errors import InvalidInput, NotFound
from writevue_pipelines.models import Brand, DashboardTemplate, TenantSettings


def png(width: int = 8, height: int = 8, rgb=(200, 30, 60)) -> bytes:
    """A real, valid PNG image of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


LOGO_SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 40" width="40" height="40">'
    b'<defs><linearGradient id="g"><stop offset="0" stop-color="#0a7"/></linearGradient></defs>'
    b'<rect width="40" height="40" rx="6" fill="url(#g)"/>'
    b'<circle cx="20" cy="20" r="9" fill="#fff" style="opacity:.9"/></svg>'
)

HOSTILE_SVGS = {
    "script": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "onload": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>',
    "onclick": b'<svg xmlns="http://www.w3.org/2000/svg"><rect ONCLICK="x()"/></svg>',
    "foreignObject": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><foreignObject><p>x</p></foreignObject></svg>'
    ),
    "external href": (
        b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
        b'<image xlink:href="https://tracker.example/pixel.png"/></svg>'
    ),
    "plain href": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><a href="javascript:alert(1)"><rect/></a></svg>'
    ),
    "entity": (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaa">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg"><text>&a;&a;</text></svg>'
    ),
    "doctype": (
        b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">'
        b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>'
    ),
    "external css": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><style>@import url(https://x.example/a.css);'
        b"</style><rect/></svg>"
    ),
    "css url": (
        b'<svg xmlns="http://www.w3.org/2000/svg">'
        b'<rect style="fill:url(https://x.example/p.svg#a)"/></svg>'
    ),
    "animate href": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><a><set attributeName="href" '
        b'to="javascript:alert(1)"/><rect/></a></svg>'
    ),
    "stylesheet pi": (
        b'<?xml-stylesheet href="https://x.example/a.css"?>'
        b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>'
    ),
}


def _save(runtime, name="northwind", display="Northwind Analytics", **kwargs) -> str:
    with runtime.db.session() as session:
        return branding.save_brand(session, name, display, **kwargs)


# -- storage and validation ----------------------------------------------------------------------


def test_a_brand_is_stored_and_read_back_whole(any_runtime, tmp_path):
    logo = tmp_path / "logo.svg"
    logo.write_bytes(LOGO_SVG)
    brand_id = _save(
        any_runtime,
        logo_path=logo,
        colors={"primary": "#0A7", "accent": "#005f4b", "background": "#ffffff", "text": "#111"},
    )
    with any_runtime.db.session() as session:
        by_name = branding.get_brand(session, "northwind")
        by_id = branding.get_brand(session, brand_id)
        row = session.get(Brand, brand_id)
        listed = branding.list_brands(session)
    assert isinstance(by_name, BrandInfo) and by_name == by_id
    assert by_name.display_name == "Northwind Analytics" and by_name.name == "northwind"
    assert by_name.logo == LOGO_SVG and by_name.logo_type == "image/svg+xml"
    assert dict(by_name.colors) == {
        "primary": "#00aa77",
        "accent": "#005f4b",
        "background": "#ffffff",
        "text": "#111111",
    }
    assert base64.b64decode(row.logo_b64) == LOGO_SVG  # text, not a binary column
    assert [b.name for b in listed] == ["northwind"]
    # a PNG, given as bytes
    png_id = _save(any_runtime, "globex-agency", "Globex Agency", logo=png())
    with any_runtime.db.session() as session:
        assert branding.get_brand(session, png_id).logo_type == "image/png"


def test_a_name_is_taken_once_unless_replaced(runtime):
    first = _save(runtime, colors={"accent": "#005f4b"}, logo=png())
    with pytest.raises(InvalidInput, match=r"already exists.*--replace"):
        _save(runtime, display="Other")
    with runtime.db.session() as session:
        before = branding.get_brand(session, first)
    again = _save(runtime, display="Northwind", replace=True)
    with runtime.db.session() as session:
        after = branding.get_brand(session, "northwind")
    assert again == first and after.display_name == "Northwind"
    # replace means what is given is the brand: no logo, no colours given, none kept
    assert after.logo is None and dict(after.colors) == {}
    assert after.updated_at > before.updated_at


@pytest.mark.parametrize("kind", sorted(HOSTILE_SVGS))
def test_hostile_svgs_are_refused(runtime, kind):
    with pytest.raises(InvalidInput, match="logo"):
        _save(runtime, logo=HOSTILE_SVGS[kind])
    with runtime.db.session() as session:
        assert branding.list_brands(session) == []  # nothing half-written


@pytest.mark.parametrize(
    "logo, message",
    [
        (b"GIF89a" + b"\x00" * 40, "PNG or SVG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "PNG or SVG"),
        (b"<html><body>hi</body></html>", "PNG or SVG"),
        (b"<svg><rect/></svg>", "SVG"),  # no SVG namespace: no browser draws it as an image
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * (200 * 1024), "200 kB"),
        (b"", "empty"),
    ],
)
def test_a_logo_must_be_a_small_png_or_svg(runtime, logo, message):
    with pytest.raises(InvalidInput, match=message):
        _save(runtime, logo=logo)


def test_a_missing_logo_file_is_one_clear_error(runtime, tmp_path):
    with pytest.raises(InvalidInput, match="No logo file"):
        _save(runtime, logo_path=tmp_path / "nope.svg")


@pytest.mark.parametrize(
    "colors, message",
    [
        ({"primary": "red"}, "#rgb or #rrggbb"),
        ({"primary": "#12345"}, "#rgb or #rrggbb"),
        ({"accent": "#12g"}, "#rgb or #rrggbb"),
        ({"accent": "#123;}body{x:y"}, "#rgb or #rrggbb"),
        ({"shadow": "#123"}, "primary, accent, background, text"),
        ({"text": "#777", "background": "#888"}, "contrast"),  # 1.2:1
        ({"text": "#ffffff"}, "contrast"),  # on the default light background
    ],
)
def test_colours_are_hex_and_text_stays_readable(runtime, colors, message):
    with pytest.raises(InvalidInput, match=message):
        _save(runtime, colors=colors)


@pytest.mark.parametrize(
    "display, message",
    [("", "empty"), ("x" * 101, "100"), ("Bad\nName", "printable"), ("Tab\tName", "printable")],
)
def test_a_display_name_is_short_and_printable(runtime, display, message):
    with pytest.raises(InvalidInput, match=message):
        _save(runtime, display=display)


def test_bad_handles_are_refused(runtime):
    for name in ("", "has space", "x" * 101, "../etc"):
        with pytest.raises(InvalidInput, match="brand name"):
            _save(runtime, name=name)


def test_contrast_ratio_is_wcag():
    assert branding.contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert branding.contrast_ratio("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)
    warnings = branding.color_warnings({"accent": "#ffdd00"})
    assert warnings and "accent" in warnings[0]
    assert branding.color_warnings({"accent": "#005f4b"}) == []


def test_tenant_brand_then_template_brand_then_none(any_runtime):
    rt = any_runtime
    own = _save(rt, "own", "Own Agency")
    via_template = _save(rt, "tmpl", "Template Agency")
    tenant = add_tenant(rt, "Acme Ltd")
    other = add_tenant(rt, "Globex", "g@globex.test")
    bare = add_tenant(rt, "Bare", "b@bare.test")
    with rt.db.session() as session:
        assert branding.brand_for_tenant(session, tenant) is None
        session.add(
            DashboardTemplate(
                id="00000000-0000-4000-8000-000000000001",
                name="agency-default",
                definition={},
                brand_id=via_template,
            )
        )
        session.flush()
        session.add(
            TenantSettings(
                tenant_id=other,
                template_id="00000000-0000-4000-8000-000000000001",
                locale="de",
                polarity={},
            )
        )
    with rt.db.session() as session:
        branding.apply_brand(session, "own", [tenant])
    with rt.db.session() as session:
        assert branding.brand_for_tenant(session, tenant).id == own
        assert branding.brand_for_tenant(session, other).id == via_template
        assert branding.brand_for_tenant(session, bare) is None
        settings = session.get(TenantSettings, tenant)
        assert settings.locale == "en" and settings.polarity == {}
        # the tenant's own brand wins over its template's
        branding.apply_brand(session, "own", [other])
    with rt.db.session() as session:
        assert branding.brand_for_tenant(session, other).id == own
        assert session.get(TenantSettings, other).locale == "de"  # the rest untouched
        branding.clear_brand(session, [other, tenant])
    with rt.db.session() as session:
        assert branding.brand_for_tenant(session, other).id == via_template
        assert branding.brand_for_tenant(session, tenant) is None


def test_apply_to_an_unknown_tenant_writes_nothing(runtime):
    _save(runtime)
    tenant = add_tenant(runtime)
    with pytest.raises(NotFound), runtime.db.session() as session:
        branding.apply_brand(session, "northwind", [tenant, "6f1c1ad4-0000-4000-8000-000000000000"])
    with runtime.db.session() as session:
        assert session.get(TenantSettings, tenant) is None
    with pytest.raises(NotFound, match="No brand"), runtime.db.session() as session:
        branding.apply_brand(session, "nobody", [tenant])


def test_a_brand_in_use_cannot_be_removed(runtime):
    _save(runtime)
    tenants = [add_tenant(runtime, f"T{i}", f"t{i}@x.test") for i in range(2)]
    with runtime.db.session() as session:
        branding.apply_brand(session, "northwind", tenants)
    with pytest.raises(InvalidInput, match="2 tenants"), runtime.db.session() as session:
        branding.delete_brand(session, "northwind")
    with runtime.db.session() as session:
        branding.clear_brand(session, tenants)
    with runtime.db.session() as session:
        branding.delete_brand(session, "northwind")
    with runtime.db.session() as session:
        assert session.scalars(select(Brand)).all() == []


def test_erasing_a_tenant_keeps_the_agencys_brand(runtime):
    from writevue_pipelines.privacy import erasure

    brand_id = _save(runtime, logo=png())
    tenant, _ = add_tenant_with_facts(
        runtime,
        "Erased Ltd",
        pl.DataFrame(
            {"metric": ["charges"], "dimension": [""], "day": [dt.date.today()], "value": [1.0]}
        ),
    )
    with runtime.db.session() as session:
        branding.apply_brand(session, "northwind", [tenant])
    report = erasure.run_erasure(runtime, tenant)
    assert report.ok
    with runtime.db.session() as session:
        assert session.get(TenantSettings, tenant) is None
        assert branding.get_brand(session, brand_id).logo == png()


# -- the command line ----------------------------------------------------------------------------


def test_the_brand_commands_end_to_end(runtime, monkeypatch, capsys, tmp_path):
    logo = tmp_path / "logo.svg"
    logo.write_bytes(LOGO_SVG)
    tenant = add_tenant(runtime)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "brand",
        "add",
        "northwind",
        "--display-name",
        "Northwind Analytics",
        "--logo",
        str(logo),
        "--primary",
        "#0a7",
        "--accent",
        "#005f4b",
    )
    assert code == 0, err
    brand_id = out.strip().splitlines()[-1]
    code, out, err = run_cli(monkeypatch, capsys, "brand", "list", "--json")
    assert code == 0 and json.loads(out)[0]["id"] == brand_id
    assert json.loads(out)[0]["tenants"] == 0
    code, out, err = run_cli(monkeypatch, capsys, "brand", "apply", "northwind", tenant)
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "brand", "show", "northwind")
    assert code == 0 and "Northwind Analytics" in out and "image/svg+xml" in out
    assert "1 tenant" in out
    code, out, err = run_cli(monkeypatch, capsys, "brand", "remove", "northwind")
    assert code == 2 and "1 tenant" in err
    code, out, err = run_cli(
        monkeypatch, capsys, "brand", "add", "northwind", "--display-name", "X", "--text", "#000"
    )
    assert code == 2 and "already exists" in err
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "brand",
        "add",
        "northwind",
        "--display-name",
        "X",
        "--text",
        "#fff",
        "--replace",
    )
    assert code == 2 and "contrast" in err and err.count("\n") == 1
    code, out, err = run_cli(monkeypatch, capsys, "brand", "clear", tenant)
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "brand", "remove", "northwind")
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "brand", "list")
    assert code == 0 and "northwind" not in out


def test_a_low_contrast_accent_is_a_warning(runtime, monkeypatch, capsys):
    code, _out, err = run_cli(
        monkeypatch, capsys, "brand", "add", "pale", "--display-name", "Pale", "--accent", "#ffdd00"
    )
    assert code == 0 and "warning" in err and "accent" in err


def logo_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# -- the dashboard server ------------------------------------------------------------------------

TODAY = dt.datetime.now(dt.UTC).date()
FACTS = pl.DataFrame(
    {
        "metric": ["charges"] * 20,
        "dimension": [""] * 20,
        "day": [TODAY - dt.timedelta(days=i) for i in range(20)],
        "value": [float(10 + i) for i in range(20)],
    }
)
#: every text a client sees of a page, shadow roots included (Panel draws in them): its
#: title, its text, every image's alt text and every element's title and aria-label
PAGE_TEXTS = """() => {
  const out = [document.title, document.body.innerText];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      for (const name of ['alt', 'title', 'aria-label']) {
        if (el.getAttribute(name)) out.push(el.getAttribute(name));
      }
      if (el.shadowRoot) {
        for (const child of el.shadowRoot.children) out.push(child.innerText || '');
        walk(el.shadowRoot);
      }
    }
  };
  walk(document);
  return out.join('\\n');
}"""
NATURAL_WIDTHS = """() => {
  const out = [];
  const walk = (root) => {
    for (const img of root.querySelectorAll('img')) out.push([img.alt, img.naturalWidth, img.src]);
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) walk(el.shadowRoot);
  };
  walk(document);
  return out;
}"""


@dataclass
class Served:
    runtime: object
    base: str
    brand_id: str
    branded: str
    branded_token: str
    plain_token: str
    png_brand: str

    def url(self, token: str, query: str = "") -> str:
        return f"{self.base}/d/{token}{query}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from support import start_dashboard_server

    from writevue_pipelines import links

    root = tmp_path_factory.mktemp("branding")
    runtime = home_runtime(root)
    settings = runtime.settings
    branded, _ = add_tenant_with_facts(runtime, "Acme Ltd", FACTS)
    plain, _ = add_tenant_with_facts(runtime, "Plain Co", FACTS)
    with runtime.db.session() as session:
        brand_id = branding.save_brand(
            session,
            "northwind",
            "Northwind Analytics",
            logo=LOGO_SVG,
            colors={"primary": "#0a7f5a", "accent": "#005f4b"},
        )
        png_brand = branding.save_brand(session, "pngco", "PNG Co", logo=png(32, 16))
    with runtime.db.session() as session:
        branding.apply_brand(session, "northwind", [branded])
        _, branded_token = links.create_link(session, branded)
        _, plain_token = links.create_link(session, plain)
    server, base = start_dashboard_server(
        settings.home, root / "serve.log", WRITEVUE_DASHBOARD_REFRESH_S="1"
    )
    try:
        yield Served(runtime, base, brand_id, branded, branded_token, plain_token, png_brand)
    finally:
        server.stop()
        runtime.close()


def test_the_logo_is_served_by_the_dashboard_server_itself(served):
    import httpx

    from dashboard_server.gate import NOT_FOUND_HTML

    svg_url = f"{served.base}/brand/{served.brand_id}/{logo_digest(LOGO_SVG)}.svg"
    response = httpx.get(svg_url)
    assert response.status_code == 200 and response.content == LOGO_SVG
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "script" not in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    logo = png(32, 16)
    response = httpx.get(f"{served.base}/brand/{served.png_brand}/{logo_digest(logo)}.png")
    assert response.status_code == 200 and response.content == logo
    assert response.headers["content-type"] == "image/png"
    for wrong in (
        f"/brand/{served.brand_id}/{logo_digest(LOGO_SVG)}.png",  # wrong type
        f"/brand/{served.brand_id}/{'0' * 16}.svg",  # an old or made-up digest
        f"/brand/6f1c1ad4-0000-4000-8000-000000000000/{logo_digest(LOGO_SVG)}.svg",
        f"/brand/{served.brand_id}",
        "/brand/",
    ):
        response = httpx.get(served.base + wrong)
        assert response.status_code == 404, wrong
        assert response.content == NOT_FOUND_HTML
        assert response.headers["cache-control"] == "no-store"


def test_the_branded_page_html_names_the_brand_and_a_changed_brand_shows_at_once(served):
    from dashboard_server.data import Period
    from dashboard_server.tenant_data import TenantData

    source = TenantData(served.runtime, served.branded, alive=lambda: True)
    page = source.page(Period.last(7, TODAY), tv=False)
    assert "WriteVue" not in page and 'alt="Northwind Analytics"' in page
    assert f"/brand/{served.brand_id}/{logo_digest(LOGO_SVG)}.svg" in page
    assert "--wv-primary:#0a7f5a" in page and "--wv-accent:#005f4b" in page
    with served.runtime.db.session() as session:
        branding.save_brand(
            session,
            "northwind",
            "Northwind Data",
            logo=LOGO_SVG,
            colors={"primary": "#0a7f5a", "accent": "#005f4b"},
            replace=True,
        )
    try:
        page = source.page(Period.last(7, TODAY), tv=False)
        assert 'alt="Northwind Data"' in page
    finally:
        with served.runtime.db.session() as session:
            branding.save_brand(
                session,
                "northwind",
                "Northwind Analytics",
                logo=LOGO_SVG,
                colors={"primary": "#0a7f5a", "accent": "#005f4b"},
                replace=True,
            )


def test_a_default_brand_names_the_pages_without_a_tenant(runtime, monkeypatch):
    from dashboard_server.branding import DefaultBrandPages, gone_html, not_found_html
    from dashboard_server.render import GONE_HTML
    from writevue_pipelines.runtime import Runtime
    from writevue_pipelines.settings import Settings

    assert "WriteVue" not in GONE_HTML and "WriteVue" not in not_found_html(None).decode()
    _save(runtime, logo=LOGO_SVG)
    monkeypatch.setenv("WRITEVUE_DEFAULT_BRAND", "northwind")
    branded = Runtime(Settings.from_env())
    try:
        page = DefaultBrandPages(branded)().decode()
        assert "Northwind Analytics" in page and "WriteVue" not in page
        assert "<h1>Not found</h1>" in page and "/brand/" in page
        from dashboard_server.branding import default_brand_view

        gone = gone_html(default_brand_view(branded))
        assert "Ask Northwind Analytics for a new one" in gone and "WriteVue" not in gone
    finally:
        branded.close()


# -- in Chromium ---------------------------------------------------------------------------------


#: playwright's device descriptors (phones), filled by the browser fixture
def _open(browser, url: str, wait_for: str, **context):
    context = browser.new_context(**context)
    page = context.new_page()
    origins: set[str] = set()
    page.on(
        "request", lambda r: origins.add("/".join(r.url.removeprefix("blob:").split("/", 3)[:3]))
    )
    response = page.goto(url)
    page.locator(wait_for).first.wait_for(timeout=30_000)
    return context, page, response, origins


def _assert_white_label(page, response, origins, base: str) -> None:
    texts = page.evaluate(PAGE_TEXTS)
    assert "WriteVue" not in texts, texts
    assert "Northwind Analytics" in texts
    images = page.evaluate(NATURAL_WIDTHS)
    logos = [(alt, width) for alt, width, src in images if "/brand/" in src]
    assert logos and all(alt == "Northwind Analytics" and width > 0 for alt, width in logos)
    assert not [alt for alt, _w, _src in images if "WriteVue" in alt]
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "http" not in csp
    assert origins <= {base, base.replace("http", "ws")}, origins


@pytest.mark.browser
def test_in_chromium_a_branded_dashboard_never_says_writevue(served, browser):
    for query, viewport in (("", {"width": 1280, "height": 900}), ("?tv=1", None)):
        options = {"viewport": viewport or {"width": 1920, "height": 1080}}
        context, page, response, origins = _open(
            browser, served.url(served.branded_token, query), ".wv-card", **options
        )
        try:
            _assert_white_label(page, response, origins, served.base)
            icon = page.evaluate("document.querySelector('link[rel~=icon]').href")
            assert "/brand/" in icon
            # the brand's colour reaches the whole page: the active period button too
            root = "getComputedStyle(document.documentElement).getPropertyValue('--wv-primary')"
            assert page.evaluate(root).strip().lower() == "#0a7f5a"
            if not query:
                active = page.locator(".wv-range button.bk-active")
                colour = active.evaluate("b => getComputedStyle(b).backgroundColor")
                assert colour == "rgb(10, 127, 90)", colour
            if query:
                assert page.locator(".wv-tv").count() == 1
            from pathlib import Path

            artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / f"branded{query.replace('?', '-')}.png"))
        finally:
            context.close()


@pytest.mark.browser
def test_in_chromium_a_phone_shows_the_brand(served, browser):
    phone = device("iPhone 13")
    context, page, response, origins = _open(
        browser, served.url(served.branded_token), ".wv-card", **phone
    )
    try:
        _assert_white_label(page, response, origins, served.base)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= phone["viewport"]["width"] + 1, width
    finally:
        context.close()


@pytest.mark.browser
def test_in_chromium_the_connect_page_shows_the_brand(served, browser):
    from writevue_pipelines import invites

    with served.runtime.db.session() as session:
        _invite, token = invites.create_invite(session, served.branded, sources=["stripe"])
    context, page, response, origins = _open(
        browser, f"{served.base}/connect/{token}", ".wv-source"
    )
    try:
        _assert_white_label(page, response, origins, served.base)
        assert page.title() == "Connect your data · Northwind Analytics"
    finally:
        context.close()


@pytest.mark.browser
def test_in_chromium_a_revoked_link_says_so_without_writevue(served, browser):
    from writevue_pipelines import links

    with served.runtime.db.session() as session:
        link, token = links.create_link(session, served.branded)
    context, page, _response, _origins = _open(browser, served.url(token), ".wv-card")
    try:
        with served.runtime.db.session() as session:
            links.revoke_link(session, link.id)
        page.get_by_text("This link no longer works").wait_for(timeout=15_000)
        assert "WriteVue" not in page.evaluate(PAGE_TEXTS)
        # the open page knows its tenant: it says so in the tenant's brand
        assert "Ask Northwind Analytics for a new one" in page.evaluate(PAGE_TEXTS)
        response = page.goto(served.url(token))  # opened again: the one 404 page
        assert response.status == 404
        assert "WriteVue" not in page.evaluate(PAGE_TEXTS)
    finally:
        context.close()


@pytest.mark.browser
def test_in_chromium_an_unbranded_dashboard_keeps_the_default_look(served, browser):
    context, page, _response, _origins = _open(browser, served.url(served.plain_token), ".wv-card")
    try:
        images = page.evaluate(NATURAL_WIDTHS)
        assert [(alt, width > 0) for alt, width, src in images if "logo.svg" in src] == [
            ("WriteVue", True)
        ]
        assert "Northwind" not in page.evaluate(PAGE_TEXTS)
    finally:
        context.close()
