"""The sandbox provider's HTTP server (Tornado), runnable standalone or in a thread."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Sequence

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from . import faults as fault_plans
from . import ga4, github, google_oauth, oauth, rest, stripe
from .base import NotFoundHandler, SandboxHandler, digest


class HealthHandler(SandboxHandler):
    def get(self) -> None:
        self.write_json(200, {"ok": True, "counters": dict(self.counters)})


class CookiesHandler(SandboxHandler):
    """Sets a session cookie on every answer and says which cookie the request carried.

    Real providers' edges set cookies on API responses; clients must not replay them.
    """

    def get(self) -> None:
        received = self.request.headers.get("Cookie")
        self.set_header("Set-Cookie", "sandbox_session=s3ss10n; Path=/; HttpOnly")
        self.write_json(200, {"received": received})


def make_app(
    *,
    latency_s: float = 0.0,
    hang_s: float = 5.0,
    faults: str = "",
    drip_s: float = 2.0,
    chaos_seed: int | None = None,
    extra_routes: Sequence[tuple] = (),
    **extra_settings,
) -> tornado.web.Application:
    """The sandbox: every provider's routes, shared counters and fault knobs.

    ``latency_s`` delays every answer; ``faults`` is a default fault plan for every
    request (see ``faults``); ``hang_s`` is how long a ``timeout`` fault hangs,
    ``drip_s`` how long a ``drip`` body takes; ``chaos_seed`` seeds the draws of
    ``chaos`` plans.
    ``extra_routes`` and ``extra_settings`` let a caller (the benchmarks) mount
    endpoints of its own beside the providers'.
    """
    return tornado.web.Application(
        [
            *stripe.routes(),
            *oauth.routes(),
            *google_oauth.routes(),
            *ga4.routes(),
            *rest.routes(),
            *github.routes(),
            *extra_routes,
            (r"/_sandbox/health", HealthHandler),
            (r"/_sandbox/cookies", CookiesHandler),
        ],
        default_handler_class=NotFoundHandler,
        counters=Counter(),
        fault_counts=Counter(),
        # arrivals per (provider, credential digest, URL digest), faulted or not
        requests=Counter(),
        chaos_rng=random.Random(chaos_seed),
        drip_s=drip_s,
        default_faults=fault_plans.parse(faults),
        latency_s=latency_s,
        hang_s=hang_s,
        **extra_settings,
        # The sandbox's own request log would only repeat what the tests assert on.
        log_function=lambda handler: None,
    )


class SandboxServer:
    """The sandbox on a loopback port, in a background thread with its own event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **app_settings):
        self.host = host
        self.app = make_app(**app_settings)
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

    def requests_per_url(self, credential: str) -> Counter:
        """How many times each URL arrived with ``credential`` (by URL digest), any provider."""
        mine = digest(credential)
        found: Counter = Counter()
        for (_, who, url), count in list(self.app.settings["requests"].items()):
            if who == mine:
                found[url] += count
        return found

    def reset_requests(self) -> None:
        self.app.settings["requests"].clear()

    def faults_off(self, off: bool = True) -> None:
        """Every planned fault off (or on again) for every credential, at once."""
        self.app.settings["faults_off"] = off

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


def serve_forever(host: str = "127.0.0.1", port: int = 8765, **app_settings) -> None:
    async def main() -> None:
        server = HTTPServer(make_app(**app_settings))
        server.listen(port, address=host)
        await asyncio.Event().wait()

    asyncio.run(main())
