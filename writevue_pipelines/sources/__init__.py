"""Connectors, chosen by name."""

from __future__ import annotations

from ..errors import InvalidInput
from .base import FetchRequest, FetchResult, Source
from .stripe import StripeSource

SOURCES: dict[str, Source] = {source.name: source for source in (StripeSource(),)}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise InvalidInput(
            f"Unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}."
        ) from None


__all__ = ["SOURCES", "FetchRequest", "FetchResult", "Source", "get_source"]
