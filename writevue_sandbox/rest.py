"""Generic REST endpoints serving the same seeded orders through every pagination style.

``/rest/{style}/orders`` for style in header_link, json_link, cursor, offset and
page_number; each also filters by ``since`` (an ISO date, ISO datetime or unix
seconds) so the declarative source's incremental parameter can be checked. Credentials:
a key starting ``rest_`` as ``Authorization: Bearer``, an ``X-API-Key`` header or an
``api_key`` query parameter, or HTTP basic with a password starting ``pw_``. The account
(and so the data) follows from the key or the user name; fault plans ride on either
(see ``faults``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
from functools import lru_cache
from urllib.parse import urlencode

from .base import SandboxHandler
from .faults import SEPARATOR

HISTORY_DAYS = 120
STYLES = ("header_link", "json_link", "cursor", "offset", "page_number")
_EPOCH = dt.date(1970, 1, 1)
_CURRENCIES = ("usd", "eur", "gbp")


def account_for(credential: str) -> str:
    """The sandbox account behind a key or user name (fault plans do not change it)."""
    return hashlib.sha256(credential.split(SEPARATOR, 1)[0].encode()).hexdigest()[:12]


@lru_cache(maxsize=4096)
def orders_for_day(account: str, day_no: int) -> tuple[dict, ...]:
    """The day's orders, oldest first. Some fields drift as real APIs do: numeric strings, nulls."""
    rng = random.Random(f"rest:{account}:{day_no}")
    start = dt.datetime.combine(_EPOCH + dt.timedelta(days=day_no), dt.time(), dt.UTC)
    seconds = sorted(rng.randint(0, 86_399) for _ in range(rng.choice((0, 1, 2, 3, 4, 5, 6))))
    orders = []
    for index, second in enumerate(seconds):
        cents = rng.randint(100, 50_000)
        amount: float | str = cents / 100
        if rng.random() < 0.3:
            amount = f"{cents / 100:.2f}"  # some APIs send decimals as strings
        created = start + dt.timedelta(seconds=second)
        orders.append(
            {
                "id": f"ord_{account[:6]}{day_no:06d}{index:02d}",
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "updated_at": (created + dt.timedelta(minutes=rng.randint(0, 90))).isoformat(),
                "amount": amount,
                "items": rng.randint(1, 9),
                "rating": None if rng.random() < 0.25 else rng.randint(1, 5),
                "currency": rng.choice(_CURRENCIES),
                "customer": {"email": f"c{rng.randint(1, 999)}@example.test"},
                "status": "paid",
            }
        )
    return tuple(orders)


def day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def all_orders(account: str, *, today: dt.date | None = None) -> list[dict]:
    today = today or dt.datetime.now(dt.UTC).date()
    last = day_number(today)
    return [
        order
        for day in range(last - HISTORY_DAYS, last + 1)
        for order in orders_for_day(account, day)
    ]


def parse_since(value: str) -> dt.datetime | None:
    value = value.strip()
    try:
        if value.isdigit():
            return dt.datetime.fromtimestamp(int(value), dt.UTC)
        moment = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class RestHandler(SandboxHandler):
    def credential(self) -> tuple[str, str] | None:
        """(kind, credential) from the request, whichever way it came."""
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return "bearer", header[len("Bearer ") :].strip()
        if header.startswith("Basic "):
            try:
                user, _, password = (
                    base64.b64decode(header[len("Basic ") :]).decode().partition(":")
                )
            except (ValueError, UnicodeDecodeError):
                return None
            return ("basic", user) if user and password.startswith("pw_") else None
        if self.request.headers.get("X-API-Key"):
            return "header", self.request.headers["X-API-Key"]
        if self.get_query_argument("api_key", None):
            return "query", self.get_query_argument("api_key")
        return None

    async def get(self, style: str) -> None:
        found = self.credential()
        if found is None or (found[0] != "basic" and not found[1].startswith("rest_")):
            self.count("rest.unauthorised")
            self.set_header("WWW-Authenticate", 'Basic realm="sandbox", Bearer')
            self.write_json(401, {"error": "unauthorized", "message": "missing or bad credentials"})
            return
        kind, credential = found
        if await self.apply_faults(credential, scope="rest"):
            return
        self.count(f"rest.{style}")
        self.count(f"rest.auth.{kind}")
        orders = all_orders(account_for(credential))
        since = self.get_query_argument("since", None)
        if since is not None:
            moment = parse_since(since)
            if moment is None:
                self.write_json(400, {"error": "bad_request", "message": "since is not a date"})
                return
            self.count(f"rest.since={since}")
            orders = [o for o in orders if o["created_at"] >= moment.strftime("%Y-%m-%dT%H:%M:%SZ")]
        try:
            getattr(self, f"_{style}")(orders)
        except ValueError:
            self.write_json(400, {"error": "bad_request", "message": "bad paging parameter"})

    def _int(self, name: str, default: int, low: int, high: int) -> int:
        value = int(self.get_query_argument(name, str(default)))
        if not low <= value <= high:
            raise ValueError(name)
        return value

    def _url_with(self, **changes) -> str:
        args = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        args.update({k: str(v) for k, v in changes.items()})
        return f"{self.request.protocol}://{self.request.host}{self.request.path}?{urlencode(args)}"

    def _header_link(self, orders: list[dict]) -> None:
        per_page = self._int("per_page", 30, 1, 100)
        page = self._int("page", 1, 1, 1_000_000)
        chunk = orders[(page - 1) * per_page : page * per_page]
        links = []
        if page * per_page < len(orders):
            links.append(f'<{self._url_with(page=page + 1)}>; rel="next"')
        last = max(1, -(-len(orders) // per_page))
        links.append(f'<{self._url_with(page=last)}>; rel="last"')
        self.set_header("Link", ", ".join(links))
        self.write_json(200, chunk)

    def _json_link(self, orders: list[dict]) -> None:
        per_page = self._int("per_page", 25, 1, 100)
        after = self.get_query_argument("after", None)
        start = 0
        if after is not None:
            ids = [o["id"] for o in orders]
            if after not in ids:
                raise ValueError("after")
            start = ids.index(after) + 1
        chunk = orders[start : start + per_page]
        more = start + per_page < len(orders)
        self.write_json(
            200,
            {
                "data": {"orders": chunk},
                "links": {"next": self._url_with(after=chunk[-1]["id"]) if more else None},
            },
        )

    def _cursor(self, orders: list[dict]) -> None:
        limit = self._int("limit", 25, 1, 100)
        cursor = self.get_query_argument("cursor", None)
        start = int(base64.urlsafe_b64decode(cursor).decode()) if cursor else 0
        chunk = orders[start : start + limit]
        more = start + limit < len(orders)
        next_cursor = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
        self.write_json(
            200,
            {"orders": chunk, "meta": {"next_cursor": next_cursor if more else None}},
        )

    def _offset(self, orders: list[dict]) -> None:
        limit = self._int("limit", 20, 1, 100)
        offset = self._int("offset", 0, 0, 10_000_000)
        self.write_json(
            200, {"results": orders[offset : offset + limit], "total": len(orders), "extra": {}}
        )

    def _page_number(self, orders: list[dict]) -> None:
        size = self._int("page_size", 20, 1, 100)
        page = self._int("page", 1, 1, 1_000_000)
        self.write_json(
            200,
            {
                "items": orders[(page - 1) * size : page * size],
                "page": page,
                "total_pages": -(-len(orders) // size),
            },
        )


def routes() -> list:
    return [(rf"/rest/({'|'.join(STYLES)})/orders", RestHandler)]
