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

import time
import weakref
from dataclasses import dataclass, field
from typing import Protocol

from tornado.ioloop import PeriodicCallback


class Tickable(Protocol):
    gone: bool

    def tick(self) -> None: ...


@dataclass
class _Entry:
    view: weakref.ReferenceType
    document: weakref.ReferenceType
    period_s: float
    due: float = field(default=0.0)


class Ticker:
    """Calls ``view.tick()`` every ``period_s`` seconds for each open session's view."""

    def __init__(self, resolution_s: float = 1.0):
        self.resolution_s = resolution_s
        self._entries: dict[str, _Entry] = {}
        self._timer: PeriodicCallback | None = None

    def add(self, session_id: str, document, view: Tickable, period_s: float) -> None:
        """From inside the session: tick ``view`` every ``period_s`` s until the session ends."""
        self._entries[session_id] = _Entry(
            weakref.ref(view), weakref.ref(document), period_s, time.monotonic() + period_s
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
        """Queue the tick of every view that is due; forget views and documents now gone."""
        now = time.monotonic() if now is None else now
        for session_id, entry in list(self._entries.items()):
            if entry.due > now:
                continue
            view, document = entry.view(), entry.document()
            if view is None or document is None or view.gone:
                del self._entries[session_id]
                continue
            entry.due = now + entry.period_s
            document.add_next_tick_callback(view.tick)
