"""The CSV export: ``/d/<token>?format=csv`` of a live link, the daily figures of its period."""

from __future__ import annotations

import datetime as dt

from tornado import routing
from tornado.httputil import HTTPServerRequest
from tornado.web import RequestHandler

from writevue_pipelines.runtime import Runtime

from .data import FactCache, Period, csv_filename, dashboard_csv, load_dashboard
from .gate import GATED_PATH


class CsvExportMatcher(routing.Matcher):
    """``/d/<token>?format=csv`` of a live link (the gate has run) goes to the CSV export.

    The dashboard links to its export relative to itself (``?format=csv&...``), so the
    view needs no token to offer a download.
    """

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def match(self, request: HTTPServerRequest) -> dict | None:
        if getattr(request, "writevue_link", None) is None:
            return None
        found = GATED_PATH.match(request.path[len(self.prefix) :])
        if found and not found.group(2) and request.query_arguments.get("format") == [b"csv"]:
            return {}
        return None


class CsvExportHandler(RequestHandler):
    """``/d/<token>?format=csv&from=…&to=…``: the daily figures of the period the page shows."""

    def initialize(self, runtime: Runtime, cache: FactCache) -> None:
        self.runtime, self.cache = runtime, cache

    def get(self, *_args) -> None:
        link = self.request.writevue_link  # set by the gate, which let only a live link through
        try:
            start = dt.date.fromisoformat(self.get_query_argument("from"))
            end = dt.date.fromisoformat(self.get_query_argument("to"))
        except Exception:
            self.set_status(400)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("Choose a period on the dashboard, then download its figures.\n")
            return
        data = load_dashboard(
            self.runtime, link.tenant_id, period=Period.between(start, end), cache=self.cache
        )
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{csv_filename(data)}"')
        self.finish(dashboard_csv(data))


def csv_export_rule(runtime: Runtime, cache: FactCache, prefix: str = "") -> routing.Rule:
    """The export's route, to go behind the gate (``install_gate(..., behind_gate=...)``)."""
    return routing.Rule(
        CsvExportMatcher(prefix), CsvExportHandler, {"runtime": runtime, "cache": cache}
    )
