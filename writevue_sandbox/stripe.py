"""Stripe-shaped endpoints: list APIs with Bearer keys, limit, starting_after, has_more."""

from __future__ import annotations

import base64
import time

from . import stripe_data
from .base import SandboxHandler

#: what a sandbox Stripe key starts with; anything else is answered 401
KEY_PREFIXES = ("sk_test_", "rk_test_")


def _invalid(message: str, **extra) -> dict:
    return {"error": {"type": "invalid_request_error", "message": message, **extra}}


class StripeHandler(SandboxHandler):
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

    async def authorise(self) -> str | None:
        """The account for a valid key, after faults; None when the request was answered."""
        key = self.api_key()
        if key is None or not key.startswith(KEY_PREFIXES):
            masked = "" if key is None else f" {key[:8]}****{key[-4:]}"
            self.count("stripe.unauthorised")
            self.set_header("WWW-Authenticate", 'Bearer realm="Stripe"')
            self.write_json(401, _invalid(f"Invalid API Key provided:{masked}"))
            return None
        if await self.apply_faults(key, scope="stripe"):
            return None
        return stripe_data.account_for_key(key)


class ListHandler(StripeHandler):
    """One Stripe list endpoint: ``limit``, ``starting_after``, ``created[gte]``, ``has_more``."""

    path = ""
    noun = ""
    objects_for_day = staticmethod(stripe_data.charges_for_day)

    async def get(self) -> None:
        account = await self.authorise()
        if account is None:
            return
        self.count(f"stripe.{self.path.rsplit('/', 1)[-1]}")
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
        result = stripe_data.list_objects(
            self.objects_for_day,
            account,
            now=int(time.time()),
            limit=limit,
            created_gte=created_gte,
            starting_after=starting_after,
        )
        if result is None:
            self.write_json(
                400,
                _invalid(
                    f"No such {self.noun}: '{starting_after}'",
                    code="resource_missing",
                    param="starting_after",
                ),
            )
            return
        page, has_more = result
        self.write_json(
            200, {"object": "list", "url": self.path, "has_more": has_more, "data": page}
        )


class ChargesHandler(ListHandler):
    path, noun = "/v1/charges", "charge"
    objects_for_day = staticmethod(stripe_data.charges_for_day)


class BalanceTransactionsHandler(ListHandler):
    path, noun = "/v1/balance_transactions", "balance transaction"
    objects_for_day = staticmethod(stripe_data.balance_transactions_for_day)


class CustomersHandler(ListHandler):
    path, noun = "/v1/customers", "customer"
    objects_for_day = staticmethod(stripe_data.customers_for_day)


class RefuseWrites(SandboxHandler):
    """Stripe would accept a POST here; the sandbox counts it so tests can prove none arrive."""

    def post(self, *_args) -> None:
        self.count("stripe.write_attempts")
        self.write_json(405, _invalid("the sandbox is read-only"))

    put = patch = delete = post


def routes() -> list:
    return [
        (r"/v1/charges", ChargesHandler),
        (r"/v1/balance_transactions", BalanceTransactionsHandler),
        (r"/v1/customers", CustomersHandler),
        (r"/v1/(.*)", RefuseWrites),
    ]
