"""``/unsubscribe/<token>``: the link at the foot of every scorecard and alert.

GET only asks (a page with one button): mail scanners and link previews follow every
link in a message, and must not unsubscribe anyone. It looks nothing up, so it says
nothing about the token. POST unsubscribes: the page's button, or a mail client's
one-click request (RFC 8058: ``List-Unsubscribe=One-Click`` in the body, no cookie,
which is why there is no XSRF check: the token itself is the secret). A spent, unknown
or malformed token gets one neutral page; an address that keeps guessing gets 429 for
its failures from a limiter of the unsubscribe page's own. The token never reaches a
log: ``redaction.scrub`` replaces it in every record of the process, the request log's
line included.
"""

from __future__ import annotations

import html
import logging

from tornado.ioloop import IOLoop
from tornado.web import RequestHandler

from writevue_pipelines.notifications.unsubscribe import spend
from writevue_pipelines.runtime import Runtime

from .branding import BrandView, brand_name, default_brand_view, load_brand_view
from .connect import page
from .gate import reject
from .limiter import FailureLimiter

ROUTE = r"/unsubscribe/([A-Za-z0-9_-]{1,128})"
DONE = "You will no longer receive these messages"
NEUTRAL = (
    "This link was used already or does not work. If you unsubscribed with it, you will "
    "receive no more of these messages."
)
_log = logging.getLogger("writevue.unsubscribe")


class UnsubscribeHandler(RequestHandler):
    def initialize(self, runtime: Runtime, limiter: FailureLimiter) -> None:
        self.runtime, self.limiter = runtime, limiter

    def _default_brand(self) -> BrandView | None:
        try:
            return default_brand_view(self.runtime)
        except Exception:
            _log.exception("the default brand could not be read")
            return None

    def get(self, token: str) -> None:
        del token  # nothing is looked up before the button is pressed
        body = (
            "<p>Stop receiving these scorecards and alerts at this address?</p>"
            '<form method="post"><input type="hidden" name="confirm" value="1">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        self.finish(page("Unsubscribe", body, brand=self._default_brand()))

    async def post(self, token: str) -> None:
        tenant_id = await IOLoop.current().run_in_executor(None, self._spend, token)
        if tenant_id is None:
            if self.limiter.fail(self.request.remote_ip):
                reject(self, 429)
                return
            body = f"<p>{html.escape(NEUTRAL)}</p>"
            self.finish(page("Unsubscribe", body, brand=self._default_brand()))
            return
        brand = self._brand(tenant_id)
        body = f"<p>{DONE} from {html.escape(brand_name(brand))}. You can close this page.</p>"
        self.finish(page("Unsubscribed", body, brand=brand))

    def _spend(self, token: str) -> str | None:
        with self.runtime.db.session() as session:
            return spend(session, self.runtime.keys, token)

    def _brand(self, tenant_id: str) -> BrandView | None:
        try:
            with self.runtime.db.session() as session:
                return load_brand_view(session, tenant_id, self.runtime.settings.default_brand)
        except Exception:
            _log.exception("the brand could not be read")
            return None
