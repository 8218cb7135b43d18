"""Fault knobs for the sandbox, per account or per request.

A fault plan is a comma-separated list such as ``429x2,5xx3,latency50,malformed``.
It reaches the sandbox in two ways:

- per account: appended to the credential after ``__f_`` (``sk_test_acme__f_429x2``),
  so a connector under test needs no special code and every process sees the same plan;
- per request: the ``X-Sandbox-Faults`` header, for tests that call the sandbox directly.

Counted faults (``429x2``) hit the first N requests of that credential, then stop, so
retries can succeed; an uncounted one (``malformed``) hits every request.

Two knobs are not counted:

- ``drip``: the body arrives in small pieces over ``drip_s`` seconds (an application
  setting, default 2 s), as from a slow or congested provider;
- ``chaosN``: N% of the credential's requests (default 30%) each get one fault drawn at
  random from ``CHAOS_KINDS`` (``expired`` only where the request carries a sandbox OAuth
  access token: the token dies, so the next request with it is refused; a token endpoint
  draws only 429, 503 and a hang, see ``SandboxHandler._chaos``). The soak runs on it;
  the application setting ``faults_off`` switches every planned fault off at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALWAYS = 1_000_000_000
_ITEM = re.compile(
    r"^(latency|429|5xx|timeout|malformed|truncated|drip|expired|revoked|chaos)(?:x?(\d+))?$"
)
SEPARATOR = "__f_"
#: what a ``chaos`` request may get, each as likely as the others
CHAOS_KINDS = ("429", "5xx", "timeout", "malformed", "truncated", "drip", "expired")
#: the share of requests ``chaos`` without a number hits, in percent
CHAOS_DEFAULT_PERCENT = 30


@dataclass(frozen=True)
class FaultPlan:
    latency_ms: int = 0
    counts: tuple[tuple[str, int], ...] = ()

    def count(self, kind: str) -> int:
        return dict(self.counts).get(kind, 0)

    def __bool__(self) -> bool:
        return bool(self.latency_ms or self.counts)

    @property
    def chaos_percent(self) -> int:
        """The share of requests ``chaos`` hits (0 when the plan has no ``chaos``)."""
        number = self.count("chaos")
        return CHAOS_DEFAULT_PERCENT if number == ALWAYS else min(number, 100)


def parse(text: str | None) -> FaultPlan:
    if not text:
        return FaultPlan()
    latency = 0
    counts: dict[str, int] = {}
    for item in re.split(r"[,.]", text):
        item = item.strip().lower()
        if not item:
            continue
        match = _ITEM.match(item)
        if match is None:
            continue  # unknown knobs are ignored, like unknown query parameters
        kind, number = match.group(1), match.group(2)
        if kind == "latency":
            latency = int(number or 0)
        else:
            counts[kind] = int(number) if number else ALWAYS
    return FaultPlan(latency_ms=latency, counts=tuple(sorted(counts.items())))


def from_credential(credential: str | None) -> FaultPlan:
    if not credential or SEPARATOR not in credential:
        return FaultPlan()
    return parse(credential.split(SEPARATOR, 1)[1])


def with_faults(credential: str, plan: str) -> str:
    """A sandbox credential that carries a fault plan."""
    return f"{credential}{SEPARATOR}{plan}"


def merge(*plans: FaultPlan) -> FaultPlan:
    latency = max((p.latency_ms for p in plans), default=0)
    counts: dict[str, int] = {}
    for plan in plans:
        for kind, number in plan.counts:
            counts[kind] = max(counts.get(kind, 0), number)
    return FaultPlan(latency_ms=latency, counts=tuple(sorted(counts.items())))
