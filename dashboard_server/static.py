"""Static files: the branding in ``assets/``, robots.txt, and each bundle gzipped only once."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.web import GZipContentEncoding, RequestHandler

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
_versions: dict[str, tuple[tuple[int, int], str]] = {}


def asset_version(name: str) -> str | None:
    """The content hash that names ``assets/<name>`` as it is now (32 hex digits), or None
    for a name that is not a file there.

    A page names each asset by it (``asset_url``), so a browser may keep the file for
    good (``headers``): once the file changes, pages name another URL. Read again only
    when the file's size or modification time changed."""
    path = ASSETS_DIR / name
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    known = _versions.get(name)
    if known is None or known[0] != key:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
        except OSError:
            return None
        known = _versions[name] = (key, digest)
    return known[1]


def asset_url(name: str) -> str:
    """``/assets/<name>?v=<its content hash>``: the URL a page names an asset by."""
    version = asset_version(name)
    return f"/assets/{name}" + (f"?v={version}" if version else "")


class RobotsHandler(RequestHandler):
    """``/robots.txt``: no crawler may follow a dashboard or connect link."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish((ASSETS_DIR / "robots.txt").read_bytes())


class StaticGzip(GZipContentEncoding):
    """Compress static files only (pages carry a session token: BREACH caution), each once.

    A browser keeps the bundles a page names by version (``headers.VERSIONED_STATIC``),
    but every new visitor, and any request for an unversioned file, still fetches them
    (about 3 MB), and compressing them anew each time cost the server more than the page
    itself. A static file's compressed bytes are kept,
    keyed by its URL (Bokeh's carry a version hash), Last-Modified and length.
    """

    MAX_CACHED_BYTES = 32 * 1024 * 1024
    _compressed: ClassVar[dict[tuple, bytes]] = {}
    _cached_bytes: ClassVar[int] = 0

    def __init__(self, request: HTTPServerRequest) -> None:
        super().__init__(request)
        self._static = request.path.startswith(("/static/", "/assets/"))
        if not self._static:
            self._gzipping = False
        self._cacheable = self._static and request.method == "GET"
        self._uri = request.uri
        self._replay = False
        self._parts: list[bytes] | None = None
        self._key: tuple | None = None

    def transform_first_chunk(
        self, status_code: int, headers: HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, HTTPHeaders, bytes]:
        key = None
        if self._cacheable and self._gzipping and status_code == 200:
            key = (self._uri, headers.get("Last-Modified"), headers.get("Content-Length"))
            compressed = self._compressed.get(key)
            if compressed is not None:
                # The handler still writes the file; its chunks are dropped below.
                self._replay = True
                headers["Vary"] = "Accept-Encoding"
                headers["Content-Encoding"] = "gzip"
                headers["Content-Length"] = str(len(compressed))
                return status_code, headers, compressed
        if key is not None and None not in key:
            self._key, self._parts = key, []
        status_code, headers, chunk = super().transform_first_chunk(
            status_code, headers, chunk, finishing
        )
        if not self._gzipping:
            self._parts = None
        return status_code, headers, chunk

    def transform_chunk(self, chunk: bytes, finishing: bool) -> bytes:
        if self._replay:
            return b""
        chunk = super().transform_chunk(chunk, finishing)
        if self._parts is not None:
            self._parts.append(chunk)
            if finishing:
                self._keep(b"".join(self._parts))
                self._parts = None
        return chunk

    def _keep(self, compressed: bytes) -> None:
        cls = type(self)
        if cls._cached_bytes + len(compressed) <= self.MAX_CACHED_BYTES:
            cls._compressed[self._key] = compressed
            cls._cached_bytes += len(compressed)
