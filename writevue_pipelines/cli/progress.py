"""Progress of a long command on stderr: a rich bar on a terminal, plain lines elsewhere.

``writevue refresh``, ``tenant export``, ``tenant erase`` and ``keys rotate`` can take
minutes; an operator should see that they move. On a terminal a bar per step is drawn
(with each finished item's line printed above it); in a log or a pipe, where a redrawn
bar is noise, each finished item is one line, and a step with no items of its own is a
line per tenth of the way. Only what the caller passes is shown: ids and counts, never
names or secrets. Standard output stays for the command's result.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress() as progress: progress.update(label, done, total)``; ``line(text)``.

    The bar starts with the first update (so nothing is drawn for a command that had
    nothing to do) and stops on ``close`` or at the end of the ``with``.
    """

    def __init__(self, *, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar = None
        self._tasks: dict[str, int] = {}
        self._tenths: dict[str, int] = {}

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop drawing (the bar stays on the screen as last drawn)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _start(self):
        if self._bar is None and self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
            )
            self._bar.start()
        return self._bar

    def update(self, label: str, done: int, total: int, *, quiet: bool = False) -> None:
        """``done`` of ``total`` for the step ``label``. ``quiet``: no plain line for it
        (its items print their own with ``line``)."""
        if self._start() is not None:
            task = self._tasks.get(label)
            if task is None:
                task = self._tasks[label] = self._bar.add_task(label, total=total)
            self._bar.update(task, completed=done, total=total)
            return
        if quiet:
            return
        tenth = 10 if total <= 0 else min(10, done * 10 // total)
        if tenth != self._tenths.get(label) or done >= total:
            if self._tenths.get(label) == 10:
                return  # said already that it finished
            self._tenths[label] = tenth
            print(f"{label}: {done}/{total}", file=self.stream, flush=True)

    def line(self, text: str) -> None:
        """A finished item's line: above the bar on a terminal, a plain line elsewhere."""
        if self._start() is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, label: str, done: int, total: int) -> None:
        """``progress(label, done, total)``: the shape core operations report in."""
        self.update(label, done, total)


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 link``, ``2 links``: a count with its noun in the right number."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"
