"""``python -m writevue_sandbox.mail``: a local mail catcher for the demo.

An SMTP server (aiosmtpd) on loopback that accepts every message and keeps it as an
``.eml`` file in a folder, and a small web page that lists them and shows each one's
HTML part as a recipient would see it. Nothing is relayed anywhere.
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import html
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller


class _Keeper:
    """The SMTP handler: every message's bytes go to a new file in ``folder``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.Lock()
        self.count = len(_messages(folder))

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            path = self.folder / f"{self.count:05d}.eml"
        path.write_bytes(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


def _messages(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.eml"))


def _html_part(message: email.message.EmailMessage) -> str:
    """The HTML part as a mail reader shows it: inline images (cid:) in place."""
    part = message.get_body(preferencelist=("html", "plain"))
    if part is None:
        return "<p>(empty message)</p>"
    content = part.get_content()
    if part.get_content_type() == "text/plain":
        return f"<pre>{html.escape(content)}</pre>"
    for inline in message.walk():
        cid = (inline.get("Content-ID") or "").strip("<>")
        if cid and inline.get_content_maintype() == "image":
            data = base64.b64encode(inline.get_payload(decode=True)).decode()
            content = content.replace(
                f"cid:{cid}", f"data:{inline.get_content_type()};base64,{data}"
            )
    return content


def _handler(folder: Path) -> type[BaseHTTPRequestHandler]:
    class Viewer(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: the demo prints what matters
            return

        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            )
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            paths = _messages(folder)
            if self.path in ("/", ""):
                rows = []
                for number, path in enumerate(paths, 1):
                    message = email.message_from_bytes(
                        path.read_bytes(), policy=email.policy.default
                    )
                    rows.append(
                        f'<li><a href="/{number}">{html.escape(str(message["Subject"] or ""))}'
                        f"</a> to {html.escape(str(message['To'] or ''))}"
                        f" ({html.escape(str(message['Date'] or ''))})</li>"
                    )
                body = "".join(rows) or "<li>no messages yet</li>"
                self._send(
                    HTTPStatus.OK,
                    f"<!doctype html><title>Demo mail</title><h1>Demo mail</h1><ol>{body}</ol>",
                )
                return
            try:
                path = paths[int(self.path.strip("/")) - 1]
            except (ValueError, IndexError):
                self._send(HTTPStatus.NOT_FOUND, "<p>no such message</p>")
                return
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            self._send(HTTPStatus.OK, _html_part(message))

    return Viewer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m writevue_sandbox.mail",
        description="A local mail catcher: accepts every message over SMTP, shows them on a page.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--dir", required=True, help="where to keep the messages (.eml)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    controller = Controller(_Keeper(folder), hostname=args.host, port=args.smtp_port)
    controller.start()
    web = ThreadingHTTPServer((args.host, args.http_port), _handler(folder))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    print(
        f"mail catcher: smtp://{args.host}:{args.smtp_port}, "
        f"messages on http://{args.host}:{args.http_port}/ and in {folder}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        web.shutdown()
        controller.stop()


if __name__ == "__main__":
    main()
