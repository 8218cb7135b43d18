"""One timer per process gives every open dashboard its periodic tick, and forgets closed ones.

A Bokeh periodic callback per session would be simpler, but Bokeh keeps a removed
periodic callback (and through it the session's whole document: its models, the
page's HTML) until its pending sleep ends, up to a refresh period after the session
was destroyed; with many short visits that is most of the server's memory. Here a
session's views are held weakly and dropped the moment the session is destroyed, and
each due tick runs as the document's next-tick callback, inside the session (its
document lock, ``pn.state.curdoc``), as a periodic callback would.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tornado.ioloop import PeriodicCallback

_log = logging.getLogger("writevue.ticker")


class Tickable(Protocol):
    gone: bool

    def tick(self) -> None: ...

    def end(self, page: str) -> None: ...


#: given the links of the open sessions, the ones whose sessions must end, with their page
Sweep = Callable[[set[str]], Mapping[str, str]]


@dataclass
class _Entry:
    view: weakref.ReferenceType
    document: weakref.ReferenceType
    period_s: float
    due: float = field(default=0.0)
    link: str = ""


class Ticker:
    """Calls ``view.tick()`` every ``period_s`` seconds for each open session's view, and
    ``view.end(page)`` once ``sweep`` says the session's link is gone."""

    def __init__(self, resolution_s: float = 1.0, sweep: Sweep | None = None):
        self.resolution_s = resolution_s
        self.sweep = sweep
        self._entries: dict[str, _Entry] = {}
        self._timer: PeriodicCallback | None = None

    def add(
        self, session_id: str, document, view: Tickable, period_s: float, link: str = ""
    ) -> None:
        """From inside the session: tick ``view`` every ``period_s`` s until the session ends;
        ``link`` is what ``sweep`` knows the session's link by."""
        self._entries[session_id] = _Entry(
            weakref.ref(view), weakref.ref(document), period_s, time.monotonic() + period_s, link
        )

    def start(self) -> None:
        """Run on the current IO loop (the server's); once."""
        if self._timer is None:
            self._timer = PeriodicCallback(self.run_due, self.resolution_s * 1000)
            self._timer.start()

    def discard(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def session_destroyed(self, session_context) -> None:
        """For ``pn.state.on_session_destroyed``: nothing of the session stays here."""
        self.discard(session_context.id)

    def __len__(self) -> int:
        return len(self._entries)

    def run_due(self, now: float | None = None) -> None:
        """End the views whose link is gone, queue the tick of every view that is due;
        forget views and documents now gone."""
        now = time.monotonic() if now is None else now
        ended: Mapping[str, str] = {}
        if self.sweep is not None:
            try:
                ended = self.sweep({entry.link for entry in self._entries.values() if entry.link})
            except Exception:  # the warehouse is unreachable: try again next second
                _log.exception("the open sessions' links could not be checked")
        for session_id, entry in list(self._entries.items()):
            page = ended.get(entry.link)
            if page is None and entry.due > now:
                continue
            view, document = entry.view(), entry.document()
            if view is None or document is None or view.gone:
                del self._entries[session_id]
                continue
            if page is not None:
                del self._entries[session_id]
                document.add_next_tick_callback(functools.partial(view.end, page))
                continue
            entry.due = now + entry.period_s
            document.add_next_tick_callback(view.tick)
