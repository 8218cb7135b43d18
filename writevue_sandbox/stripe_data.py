"""Deterministic Stripe-shaped objects for a sandbox account.

Every (account, day) pair seeds its own generator, so a day's objects are the same
whenever they are asked for, and the data grows by itself as days pass. Balance
transactions are derived from the charges (a charge, and a refund where one was made),
as Stripe derives them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Callable
from functools import lru_cache

HISTORY_DAYS = 730
_EPOCH = dt.date(1970, 1, 1)


def account_for_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


def stripe_fee(amount: int) -> int:
    return round(amount * 0.029) + 30


@lru_cache(maxsize=4096)
def charges_for_day(account: str, day_no: int) -> tuple[dict, ...]:
    """The day's charges, newest first, as Stripe's list API orders them."""
    rng = random.Random(f"stripe:{account}:{day_no}")
    day_start = day_no * 86_400
    count = rng.randint(4, 24)
    charges = []
    for index in range(count):
        amount = rng.randint(500, 40_000)
        currency = "eur" if rng.random() < 0.2 else "usd"
        succeeded = rng.random() > 0.05
        refunded = succeeded and rng.random() < 0.06
        charges.append(
            {
                "id": f"ch_{account[:10]}{day_no:06d}{index:03d}",
                "object": "charge",
                "amount": amount,
                "amount_captured": amount if succeeded else 0,
                "amount_refunded": amount if refunded else 0,
                "balance_transaction": f"txn_{account[:10]}{day_no:06d}{index:03d}"
                if succeeded
                else None,
                "currency": currency,
                "created": day_start + rng.randint(0, 86_000),
                "customer": f"cus_{account[:6]}{rng.randint(1, 400):05d}",
                "livemode": False,
                "paid": succeeded,
                "refunded": refunded,
                "status": "succeeded" if succeeded else "failed",
                "description": None,
                "metadata": {},
            }
        )
    return _newest_first(charges)


@lru_cache(maxsize=4096)
def balance_transactions_for_day(account: str, day_no: int) -> tuple[dict, ...]:
    """A charge transaction per succeeded charge, and a refund transaction per refund."""
    transactions = []
    for charge in charges_for_day(account, day_no):
        if charge["status"] != "succeeded":
            continue
        amount, fee = charge["amount"], stripe_fee(charge["amount"])
        base = {
            "object": "balance_transaction",
            "currency": charge["currency"],
            "status": "available",
            "exchange_rate": None,
            "fee_details": [{"amount": fee, "currency": charge["currency"], "type": "stripe_fee"}],
        }
        transactions.append(
            base
            | {
                "id": charge["balance_transaction"],
                "amount": amount,
                "fee": fee,
                "net": amount - fee,
                "created": charge["created"],
                "available_on": charge["created"] + 2 * 86_400,
                "type": "charge",
                "reporting_category": "charge",
                "source": charge["id"],
            }
        )
        if charge["refunded"]:
            transactions.append(
                base
                | {
                    "id": "txr" + charge["balance_transaction"][3:],
                    "amount": -amount,
                    "fee": 0,
                    "fee_details": [],
                    "net": -amount,
                    "created": min(charge["created"] + 300, day_no * 86_400 + 86_399),
                    "available_on": charge["created"] + 2 * 86_400,
                    "type": "refund",
                    "reporting_category": "refund",
                    "source": "re" + charge["id"][2:],
                }
            )
    return _newest_first(transactions)


@lru_cache(maxsize=4096)
def customers_for_day(account: str, day_no: int) -> tuple[dict, ...]:
    rng = random.Random(f"stripe-customers:{account}:{day_no}")
    day_start = day_no * 86_400
    return _newest_first(
        [
            {
                "id": f"cus_{account[:10]}{day_no:06d}{index:03d}",
                "object": "customer",
                "created": day_start + rng.randint(0, 86_399),
                # Sandbox customers are not people: no name, no email.
                "email": None,
                "name": None,
                "delinquent": False,
                "livemode": False,
                "metadata": {},
            }
            for index in range(rng.randint(0, 6))
        ]
    )


def _newest_first(objects: list[dict]) -> tuple[dict, ...]:
    return tuple(sorted(objects, key=lambda item: (item["created"], item["id"]), reverse=True))


def _day_of_id(object_id: str, account: str) -> int | None:
    """Sandbox ids embed their day: prefix, 10 account characters, 6-digit day, 3-digit index."""
    prefix, _, rest = object_id.partition("_")
    if not prefix or not rest.startswith(account[:10]) or len(rest) != 19:
        return None
    digits = rest[10:]
    return int(digits[:6]) if digits.isdigit() else None


def list_objects(
    objects_for_day: Callable[[str, int], tuple[dict, ...]],
    account: str,
    *,
    now: int,
    limit: int,
    created_gte: int | None,
    starting_after: str | None,
) -> tuple[list[dict], bool] | None:
    """One page, newest first; None when ``starting_after`` names no object of this list."""
    today = now // 86_400
    oldest = today - HISTORY_DAYS
    if created_gte is not None:
        oldest = max(oldest, created_gte // 86_400)
    day = today
    if starting_after is not None:
        after_day = _day_of_id(starting_after, account)
        if after_day is None:
            return None
        day = after_day
    page: list[dict] = []
    while day >= oldest:
        objects = objects_for_day(account, day)
        if starting_after is not None and day == after_day:
            ids = [item["id"] for item in objects]
            if starting_after not in ids:
                return None
            objects = objects[ids.index(starting_after) + 1 :]
        for item in objects:
            if item["created"] > now:
                continue
            if created_gte is not None and item["created"] < created_gte:
                continue
            if len(page) == limit:
                return page, True
            page.append(item)
        day -= 1
    return page, False
