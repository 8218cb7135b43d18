"""The load-time rule behind "We store aggregate data only", for every source's facts.

A source's ``aggregate`` returns facts in the long format (metric, dimension, day,
value). Before the warehouse stores them, ``check_facts`` refuses, for that connection
only and with one sentence naming the field:

- a breakdown (non-empty ``dimension``) from a source that declares no dimension;
- a metric the source does not declare (so each stored metric has a declared kind);
- a dimension with more distinct values per metric and day than its cap
  (``DEFAULT_MAX_VALUES``, at most ``MAX_VALUES_LIMIT``): a breakdown that large lists
  customers or records, not categories;
- a dimension whose values look like personal identifiers (email addresses, phone
  numbers, long numeric ids, UUIDs, long hex ids, random-looking tokens such as
  ``cus_Nf0a9…``, IP addresses), unless the source declares the dimension a
  non-personal code.

The error never quotes a value: the values are what must not be kept. Refresh calls
this between aggregation and the warehouse write (``refresh.load_connections``), so a
refused connection keeps what it had stored, and its staged records are deleted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from .errors import SourceError

if TYPE_CHECKING:  # the declarations live with the sources; no import cycle at runtime
    from .sources.base import Dimension

#: distinct values of a dimension per metric and day, unless its declaration says otherwise
DEFAULT_MAX_VALUES = 50
#: the largest cap a declaration may set (a spec's ``max_values``, a built-in's ``Dimension``)
MAX_VALUES_LIMIT = 200


class AggregatesRefused(SourceError):
    """A connection's facts break the aggregates-only rule; nothing of them is stored."""


# -- the personal-identifier detector -----------------------------------------------------

