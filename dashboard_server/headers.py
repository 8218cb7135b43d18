"""Security headers and cookie rules on every response, errors and websocket upgrades included."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from panel.io.resources import JS_VERSION
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.web import OutputTransform, RequestHandler

from .static import asset_version

_COOKIE_FLAGS = frozenset({"expires", "max-age", "httponly", "samesite", "secure"})
#: a bundle named by its version (Bokeh's and Panel's ``/static/…?v=<hash>``): public
#: library code, never a tenant's, so a browser may keep it and a repeat view loads only
#: the page; the page itself (it carries the session) and anything unversioned stay no-store
VERSIONED_STATIC = re.compile(r"(?:^|&)v=[0-9a-f]{32,}(?:&|$)")
#: Panel's own files (its stylesheets) are named by Panel's release: ``?v=1.9.4``
PANEL_FILES = "/static/extensions/panel/"
IMMUTABLE = "public, max-age=31536000, immutable"


def versioned(path: str, query: str) -> bool:
    """Is this URL a file named by its version, which a browser may keep for good?

    - Bokeh's and Panel's bundles, ``/static/…?v=<hash>`` (``VERSIONED_STATIC``);
    - Panel's stylesheets, ``/static/extensions/panel/…?v=<Panel's release>``, exactly the
      release this server runs;
    - WriteVue's own ``/assets/<file>?v=<its content hash>`` (``static.asset_url``), only
      while the file has that content: an older page's URL gets today's file, not kept.
    Public files all: nothing of any tenant is ever served under these paths.
    """
    if path.startswith("/static/"):
        if VERSIONED_STATIC.search(query):
            return True
        return path.startswith(PANEL_FILES) and _version(query) == JS_VERSION
    if path.startswith("/assets/"):
        version = _version(query)
        return version is not None and version == asset_version(path.removeprefix("/assets/"))
    return False


def _version(query: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True)
    if set(values) != {"v"} or len(values["v"]) != 1:
        return None
    return values["v"][0]


#: what a handler may set for itself on a response it marks ``request.writevue_immutable``
#: (``branding.BrandLogoHandler``: a year of caching, a CSP stricter than the site's)
_OWN_HEADERS = frozenset({"Cache-Control", "Content-Security-Policy"})

# Panel's page starts from inline scripts ('unsafe-inline') and es-module-shims makes
# blob: scripts; nothing else, and no third-party origin, is allowed. 'unsafe-eval' is
# not needed by the widgets used (it would be by CustomJS or ReactiveHTML).
CSP_DIRECTIVES = {
    "default-src": "'self'",
    "script-src": "'self' 'unsafe-inline' blob:",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data: blob:",
    "font-src": "'self' data:",
    "connect-src": "'self'",
    "worker-src": "'self' blob:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

#: Tornado's XSRF cookie (the connect page's forms), made like every other cookie here
XSRF_COOKIE_KWARGS = {"httponly": True, "samesite": "Lax"}


def security_headers(frame_ancestors: str | None = None) -> dict[str, str]:
    """Headers for every response; ``frame_ancestors`` allows a configured embed."""
    directives = dict(CSP_DIRECTIVES)
    if frame_ancestors:
        directives["frame-ancestors"] = frame_ancestors
    headers = {
        "Referrer-Policy": "no-referrer",
        "X-Robots-Tag": "noindex, nofollow",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "; ".join(f"{k} {v}" for k, v in directives.items()),
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if not frame_ancestors:
        headers["X-Frame-Options"] = "DENY"
    return headers


def session_cookie(set_cookie: str, *, secure: bool) -> str:
    """A Set-Cookie value made a session cookie (no Expires/Max-Age), HttpOnly, SameSite=Lax."""
    parts = [part.strip() for part in set_cookie.split(";") if part.strip()]
    kept = [parts[0]] + [
        part for part in parts[1:] if part.split("=", 1)[0].strip().lower() not in _COOKIE_FLAGS
    ]
    return "; ".join(kept + ["HttpOnly", "SameSite=Lax"] + (["Secure"] if secure else []))


class SessionCookies(RequestHandler):
    """A handler whose cookies are made like ``session_cookie``'s, as Tornado sets them.

    Tornado adds a cookie made with ``set_cookie`` (its XSRF cookie too, which lasts 30 days
    once a user is set) to the response after every ``OutputTransform`` ran, so
    ``security_transform`` never sees it."""

    def set_cookie(self, name, value, domain=None, expires=None, path="/", expires_days=None, **kw):
        for flag in ("max_age", "httponly", "secure", "samesite"):
            kw.pop(flag, None)
        secure = self.request.protocol == "https"
        super().set_cookie(
            name, value, domain, path=path, httponly=True, samesite="Lax", secure=secure, **kw
        )


def security_transform(headers_to_set: dict[str, str]) -> type[OutputTransform]:
    """A Tornado transform: ``headers_to_set`` on every response, and its cookies hardened."""

    class SecurityHeaders(OutputTransform):
        """Runs on every response's first chunk, errors and the websocket upgrade included."""

        def __init__(self, request: HTTPServerRequest) -> None:
            super().__init__(request)
            self.request = request
            self.secure = request.protocol == "https"

        def transform_first_chunk(
            self, status_code, headers: HTTPHeaders, chunk: bytes, finishing: bool
        ):
            # A content-addressed file (a brand's logo) keeps its own caching and CSP.
            own = status_code == 200 and getattr(self.request, "writevue_immutable", False)
            for name, value in headers_to_set.items():
                if not (own and name in _OWN_HEADERS and name in headers):
                    headers[name] = value
            if (
                status_code == 200
                and self.request.method in ("GET", "HEAD")
                and versioned(self.request.path, self.request.query)
            ):
                headers["Cache-Control"] = IMMUTABLE
            headers.pop("Server", None)
            headers.pop("Etag", None)
            cookies = headers.get_list("Set-Cookie")
            if cookies:
                del headers["Set-Cookie"]
                for cookie in cookies:
                    headers.add("Set-Cookie", session_cookie(cookie, secure=self.secure))
            return status_code, headers, chunk

    return SecurityHeaders
