"""Static files: the branding in ``assets/``, robots.txt, and each bundle gzipped only once."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.web import GZipContentEncoding, RequestHandler

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


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
