"""CSV that a client opens in a spreadsheet: no text cell is ever run as a formula.

What OWASP recommends against CSV injection: a text cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return (or with spaces and then one of the first four,
or their full-width forms, which some spreadsheets also accept) gets a leading ``'``;
every text cell is quoted and its quotes doubled, so a separator or quote inside it
cannot open a new cell. Numbers are written bare, as numbers: only text is touched.
Aggregates come from sources a client connected, and an operator's spec may map any
value to a metric or dimension, so nothing in a cell is trusted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

import polars as pl

#: A cell a spreadsheet would read as a formula (``\s`` is any Unicode space).
FORMULA_START = re.compile(r"^(?:[\t\r]|\s*[=+@\uff1d\uff0b\uff0d\uff20-])")


def text_cell(value: str) -> str:
    """``value`` as a spreadsheet will show it as text, never run it."""
    return "'" + value if FORMULA_START.match(value) else value


def _cell(value: object) -> object:
    if isinstance(value, bool):
        return text_cell(str(value))
    if isinstance(value, int | float):
        return value
    return text_cell("" if value is None else str(value))


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A CSV document: text cells neutralised and quoted, ``int``/``float`` cells bare."""
    out = io.StringIO()
    # QUOTE_NONNUMERIC quotes every cell that is not an int or a float, doubling its quotes.
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow([_cell(name) for name in header])
    writer.writerows([_cell(value) for value in row] for row in rows)
    return out.getvalue()


def frame_csv(frame: pl.DataFrame) -> str:
    """``frame`` as CSV by ``csv_text``: text, dates and times quoted, numbers bare."""
    return csv_text(frame.columns, frame.iter_rows())
