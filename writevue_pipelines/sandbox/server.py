"""The sandbox provider's HTTP server (Tornado), runnable standalone or in a thread."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections import Counter

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from . import stripe_data


class _Base(tornado.web.RequestHandler):
    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def count(self, name: str) -> None:
        self.application.settings["counters"][name] += 1

    def write_json(self, status: int, body: dict) -> None:
        self.set_status(status)
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish(json.dumps({"error": {"type": "api_error", "message": self._reason}}))


class StripeHandler(_Base):
    """Stripe's list API wire format: Bearer key, limit, starting_after, has_more, created[gte]."""

    def api_key(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[len("Bearer ") :].strip() or None
        if header.startswith("Basic "):
            # Stripe also accepts the key as the basic-auth user name.
            try:
                user = base64.b64decode(header[len("Basic ") :]).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                return None
            return user or None
        return None

    def authorise(self) -> str | None:
        key = self.api_key()
        if key is None or not key.startswith(("sk_test_", "rk_test_")):
            masked = "" if key is None else f" {key[:8]}****{key[-4:]}"
            self.count("stripe.unauthorised")
            self.set_header("WWW-Authenticate", 'Bearer realm="Stripe"')
            self.write_json(
                401,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"Invalid API Key provided:{masked}",
                    }
                },
            )
            return None
        return stripe_data.account_for_key(key)


class ChargesHandler(StripeHandler):
    async def get(self) -> None:
        account = self.authorise()
        if account is None:
            return
        self.count("stripe.charges")
        delay = self.application.settings["latency_s"]
        if delay:
            await asyncio.sleep(delay)
        try:
            limit = int(self.get_query_argument("limit", "10"))
            created_gte = self.get_query_argument("created[gte]", None)
            created_gte = int(created_gte) if created_gte is not None else None
        except ValueError:
            self.write_json(400, _invalid("limit and created[gte] must be integers"))
            return
        if not 1 <= limit <= 100:
            self.write_json(400, _invalid("limit must be between 1 and 100"))
            return
        starting_after = self.get_query_argument("starting_after", None)
        result = stripe_data.list_charges(
            account,
            now=int(time.time()),
            limit=limit,
            created_gte=created_gte,
            starting_after=starting_after,
        )
        if result is None:
            self.write_json(
                400,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "resource_missing",
                        "param": "starting_after",
                        "message": f"No such charge: '{starting_after}'",
                    }
                },
            )
            return
        page, has_more = result
        self.write_json(
            200, {"object": "list", "url": "/v1/charges", "has_more": has_more, "data": page}
        )


class RefuseWrites(_Base):
    """Stripe would accept a POST here; the sandbox records it so tests can prove none arrive."""

    def post(self, *_args) -> None:
        self.count("stripe.write_attempts")
        self.write_json(405, _invalid("the sandbox is read-only"))


class HealthHandler(_Base):
    def get(self) -> None:
        self.write_json(200, {"ok": True, "counters": dict(self.application.settings["counters"])})


class NotFoundHandler(_Base):
    def prepare(self) -> None:
        self.write_json(404, _invalid("Unrecognized request URL"))


def _invalid(message: str) -> dict:
    return {"error": {"type": "invalid_request_error", "message": message}}


def make_app(*, latency_s: float = 0.0) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/v1/charges", ChargesHandler),
            (r"/v1/charges/?(.*)", RefuseWrites),
            (r"/_sandbox/health", HealthHandler),
        ],
        default_handler_class=NotFoundHandler,
        counters=Counter(),
        latency_s=latency_s,
        # The sandbox's own request log would only repeat what the tests assert on.
        log_function=lambda handler: None,
    )


class SandboxServer:
    """The sandbox on a loopback port, in a background thread with its own event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_s: float = 0.0):
        self.host = host
        self.app = make_app(latency_s=latency_s)
        self._sockets = bind_sockets(port, address=host)
        self.port = self._sockets[0].getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def counters(self) -> Counter:
        return self.app.settings["counters"]

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(target=self._run, name="writevue-sandbox", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        server = HTTPServer(self.app)
        server.add_sockets(self._sockets)
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.stop()
            self._loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(host: str = "127.0.0.1", port: int = 8765) -> None:
    async def main() -> None:
        server = HTTPServer(make_app())
        server.listen(port, address=host)
        await asyncio.Event().wait()

    asyncio.run(main())
