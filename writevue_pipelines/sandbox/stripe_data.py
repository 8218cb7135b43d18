"""Deterministic Stripe-shaped charges for a sandbox account.

Every (account, day) pair seeds its own generator, so a day's charges are the
same whenever they are asked for, and the data grows by itself as days pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from functools import lru_cache

HISTORY_DAYS = 730
_EPOCH = dt.date(1970, 1, 1)


def account_for_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def day_number(day: dt.date) -> int:
    return (day - _EPOCH).days


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
                "currency": currency,
                "created": day_start + rng.randint(0, 86_399),
                "customer": f"cus_{account[:6]}{rng.randint(1, 400):05d}",
                "livemode": False,
                "paid": succeeded,
                "refunded": refunded,
                "status": "succeeded" if succeeded else "failed",
                "description": None,
                "metadata": {},
            }
        )
    charges.sort(key=lambda charge: (charge["created"], charge["id"]), reverse=True)
    return tuple(charges)


def day_of_charge_id(charge_id: str, account: str) -> tuple[int, str] | None:
    prefix = f"ch_{account[:10]}"
    if not charge_id.startswith(prefix) or len(charge_id) != len(prefix) + 9:
        return None
    digits = charge_id[len(prefix) :]
    if not digits.isdigit():
        return None
    return int(digits[:6]), charge_id


def list_charges(
    account: str,
    *,
    now: int,
    limit: int,
    created_gte: int | None,
    starting_after: str | None,
) -> tuple[list[dict], bool] | None:
    """One page of charges, newest first; None when ``starting_after`` is unknown."""
    today = now // 86_400
    oldest = today - HISTORY_DAYS
    if created_gte is not None:
        oldest = max(oldest, created_gte // 86_400)
    day = today
    after: tuple[int, str] | None = None
    if starting_after is not None:
        after = day_of_charge_id(starting_after, account)
        if after is None:
            return None
        day = after[0]
    page: list[dict] = []
    while day >= oldest:
        charges = charges_for_day(account, day)
        if after is not None and day == after[0]:
            ids = [charge["id"] for charge in charges]
            if after[1] not in ids:
                return None
            charges = charges[ids.index(after[1]) + 1 :]
        for charge in charges:
            if charge["created"] > now:
                continue
            if created_gte is not None and charge["created"] < created_gte:
                continue
            if len(page) == limit:
                return page, True
            page.append(charge)
        day -= 1
    return page, False
