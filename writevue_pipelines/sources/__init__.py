"""Connectors, chosen by name: each module of this package that defines a ``Source``
subclass is a built-in source, so adding one is adding its file.

The rest of the package is the toolkit those modules share: ``http`` (the one HTTP
layer), ``auth`` (credentials, ``AUTHS``), ``paginators`` (``PAGINATORS``), ``urls``
(URL checks), ``rest_spec`` (the declarative source's spec). See
``docs/sources/adding-a-source.md``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterable

from ..errors import InvalidInput
from .base import FetchRequest, FetchResult, MetricMeta, Source


def discover() -> dict[str, Source]:
    """One instance of every concrete ``Source`` with a name defined in this package."""
    found: dict[str, Source] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for cls in vars(module).values():
            if not (
                inspect.isclass(cls)
                and issubclass(cls, Source)
                and cls.__module__ == module.__name__  # defined here, not imported
                and not inspect.isabstract(cls)
                and getattr(cls, "name", None)
            ):
                continue
            if cls.name in found:
                raise TypeError(
                    f"two sources are named {cls.name!r}: {type(found[cls.name]).__qualname__} "
                    f"and {cls.__qualname__} in {module.__name__}"
                )
            found[cls.name] = cls()
    return found


#: source name -> the one instance serving every connection of that source
SOURCES: dict[str, Source] = discover()


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise InvalidInput(
            f"Unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}."
        ) from None


def connection_metas(connections: Iterable) -> dict[str, dict[str, MetricMeta]]:
    """source -> metric -> what it means, over these connections (a declarative source's
    metrics come from each connection's spec); a source no longer built in is left out."""
    metas: dict[str, dict[str, MetricMeta]] = {}
    for connection in connections:
        source = SOURCES.get(connection.source)
        if source is not None:
            metas.setdefault(connection.source, {}).update(source.metric_meta(connection))
    return metas


__all__ = ["SOURCES", "FetchRequest", "FetchResult", "Source", "connection_metas", "get_source"]
