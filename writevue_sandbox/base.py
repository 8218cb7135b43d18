"""What every sandbox endpoint shares: JSON answers, request counters and fault injection."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import tornado.web

from . import faults


class SandboxHandler(tornado.web.RequestHandler):
    _body_fault: str | None = None

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
        self.finish(data)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish(json.dumps({"message": self._reason}))

    async def apply_faults(self, credential: str | None, *, scope: str) -> bool:
        """Inject the faults planned for this credential or request.

        Returns True when a fault answered the request (the caller must stop).
        """
        plan = faults.merge(
            faults.from_credential(credential),
            faults.parse(self.request.headers.get("X-Sandbox-Faults")),
            self.application.settings["default_faults"],
        )
        delay = plan.latency_ms / 1000 + self.application.settings["latency_s"]
        if delay:
            await asyncio.sleep(delay)
        await self._wait_while_held()
        if not plan.counts:
            return False
        seen: Counter = self.application.settings["fault_counts"]
        key = (scope, credential or self.request.headers.get("X-Sandbox-Faults", ""))
        for kind in ("timeout", "429", "5xx", "malformed", "truncated"):
            budget = plan.count(kind)
            if not budget or seen[(key, kind)] >= budget:
                continue
            seen[(key, kind)] += 1
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
            self._body_fault = kind
            return False
        return False

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
