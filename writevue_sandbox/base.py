"""What every sandbox endpoint shares: JSON answers, request counters and fault injection."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter

import tornado.iostream
import tornado.web

from . import faults

#: a ``chaos`` plan kills an OAuth access token only once it is this old
EXPIRABLE_AFTER_S = 5.0


def digest(text: str) -> str:
    """A short stable digest: the request counters never hold a credential or a URL."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SandboxHandler(tornado.web.RequestHandler):
    _body_fault: str | None = None
    _dripping: asyncio.Future | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")

    @property
    def counters(self) -> Counter:
        return self.application.settings["counters"]

    def count(self, name: str) -> None:
        self.counters[name] += 1

    def write_json(self, status: int, body) -> None:
        self.write_encoded(status, json.dumps(body))

    def write_encoded(self, status: int, data: str) -> None:
        """Answer with a JSON text already encoded (body faults still apply)."""
        self.set_status(status)
        if status < 400 and self._body_fault == "malformed":
            data = "{this is not json"
        elif status < 400 and self._body_fault == "truncated":
            data = data[: max(1, len(data) // 2)]
        elif status < 400 and self._body_fault == "drip":
            # The handler's coroutine ends here; the drip finishes the answer on the loop
            # (Tornado must not finish it when the coroutine returns).
            self._auto_finish = False
            self._dripping = asyncio.ensure_future(self._drip(data.encode()))
            return
        self.finish(data)

    async def _drip(self, data: bytes, pieces: int = 20) -> None:
        """The body in ``pieces`` flushed parts spread over ``drip_s`` seconds."""
        self.set_header("Content-Length", str(len(data)))
        pause = self.application.settings.get("drip_s", 2.0) / pieces
        size = max(1, -(-len(data) // pieces))
        try:
            for start in range(0, len(data), size):
                self.write(data[start : start + size])
                await self.flush()
                await asyncio.sleep(pause)
            self.finish()
        except tornado.iostream.StreamClosedError:
            pass  # the client gave up waiting: its timeout, as with a real provider

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish(json.dumps({"message": self._reason}))

    async def apply_faults(self, credential: str | None, *, scope: str) -> bool:
        """Inject the faults planned for this credential or request.

        Returns True when a fault answered the request (the caller must stop).
        """
        settings = self.application.settings
        settings["requests"][(scope, digest(credential or ""), digest(self.request.uri))] += 1
        plan = faults.merge(
            faults.from_credential(credential),
            faults.parse(self.request.headers.get("X-Sandbox-Faults")),
            settings["default_faults"],
        )
        if settings.get("faults_off"):
            plan = faults.FaultPlan()
        delay = plan.latency_ms / 1000 + settings["latency_s"]
        if delay:
            await asyncio.sleep(delay)
        await self._wait_while_held()
        if not plan.counts:
            return False
        if plan.count("chaos"):
            return await self._chaos(plan.chaos_percent, scope)
        seen: Counter = settings["fault_counts"]
        key = (scope, credential or self.request.headers.get("X-Sandbox-Faults", ""))
        for kind in ("timeout", "429", "5xx", "malformed", "truncated", "drip"):
            budget = plan.count(kind)
            if not budget or seen[(key, kind)] >= budget:
                continue
            seen[(key, kind)] += 1
            return await self._fault(kind)
        return False

    async def _fault(self, kind: str) -> bool:
        """Answer with the fault ``kind``, or arm a body fault; True when answered."""
        self.count(f"fault.{kind}")
        if kind == "timeout":
            await asyncio.sleep(self.application.settings["hang_s"])
            self.write_json(504, {"message": "the sandbox hung on purpose"})
            return True
        if kind == "429":
            self.set_header("Retry-After", "1")
            self.write_json(429, {"message": "rate limited (sandbox fault)"})
            return True
        if kind == "5xx":
            self.write_json(503, {"message": "service unavailable (sandbox fault)"})
            return True
        if kind == "expired":
            self._expire_access_token()
            return False
        self._body_fault = kind
        return False

    async def _chaos(self, percent: int, scope: str) -> bool:
        """One fault drawn at random for ``percent``% of requests (``chaos``).

        A token endpoint draws only the faults answered before it acts (429, 503, a hang):
        it rotates the refresh token as it answers, so a garbled answer would lose the
        grant for good, at the sandbox as at a provider that rotates. That is a test of
        its own, not a passing fault.
        """
        rng: random.Random = self.application.settings["chaos_rng"]
        if rng.random() * 100 >= percent:
            return False
        if scope.endswith(".token"):
            kinds = ["429", "5xx", "timeout"]
        else:
            kinds = [k for k in faults.CHAOS_KINDS if k != "expired" or self._expirable()]
        return await self._fault(rng.choice(kinds))

    def _expirable(self) -> bool:
        """Does the request carry a sandbox OAuth access token old enough to die early?

        A token dies at most once in its life, and not in its first seconds: a client
        that refreshed a dead token and was refused the new one at once would rightly
        take the grant for dead (a provider does not do that)."""
        entry = self._access_token_entry()
        if entry is None:
            return False
        issued = entry[1] - float(self.application.settings.get("oauth_access_ttl_s", 3600))
        return time.time() - issued >= EXPIRABLE_AFTER_S

    def _bearer(self) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() in ("bearer", "token") else ""

    def _access_token_entry(self):
        from . import oauth  # oauth's handlers build on this module

        return oauth._store(self.application.settings).access.get(self._bearer())

    def _expire_access_token(self) -> None:
        """The request's OAuth access token dies now (this answer still goes out), as when
        a provider ends a token before its stated lifetime: the next request is refused."""
        from . import oauth

        token, entry = self._bearer(), self._access_token_entry()
        if entry is not None:
            grant_id, _, dead = entry
            oauth._store(self.application.settings).access[token] = (grant_id, 0.0, dead)

    async def _wait_while_held(self) -> None:
        """Tests hold every answer while ``settings["hold"]`` (an Event) is unset, to keep a
        client's request in flight while something else happens: an event, not a delay."""
        gate = self.application.settings.get("hold")
        if gate is None or gate.is_set():
            return
        self.count("held")
        while not gate.is_set():
            await asyncio.sleep(0.01)


class NotFoundHandler(SandboxHandler):
    def prepare(self) -> None:
        self.write_json(404, {"message": "Not Found"})
