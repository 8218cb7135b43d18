"""What the server refuses before any route runs: an address too long to serve (414), a
request head too large or too malformed for Tornado to read, and the one page every such
refusal shows.

A dashboard address is a few hundred bytes; anything over ``MAX_ADDRESS`` is refused
ahead of every route (the gate's too), so no lookup or app code runs for it. Tornado
reads a request's head only up to ``max_header_size`` (64 KiB) and past that closes the
connection without a word; here such a connection gets the same 414 page first, then
what the client still sends is read and dropped for a moment ("lingering close"), so the
answer is not lost to a reset while the client is still sending. A head Tornado cannot
parse gets its bare ``400 Bad Request`` line replaced by the 400 page and headers.
"""

from __future__ import annotations

import html
import logging
import socket
import sys

from tornado import gen, routing
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError, UnsatisfiableReadError
from tornado.web import Application, RequestHandler

from .headers import security_headers
from .redaction import truncate_ip

#: the longest address (path and query) served; a dashboard's is a few hundred bytes
MAX_ADDRESS = 8 * 1024
#: after answering a request too large to read: how long, and how much more, to drop
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * 1024 * 1024
#: connections answered that way at once; past it they are closed as Tornado does
MAX_LINGERING = 64

TOO_LONG = "Request too long"
TOO_LONG_TEXT = "This address is too long. Open the dashboard link you were given as it is."
_STYLE = (
    "body{font-family:system-ui,sans-serif;color:#1d2433;background:#f4f6fa;display:flex;"
    "align-items:center;justify-content:center;height:100vh;margin:0}"
    "main{max-width:36rem;padding:1rem}"
)
_log = logging.getLogger("tornado.access")


def refusal_page(title: str, message: str) -> bytes:
    """The product's page for a refused request, in the style of the 404 page."""
    title, message = html.escape(title), html.escape(message)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>"
        f"<body><main><h1>{title}</h1><p>{message}</p></main></body></html>\n"
    ).encode()


def refuse(handler: RequestHandler, status: int, title: str, message: str) -> None:
    """Answer ``status`` with the refusal page; the security headers come from the transform."""
    handler.set_status(status)
    handler.set_header("Content-Type", "text/html; charset=utf-8")
    handler.finish(refusal_page(title, message))


class LongAddress(routing.Matcher):
    """Any request whose address (path and query) is longer than ``MAX_ADDRESS``."""

    def match(self, request) -> dict | None:
        return {} if len(request.uri or "") > MAX_ADDRESS else None


class LongAddressHandler(RequestHandler):
    """414 with the refusal page, for every method."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def prepare(self) -> None:
        refuse(self, 414, TOO_LONG, TOO_LONG_TEXT)


def _raw_answer(status: str, title: str, message: str) -> bytes:
    body = refusal_page(title, message)
    headers = {
        **security_headers(),
        "Content-Type": "text/html; charset=utf-8",
        "Content-Length": str(len(body)),
        "Connection": "close",
    }
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


#: the whole answer to a request too large to read, written straight to its socket
TOO_LARGE_ANSWER = _raw_answer("414 URI Too Long", TOO_LONG, TOO_LONG_TEXT)
#: what Tornado writes for a request head it cannot parse, and what goes out instead
TORNADO_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
BAD_REQUEST_ANSWER = _raw_answer(
    "400 Bad Request",
    "Bad request",
    "This request could not be read. Open the dashboard link you were given as it is.",
)
_lingering = 0


def _error(exc_info) -> BaseException | None:
    """The exception an ``IOStream.close(exc_info=...)`` call carries, if any."""
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        return exc_info[1]
    return sys.exc_info()[1] if exc_info else None


async def _answer_and_linger(sock: socket.socket) -> None:
    global _lingering
    stream = None
    try:
        stream = IOStream(sock)
        await stream.write(TOO_LARGE_ANSWER)
        sock.shutdown(socket.SHUT_WR)
        deadline = IOLoop.current().time() + LINGER_SECONDS
        dropped = 0
        while dropped < LINGER_BYTES:
            chunk = await gen.with_timeout(
                deadline,
                stream.read_bytes(64 * 1024, partial=True),
                quiet_exceptions=(StreamClosedError,),
            )
            dropped += len(chunk)
    except (StreamClosedError, TimeoutError, OSError):
        pass  # the client has gone, or had its moment
    except Exception as error:  # never a traceback for a client's oversized request
        logging.getLogger("writevue.dashboard").warning("answering a large request: %r", error)
    finally:
        if stream is not None:
            stream.close()
        else:
            sock.close()
        _lingering -= 1


def _answer_when_too_large(stream: IOStream, address) -> None:
    """Make ``stream`` answer 414 before Tornado closes it for a head it would not read.

    IOStream closes itself, with ``UnsatisfiableReadError``, when a read with a size
    limit (the request head's) runs over; the one moment left to answer is that close.
    """
    close = stream.close

    def close_with_an_answer(exc_info=False) -> None:
        global _lingering
        too_large = isinstance(_error(exc_info), UnsatisfiableReadError)
        if too_large and not stream.closed() and not stream.writing():
            ip = truncate_ip(address[0]) if isinstance(address, tuple) else "-"
            _log.warning("414 request too large to read (%s)", ip)
            if _lingering < MAX_LINGERING:
                try:
                    # A second descriptor keeps the connection open once Tornado closes its own.
                    duplicate = stream.socket.dup()
                except OSError:
                    duplicate = None  # out of descriptors: close without an answer, as Tornado
                if duplicate is not None:
                    _lingering += 1
                    IOLoop.current().add_callback(_answer_and_linger, duplicate)
        close(exc_info)

    stream.close = close_with_an_answer


def _answer_unparsable_with_the_page(stream: IOStream) -> None:
    """Tornado answers a head it cannot parse with a bare status line; send the page."""
    write = stream.write

    def write_the_page(data, *args, **kwargs):
        if len(data) == len(TORNADO_BAD_REQUEST) and data == TORNADO_BAD_REQUEST:
            data = BAD_REQUEST_ANSWER
        return write(data, *args, **kwargs)

    stream.write = write_the_page


def install_request_limits(server, app: Application) -> None:
    """Refuse long addresses ahead of every route of ``app``, and answer requests too
    large to read on ``server`` (a Bokeh server, before it starts)."""
    app.default_router.rules.insert(0, routing.Rule(LongAddress(), LongAddressHandler))
    # Bokeh's Server keeps its Tornado HTTPServer in ``_http``, with no public accessor;
    # checked, so an upgrade fails loudly rather than leaving big requests unanswered.
    http = getattr(server, "_http", None)
    if not isinstance(http, HTTPServer):
        raise RuntimeError("bokeh's Server no longer exposes _http; request limits not installed")
    handle_stream = http.handle_stream

    def handle_stream_answering(stream: IOStream, address):
        # Only on plain TCP: under TLS (normally ended by nginx in front) the socket
        # carries records, not bytes that could be written to it directly.
        if not isinstance(stream, SSLIOStream):
            _answer_when_too_large(stream, address)
            _answer_unparsable_with_the_page(stream)
        return handle_stream(stream, address)

    http.handle_stream = handle_stream_answering
