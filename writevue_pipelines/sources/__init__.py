"""Connectors, chosen by name."""

from __future__ import annotations

from ..errors import InvalidInput
from .base import FetchRequest, FetchResult, Source
from .ga4 import GA4Source
from .github import GitHubSource
from .rest import RestSource
from .stripe import StripeSource

SOURCES: dict[str, Source] = {
    source.name: source for source in (StripeSource(), GA4Source(), RestSource(), GitHubSource())
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise InvalidInput(
            f"Unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}."
        ) from None


__all__ = ["SOURCES", "FetchRequest", "FetchResult", "Source", "get_source"]
