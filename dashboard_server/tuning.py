"""Process tuning that keeps the server's memory and latency low; nothing a client could see.

Freed heap goes back to the OS after sessions end, the objects that live as long as
the process are kept off the garbage collector, and dashboards' websockets are
compressed, send at once and let a closed page's session go at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import panel as pn
from panel.io.server import WSHandler as PanelWSHandler
from tornado.web import Application

TRIM_DELAY_S = 2.0
#: how often Bokeh discards sessions that ended (default 17 s); a pass over a dict
SESSION_CHECK_MS = 1000


def _load_malloc_trim():
    """glibc's ``malloc_trim``, or None (musl, macOS): hands freed heap pages back to the OS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()
_trim_pending = False


def release_memory(session_context) -> None:
    """After a session is destroyed: once its objects are gone, return the freed heap to the OS.

    A session's page, HTML and Bokeh messages are large strings that glibc serves from
    its heap; freed, they stay in the process (RSS) as fragmented free chunks, so a busy
    server's RSS only ever climbs. One ``malloc_trim`` a little after a burst of session
    ends (coalesced: at most one pending) gives those pages back; it takes milliseconds.
    """
    global _trim_pending
    if _malloc_trim is None or _trim_pending:
        return
    from tornado.ioloop import IOLoop

    def trim() -> None:
        global _trim_pending
        _trim_pending = False
        _malloc_trim(0)

    _trim_pending = True
    IOLoop.current().call_later(TRIM_DELAY_S, trim)


def freeze_startup_objects() -> None:
    """Keep the cyclic garbage collector off everything that exists before serving.

    Panel, Bokeh, polars and SQLAlchemy leave some 200,000 objects that live as long as
    the process; a full collection walks them all (~100 ms on one core, the whole
    server stalled), and Panel asks for one after sessions end, so every few seconds
    on a busy server. Frozen, they are skipped: collections walk what sessions made.
    """
    gc.collect()
    gc.freeze()


#: Bokeh server options: per-message deflate on the websockets (RFC 7692), for the
#: browsers that offer it (all of them). A dashboard's document is some 100 KB of JSON,
#: mostly its HTML; deflate at level 3 brings it to ~13 KB for under a millisecond of CPU,
#: and mem_level 5 keeps an open socket's compressor at ~150 KB rather than ~260 KB. The
#: document holds nothing a third party could set beside a secret to guess it by its
#: compressed size: no token or cookie travels in it.
WEBSOCKET_COMPRESSION = {"websocket_compression_level": 3, "websocket_compression_mem_level": 5}


class DashboardSocket(PanelWSHandler):
    """Panel's websocket, sending at once and letting a closed page's session go at once."""

    def open(self, *args, **kwargs):
        # Bokeh sends each message as several frames (header, metadata, content); with
        # Nagle's algorithm on, every frame after the first waits for the client's
        # delayed ACK, about 40 ms per message: on each page load's document and on
        # each update the client sees.
        self.set_nodelay(True)
        return super().open(*args, **kwargs)

    def on_close(self) -> None:
        connection = getattr(self, "connection", None)
        session = connection.session if connection is not None else None
        super().on_close()  # detaches the connection from its session
        if session is not None and session.connection_count == 0 and not pn.config.reconnect:
            # Without Panel's reconnect, a page whose websocket closed never comes back
            # to its session (a reload opens a new one). Bokeh would keep the session
            # another 15-32 s; asked to expire, it goes at the next check
            # (SESSION_CHECK_MS), and with it the document's memory.
            session.request_expiration()


def install_dashboard_socket(
    app: Application, socket: type[DashboardSocket] = DashboardSocket
) -> None:
    """Serve the dashboards' websockets with ``socket``, a ``DashboardSocket`` (before the
    server starts)."""
    replaced = 0
    for rule in app.wildcard_router.rules:
        if rule.target is PanelWSHandler:
            rule.target = socket
            replaced += 1
    if not replaced:
        raise RuntimeError("panel's websocket route was not found")
