"""The benchmarks' sandbox: the provider sandbox plus a fixed-size endpoint of N pages per account.

``GET /bench/events?page=P&per_page=100`` with ``Authorization: Bearer bench_<anything>``
answers ``{"data": [...], "page": P, "total_pages": T}``. Every account has the same
number of events (``bench_records``, default 1,000), spread over the last 30 days, so
WriteVue, plain httpx and dlt read exactly the same pages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
from functools import lru_cache

from writevue_sandbox.base import SandboxHandler
from writevue_sandbox.server import serve_forever

CATEGORIES = ("alpha", "beta", "gamma", "delta")
PER_PAGE = 100


def bench_key(index: int) -> str:
    """The API key of the benchmark's ``index``-th account."""
    return f"bench_{index:05d}"


def account_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def prepare_accounts(count: int, total: int) -> None:
    """Generate and encode the first ``count`` benchmark accounts' pages up front.

    A provider's data exists before anyone reads it; generating it on first read would
    bill the sandbox's data making to the benchmark's shared CPU.
    """
    today = dt.datetime.now(dt.UTC).date()
    pages = max(1, math.ceil(total / PER_PAGE))
    for index in range(count):
        account = account_of(bench_key(index))
        for page in range(1, pages + 1):
            page_json(account, total, today, page, PER_PAGE)


@lru_cache(maxsize=64)
def events_for(account: str, total: int, today: dt.date) -> tuple[dict, ...]:
    rng = random.Random(f"bench:{account}")
    start = dt.datetime.combine(today - dt.timedelta(days=29), dt.time(), dt.UTC)
    return tuple(
        {
            "id": f"ev_{account}_{index:06d}",
            "created_at": (start + dt.timedelta(seconds=rng.randint(0, 30 * 86_400 - 1)))
            .isoformat()
            .replace("+00:00", "Z"),
            "amount": rng.randint(100, 10_000) / 100,
            "category": CATEGORIES[index % len(CATEGORIES)],
            "note": "x" * 40,
        }
        for index in range(total)
    )


class EventsHandler(SandboxHandler):
    async def get(self) -> None:
        header = self.request.headers.get("Authorization", "")
        key = header.removeprefix("Bearer ").strip()
        if not header.startswith("Bearer ") or not key.startswith("bench_"):
            self.write_json(401, {"message": "Bad credentials"})
            return
        if await self.apply_faults(key, scope="bench"):
            return
        try:
            page = int(self.get_query_argument("page", "1"))
            per_page = int(self.get_query_argument("per_page", str(PER_PAGE)))
        except ValueError:
            self.write_json(400, {"message": "page and per_page must be integers"})
            return
        if page < 1 or not 1 <= per_page <= 100:
            self.write_json(400, {"message": "page >= 1 and 1 <= per_page <= 100"})
            return
        self.count("bench.events")
        account = account_of(key)
        total = self.application.settings.get("bench_records", 1000)
        today = dt.datetime.now(dt.UTC).date()
        self.write_encoded(200, page_json(account, total, today, page, per_page))


@lru_cache(maxsize=200_000)
def page_json(account: str, total: int, today: dt.date, page: int, per_page: int) -> str:
    """One page, encoded once: the benchmark measures its client, not this server."""
    events = events_for(account, total, today)
    pages = max(1, math.ceil(total / per_page))
    chunk = events[(page - 1) * per_page : page * per_page]
    return json.dumps({"data": list(chunk), "page": page, "total_pages": pages})


def routes() -> list:
    return [(r"/bench/events", EventsHandler)]


def serve(
    port: int, *, latency_s: float = 0.0, bench_records: int = 1000, bench_accounts: int = 0
) -> None:
    """The sandbox with ``/bench/events`` mounted; ``bench_accounts`` accounts made up front."""
    if bench_accounts:
        prepare_accounts(bench_accounts, bench_records)
    serve_forever(
        "127.0.0.1",
        port,
        latency_s=latency_s,
        extra_routes=routes(),
        bench_records=bench_records,
    )
