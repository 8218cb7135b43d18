"""A fixed-size endpoint for the refresh benchmark: N pages of 100 events per account.

``GET /bench/events?page=P&per_page=100`` with ``Authorization: Bearer bench_<anything>``
answers ``{"data": [...], "page": P, "total_pages": T}``. Every account has the same
number of events (``bench_records``, default 1,000), spread over the last 30 days, so
WriteVue, plain httpx and dlt read exactly the same pages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import random
from functools import lru_cache

from .base import SandboxHandler

CATEGORIES = ("alpha", "beta", "gamma", "delta")


@lru_cache(maxsize=2048)
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
            per_page = int(self.get_query_argument("per_page", "100"))
        except ValueError:
            self.write_json(400, {"message": "page and per_page must be integers"})
            return
        if page < 1 or not 1 <= per_page <= 100:
            self.write_json(400, {"message": "page >= 1 and 1 <= per_page <= 100"})
            return
        self.count("bench.events")
        account = hashlib.sha256(key.encode()).hexdigest()[:12]
        total = self.application.settings.get("bench_records", 1000)
        events = events_for(account, total, dt.datetime.now(dt.UTC).date())
        pages = max(1, math.ceil(total / per_page))
        chunk = events[(page - 1) * per_page : page * per_page]
        self.write_json(200, {"data": list(chunk), "page": page, "total_pages": pages})


def routes() -> list:
    return [(r"/bench/events", EventsHandler)]