_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_UUID = re.compile(r"(?i)[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
#: candidates for an IPv6 address, confirmed by ``ipaddress``
_IPV6 = re.compile(r"(?i)[0-9a-f:]*:[0-9a-f:]*:[0-9a-f:]*")
#: seven digits or more in a row: customer numbers, account numbers, national ids
_LONG_NUMBER = re.compile(r"\d{7,}")
#: a phone number: digits with the usual separators, seven digits or more in all
_PHONE = re.compile(r"\+?\(?\d[\d\s().\-/]{5,}\d")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
#: hex runs of 12 or more with a digit in them (a word of a-f letters only is not an id)
_HEX = re.compile(r"(?i)(?<![0-9a-z])(?=[a-f]*\d)[0-9a-f]{12,}(?![0-9a-z])")
_TOKEN = re.compile(r"[A-Za-z0-9]+")


def _class(char: str) -> str:
    return "d" if char.isdigit() else ("u" if char.isupper() else "l")


def _random_looking(token: str) -> bool:
    """A token that mixes letters and digits or cases the way generated ids do
    (``NffrFeUfNV2Hib``), not the way words and product codes do (``iOS17``, ``SKU123``)."""
    if len(token) < 8:
        return False
    body = token[1:] if token[0].isupper() else token  # a capital initial is a word's
    switches = sum(1 for a, b in itertools.pairwise(body) if _class(a) != _class(b))
    has_digit = any(c.isdigit() for c in token)
    has_letter = any(c.isalpha() for c in token)
    if has_digit and has_letter and switches >= 4:
        return True
    if len(token) >= 16:
        counts = Counter(token)
        entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
        return switches >= 6 or (has_digit and has_letter and entropy >= 3.5)
    return False


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def personal_identifier_kind(value: str) -> str | None:
    """What personal identifier ``value`` looks like ("an email address", …), or None."""
    if _EMAIL.search(value):
        return "an email address"
    if _UUID.search(value):
        return "a UUID"
    if _IPV4.search(value) or any(_is_ipv6(m.group()) for m in _IPV6.finditer(value)):
        return "an IP address"
    for match in _PHONE.finditer(value):
        text = match.group()
        if _ISO_DATE.fullmatch(text.strip()):
            continue
        if sum(c.isdigit() for c in text) >= 7 and not _LONG_NUMBER.fullmatch(text):
            return "a phone number"
    if _LONG_NUMBER.search(value):
        return "a long numeric id"
    if _HEX.search(value):
        return "a hex id"
    if any(_random_looking(token) for token in _TOKEN.findall(value)):
        return "a random-looking id"
    return None


def first_personal_identifier(values: Iterable[str]) -> str | None:
    """The kind of the first value that looks like a personal identifier, or None."""
    for value in values:
        kind = personal_identifier_kind(value)
        if kind is not None:
            return kind
    return None


# -- the load-time check -------------------------------------------------------------------


def check_facts(
    facts: pl.DataFrame,
    *,
    connection_id: str,
    dimension: Dimension | None,
    kinds: Mapping[str, str],
) -> None:
    """Refuse (``AggregatesRefused``) facts that are not aggregates; see the module doc.

    ``dimension`` is the source's declared breakdown (None: it has none); ``kinds`` maps
    every metric it may report to its declared kind.
    """
    check_profile(
        profile_facts([facts])[0], connection_id=connection_id, dimension=dimension, kinds=kinds
    )


@dataclass(frozen=True)
class FactsProfile:
    """What ``check_facts`` reads of one connection's facts (``profile_facts``)."""

    #: every metric named
    metrics: frozenset
    #: (distinct values, metric, day) of the widest breakdown; None when none is broken down
    widest: tuple[int, str, dt.date] | None
    #: the distinct non-empty dimension values
    dimensions: tuple[str, ...]


def profile_facts(frames: list[pl.DataFrame]) -> list[FactsProfile]:
    """Each frame's ``FactsProfile``, in a few queries over all of them together (a load
    checks every connection staged with it at once)."""
    present = [index for index, frame in enumerate(frames) if frame.height]
    if len(present) <= 1:  # a load of one connection: no index to tell frames apart
        nothing = FactsProfile(frozenset(), None, ())
        return [_profile(frame) if frame.height else nothing for frame in frames]
    plans = [
        frames[index].lazy().select(pl.lit(index, pl.UInt32).alias("_k"), *_PROFILED)
        for index in present
    ]
    together = pl.concat(plans, how="vertical").collect()
    metrics = dict(together.group_by("_k").agg(pl.col("metric").unique()).iter_rows())
    broken_down = together.filter(pl.col("dimension") != "")
    widest = {
        row[0]: row[1:]
        for row in broken_down.group_by("_k", "metric", "day")
        .agg(pl.col("dimension").n_unique().alias("values"))
        .sort(["_k", "values", "metric", "day"], descending=[False, True, False, False])
        .group_by("_k", maintain_order=True)
        .first()
        .select("_k", "values", "metric", "day")
        .iter_rows()
    }
    values = dict(
        broken_down.group_by("_k").agg(pl.col("dimension").unique(maintain_order=True)).iter_rows()
    )
    return [
        FactsProfile(
            frozenset(metrics.get(index, ())),
            widest.get(index),
            tuple(values.get(index, ())),
        )
        for index in range(len(frames))
    ]


#: the columns a profile reads, as it reads them
_PROFILED = (
    pl.col("metric").cast(pl.String),
    pl.col("day"),
    pl.col("dimension").cast(pl.String).fill_null(""),
)


def _profile(facts: pl.DataFrame) -> FactsProfile:
    """One frame's profile (``profile_facts`` of one)."""
    facts = facts.select(*_PROFILED)
    metrics = frozenset(facts.get_column("metric").unique().to_list())
    broken_down = facts.filter(pl.col("dimension") != "")
    if broken_down.height == 0:
        return FactsProfile(metrics, None, ())
    widest = (
        broken_down.group_by("metric", "day")
        .agg(pl.col("dimension").n_unique().alias("values"))
        .sort(["values", "metric", "day"], descending=[True, False, False])
        .row(0, named=True)
    )
    return FactsProfile(
        metrics,
        (widest["values"], widest["metric"], widest["day"]),
        tuple(broken_down.get_column("dimension").unique(maintain_order=True).to_list()),
    )


def check_profile(
    profile: FactsProfile,
    *,
    connection_id: str,
    dimension: Dimension | None,
    kinds: Mapping[str, str],
) -> None:
    """``check_facts`` of facts already profiled (``profile_facts``)."""

    def refused(message: str) -> AggregatesRefused:
        return AggregatesRefused.of_connection(connection_id, message)

    undeclared = sorted(profile.metrics - set(kinds), key=str)
    if undeclared:
        raise refused(
            f"metric {undeclared[0]!r} is not declared by its source, so its kind is unknown; "
            "nothing was stored"
        )
    if profile.widest is None:
        return
    if dimension is None:
        raise refused(
            "its facts carry a breakdown but the source declares no dimension; declare it as "
            "categorical (in a spec: mapping.dimension = { field = …, categorical = true }; "
            "in a built-in source: dimension = Dimension(…)); nothing was stored"
        )
    field = dimension.described()
    values, metric, day = profile.widest
    if values > dimension.max_values:
        raise refused(
            f"{field} has {values} distinct values on {day} for metric "
            f"{metric!r}, more than its cap of {dimension.max_values}; WriteVue keeps "
            "aggregates only, so a breakdown must be a small category (raise max_values, up "
            f"to {MAX_VALUES_LIMIT}, only if it really is one); nothing was stored"
        )
    if dimension.code:
        return
    kind = first_personal_identifier(profile.dimensions)
    if kind is not None:
        raise refused(
            f"{field} holds values that look like {kind}; WriteVue keeps aggregates only and "
            "refuses a breakdown by person or record (choose a categorical field, or declare "
            "code = true if its values are non-personal codes); nothing was stored"
        )


__all__ = [
    "DEFAULT_MAX_VALUES",
    "MAX_VALUES_LIMIT",
    "AggregatesRefused",
    "FactsProfile",
    "check_facts",
    "check_profile",
    "first_personal_identifier",
    "personal_identifier_kind",
    "profile_facts",
]
