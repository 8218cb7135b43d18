"""The declarative REST source's spec file: read, validated in full, and typed.

Validation happens before any request, and a bad spec fails with one message that
starts with the field at fault (``spec.paginator.type: …``). The paginator and auth a
spec names come from the shared registries (``paginators.PAGINATORS``,
``auth.AUTHS``); this module only reads their settings. Secrets never belong in a spec:
a setting named like one is refused wherever it appears.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..aggregates_only import DEFAULT_MAX_VALUES, MAX_VALUES_LIMIT
from ..errors import InvalidInput
from .auth import AUTHS, AuthConfig
from .base import METRIC_KINDS, POLARITIES, UNITS, Dimension, MetricKind, Polarity, Unit
from .paginators import PAGINATORS, Paginator
from .urls import NOT_HTTP_URL, http_url_problem

DATE_FORMATS = ("iso_date", "iso_datetime", "unix", "unix_ms")
AGGS = ("sum", "count", "mean", "last", "first")
#: agg -> the kinds its metric may declare, the first being the default. ``last`` and
#: ``first`` keep one record's value, which is an aggregate only for a gauge (a level at
#: a moment), so they must say so.
AGG_KINDS: dict[str, tuple[MetricKind, ...]] = {
    "sum": ("counter", "gauge"),
    "count": ("counter", "gauge"),
    "mean": ("ratio", "gauge"),
    "last": ("gauge",),
    "first": ("gauge",),
}
assert set(AGG_KINDS) == set(AGGS) and all(set(k) <= set(METRIC_KINDS) for k in AGG_KINDS.values())
#: how a breakdown is declared, quoted by the error that refuses an undeclared one
DIMENSION_HOWTO = (
    'declare it as a categorical table: dimension = { field = "status", categorical = true } '
    f"(optional: max_values = N distinct values per metric and day, default "
    f"{DEFAULT_MAX_VALUES}, at most {MAX_VALUES_LIMIT}; code = true if its values are "
    "non-personal codes such as SKUs)"
)
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*")
#: setting names that would carry a secret; refused wherever they appear in a spec
SECRET_NAME = re.compile(
    r"(?i)(secret|password|passwd|token|api_?key$|^key$|credential|client_secret)"
)
DOTTED_PATH = re.compile(r"[A-Za-z0-9_\-$@]+(\.[A-Za-z0-9_\-$@]+)*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")


class SpecError(InvalidInput):
    """A declarative spec that cannot work; the message starts with the field at fault."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    agg: str
    #: dotted path to the value; None for a plain record count
    field: str | None
    kind: MetricKind = "counter"
    #: shown on dashboards; defaults to the name, capitalised
    label: str = ""
    polarity: Polarity = "up_good"
    unit: Unit = "count"


@dataclass(frozen=True)
class MappingSpec:
    date_field: str
    date_format: str
    #: the categorical breakdown; its ``name`` is the record field's dotted path
    dimension: Dimension | None
    metrics: tuple[MetricSpec, ...]


@dataclass(frozen=True)
class IncrementalSpec:
    param: str
    format: str
    field: str


@dataclass(frozen=True)
class RestSpec:
    base_url: str
    endpoint: str
    params: dict[str, str]
    auth: AuthConfig
    paginator: Paginator | None
    records_path: str | None
    incremental: IncrementalSpec | None
    mapping: MappingSpec


# -- reading and validating a spec ---------------------------------------------------


#: validated specs by (path, mtime_ns, size, inode): a refresh reads each connection's
#: spec several times, and a batch often shares one spec file
_spec_cache: dict[tuple, RestSpec] = {}
_SPEC_CACHE_SIZE = 256


def load_spec(path: str | Path) -> RestSpec:
    """Read a TOML (or YAML, when PyYAML is installed) spec file and validate all of it.

    A file already validated and unchanged since (same path, size, inode and mtime) is
    not parsed again; an edited file is.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is not None:
        identity = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = _spec_cache.get(identity)
        if cached is not None:
            return cached
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            f"spec: cannot read {path} ({exc.strerror or type(exc).__name__})"
        ) from None
    spec = _parse_file(path, raw)
    if stat is not None:
        if len(_spec_cache) >= _SPEC_CACHE_SIZE:
            _spec_cache.clear()
        _spec_cache[identity] = spec
    return spec


def _parse_file(path: Path, raw: bytes) -> RestSpec:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SpecError(
                "spec: YAML specs need PyYAML, which is not installed; use TOML"
            ) from None
        try:
            document = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SpecError(f"spec: {path.name} is not valid YAML{where}") from None
    elif path.suffix.lower() == ".toml":
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SpecError(f"spec: {path.name} is not valid TOML ({exc})") from None
    else:
        raise SpecError(f"spec: {path.name} must be a .toml (or .yaml) file")
    return parse_spec(document)


def parse_spec(document: Any) -> RestSpec:
    """Validate a spec document (the parsed file) into a ``RestSpec``."""
    where = "spec"
    table = as_table(document, where)
    refuse_unknown(
        table,
        {
            "base_url",
            "endpoint",
            "params",
            "auth",
            "paginator",
            "records_path",
            "incremental",
            "mapping",
        },
        where,
    )
    base_url = text(table, "base_url", where, hint="the API root, such as https://api.example.com")
    problem = http_url_problem(base_url, allow_fragment=True)
    if problem == NOT_HTTP_URL:
        raise field_error("spec.base_url", f"{base_url!r} {NOT_HTTP_URL}")
    if problem:
        raise field_error("spec.base_url", "must not carry credentials or a query string")
    endpoint = text(
        table, "endpoint", where, pattern=_PATH, hint="a path starting with /, such as /v1/orders"
    )
    if "auth" not in table:
        raise field_error("spec.auth.type", f"is required; expected one of {', '.join(AUTHS)}")
    if "mapping" not in table:
        raise field_error("spec.mapping", "is required: which fields give the day and the metrics")
    return RestSpec(
        base_url=base_url.rstrip("/"),
        endpoint=endpoint,
        params=_params(table.get("params", {})),
        auth=auth_from_spec(table["auth"]),
        paginator=None
        if table.get("paginator") is None
        else paginator_from_spec(table["paginator"]),
        records_path=optional_text(
            table, "records_path", where, pattern=DOTTED_PATH, hint="a dotted path like data.items"
        ),
        incremental=_incremental(table.get("incremental")),
        mapping=_mapping(table["mapping"]),
    )


def _params(value: Any) -> dict[str, str]:
    table = as_table(value, "spec.params")
    params = {}
    for key, item in table.items():
        if isinstance(item, bool):
            item = "true" if item else "false"
        if not isinstance(item, (str, int, float)):
            raise field_error(f"spec.params.{key}", "must be a string or a number")
        params[str(key)] = str(item)
    # A secret in a query parameter would sit in the spec file in clear text.
    refuse_unknown({k: v for k, v in table.items() if SECRET_NAME.search(k)}, set(), "spec.params")
    return params


def _incremental(value: Any) -> IncrementalSpec | None:
    if value is None:
        return None
    where = "spec.incremental"
    table = as_table(value, where)
    refuse_unknown(table, {"param", "format", "field"}, where)
    return IncrementalSpec(
        param=text(table, "param", where, hint="the query parameter that filters by date"),
        format=text(table, "format", where, default="iso_date", choices=DATE_FORMATS),
        field=text(table, "field", where, pattern=DOTTED_PATH, hint="a dotted path"),
    )


def _mapping(value: Any) -> MappingSpec:
    where = "spec.mapping"
    table = as_table(value, where)
    refuse_unknown(table, {"date_field", "date_format", "dimension", "metrics"}, where)
    date_field = text(table, "date_field", where, pattern=DOTTED_PATH, hint="a dotted path")
    date_format = text(table, "date_format", where, default="iso_datetime", choices=DATE_FORMATS)
    dimension = _dimension(table.get("dimension"), f"{where}.dimension")
    items = table.get("metrics")
    if not isinstance(items, list) or not items:
        raise field_error(
            f"{where}.metrics", "must be a non-empty list of {name, field, agg, kind}"
        )
    metrics = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        at = f"{where}.metrics[{index}]"
        metric = as_table(item, at)
        refuse_unknown(metric, {"name", "field", "agg", "kind", "label", "polarity", "unit"}, at)
        name = text(
            metric,
            "name",
            at,
            pattern=_METRIC_NAME,
            hint="lower case letters, digits and _, starting with a letter",
        )
        if name in seen:
            raise field_error(f"{at}.name", f"{name!r} is used twice")
        seen.add(name)
        agg = text(metric, "agg", at, choices=AGGS)
        field = optional_text(metric, "field", at, pattern=DOTTED_PATH, hint="a dotted path")
        if field is None and agg != "count":
            raise field_error(
                f"{at}.field", f"is required for agg {agg!r} (only count may omit it)"
            )
        allowed = AGG_KINDS[agg]
        if agg in ("last", "first") and metric.get("kind") is None:
            raise field_error(
                f"{at}.kind",
                f"agg {agg!r} keeps one record's value, which only a gauge (a level such as a "
                'balance or a stock count) may do: add kind = "gauge", or use sum, count or mean',
            )
        kind = text(metric, "kind", at, default=allowed[0], choices=METRIC_KINDS)
        if kind not in allowed:
            raise field_error(
                f"{at}.kind",
                f"{kind!r} does not fit agg {agg!r}; it takes {' or '.join(allowed)}",
            )
        label = optional_text(metric, "label", at) or name.replace("_", " ").capitalize()
        if len(label) > 80 or not label.isprintable():
            raise field_error(f"{at}.label", "must be printable and at most 80 characters")
        polarity = text(metric, "polarity", at, default="up_good", choices=POLARITIES)
        unit = text(metric, "unit", at, default="count", choices=UNITS)
        if unit == "money" and dimension is None:
            raise field_error(
                f"{at}.unit",
                "money needs the breakdown to be the currency code (dimension = { field = "
                '"currency", categorical = true, code = true })',
            )
        metrics.append(
            MetricSpec(
                name=name,
                agg=agg,
                field=field,
                kind=kind,
                label=label,
                polarity=polarity,
                unit=unit,
            )
        )
    return MappingSpec(
        date_field=date_field, date_format=date_format, dimension=dimension, metrics=tuple(metrics)
    )


def _dimension(value: Any, where: str) -> Dimension | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise field_error(where, f"a breakdown must be declared; {DIMENSION_HOWTO}")
    table = as_table(value, where)
    refuse_unknown(table, {"field", "categorical", "max_values", "code"}, where)
    field = text(table, "field", where, pattern=DOTTED_PATH, hint="a dotted path")
    categorical = table.get("categorical")
    if categorical is not True:
        raise field_error(
            f"{where}.categorical",
            "must be true: WriteVue keeps aggregates only, so a breakdown must be a small "
            f"category, never a customer or a record; {DIMENSION_HOWTO}",
        )
    max_values = integer(table, "max_values", where, default=DEFAULT_MAX_VALUES, minimum=1)
    if max_values > MAX_VALUES_LIMIT:
        raise field_error(f"{where}.max_values", f"must be at most {MAX_VALUES_LIMIT}")
    code = table.get("code", False)
    if not isinstance(code, bool):
        raise field_error(f"{where}.code", f"must be true or false, not {_kind(code)}")
    return Dimension(field, max_values=max_values, code=code, declared_at=where)


# -- paginators ------------------------------------------------------------------------


def _header_link(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {"rel": text(table, "rel", where, default="next")}


def _json_link(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {"next_url_path": text(table, "next_url_path", where, pattern=DOTTED_PATH)}


def _cursor(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {
        "cursor_path": text(table, "cursor_path", where, pattern=DOTTED_PATH),
        "cursor_param": text(table, "cursor_param", where, default="cursor"),
    }


def _offset(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {
        "limit": integer(table, "limit", where, default=100, minimum=1),
        "offset_param": text(table, "offset_param", where, default="offset"),
        "limit_param": text(table, "limit_param", where, default="limit"),
        "total_path": optional_text(table, "total_path", where, pattern=DOTTED_PATH),
    }


def _page_number(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    page_size = table.get("page_size")
    return {
        "page_param": text(table, "page_param", where, default="page"),
        "start": integer(table, "start", where, default=1, minimum=0),
        "total_pages_path": optional_text(table, "total_pages_path", where, pattern=DOTTED_PATH),
        "page_size": None if page_size is None else integer(table, "page_size", where, minimum=1),
        "page_size_param": text(table, "page_size_param", where, default="per_page"),
    }


def _starting_after(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    return {
        "limit": integer(table, "limit", where, default=100, minimum=1),
        "limit_param": text(table, "limit_param", where, default="limit"),
        "cursor_param": text(table, "cursor_param", where, default="starting_after"),
        "id_path": text(table, "id_path", where, default="id", pattern=DOTTED_PATH),
        "has_more_path": text(
            table, "has_more_path", where, default="has_more", pattern=DOTTED_PATH
        ),
    }


#: paginator type -> how its settings are read from the spec's [paginator] table
_PAGINATOR_SETTINGS: dict[str, Callable[[Mapping[str, Any], str], dict[str, Any]]] = {
    "cursor": _cursor,
    "header_link": _header_link,
    "json_link": _json_link,
    "offset": _offset,
    "page_number": _page_number,
    "starting_after": _starting_after,
}
assert set(_PAGINATOR_SETTINGS) == set(PAGINATORS), "every paginator can be named in a spec"


def paginator_from_spec(table: Any, where: str = "spec.paginator") -> Paginator:
    table = as_table(table, where)
    kind = table.get("type")
    if kind is None:
        raise field_error(f"{where}.type", f"is required; expected one of {', '.join(PAGINATORS)}")
    if not isinstance(kind, str) or kind not in PAGINATORS:  # a list or table is no name
        raise field_error(
            f"{where}.type", f"unknown paginator {kind!r}; expected one of {', '.join(PAGINATORS)}"
        )
    paginator = PAGINATORS[kind]
    refuse_unknown(table, {"type", *paginator.settings}, where)
    return paginator(**_PAGINATOR_SETTINGS[kind](table, where))


# -- auth --------------------------------------------------------------------------------


def auth_from_spec(table: Any, where: str = "spec.auth") -> AuthConfig:
    table = as_table(table, where)
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in AUTHS:  # a list or table is no name
        problem = "is required" if kind is None else f"unknown auth {kind!r}"
        raise field_error(f"{where}.type", f"{problem}; expected one of {', '.join(AUTHS)}")
    if kind == "api_key":
        refuse_unknown(table, {"type", "location", "name", "prefix"}, where)
        location = text(table, "location", where, default="header", choices=("header", "query"))
        name = text(
            table,
            "name",
            where,
            default="Authorization" if location == "header" else None,
            pattern=_HEADER_NAME,
            hint="the header or query parameter that carries the key",
        )
        prefix = table.get("prefix", "")
        if not isinstance(prefix, str) or (prefix and location == "query"):
            raise field_error(f"{where}.prefix", "must be a string, and only for a header key")
        return AuthConfig("api_key", location=location, name=name, prefix=prefix)
    if kind == "oauth2":
        refuse_unknown(table, {"type", "authorize_url", "token_url", "revoke_url", "scopes"}, where)
        scopes = table.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
            raise field_error(f"{where}.scopes", "must be a list of scope strings")
        return AuthConfig(
            "oauth2",
            authorize_url=text(table, "authorize_url", where, pattern=_URL, hint="an http(s) URL"),
            token_url=text(table, "token_url", where, pattern=_URL, hint="an http(s) URL"),
            revoke_url=optional_text(
                table, "revoke_url", where, pattern=_URL, hint="an http(s) URL"
            ),
            scopes=tuple(scopes),
        )
    refuse_unknown(table, {"type"}, where)
    return AuthConfig(kind)


# -- typed settings out of a spec table -----------------------------------------------


def field_error(where: str, problem: str) -> SpecError:
    return SpecError(f"{where}: {problem}")


def as_table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise field_error(where, f"must be a table of settings, not {_kind(value)}")
    return dict(value)


def refuse_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key in allowed:
            continue
        if SECRET_NAME.search(str(key)) and not str(key).endswith(("_url", "_path", "_param")):
            raise field_error(
                f"{where}.{key}",
                "secrets do not belong in the spec file; store them with the connection's "
                "encrypted credentials",
            )
        raise field_error(
            f"{where}.{key}", f"unknown setting; expected one of {', '.join(sorted(allowed))}"
        )


def text(
    table: Mapping[str, Any],
    key: str,
    where: str,
    *,
    default: str | None = None,
    choices: tuple[str, ...] | None = None,
    pattern: re.Pattern[str] | None = None,
    hint: str = "",
) -> str:
    value = table.get(key, default)
    if value is None:
        raise field_error(f"{where}.{key}", "is required" + (f" ({hint})" if hint else ""))
    if not isinstance(value, str) or not value.strip():
        raise field_error(f"{where}.{key}", f"must be a non-empty string, not {_kind(value)}")
    value = value.strip()
    if choices is not None and value not in choices:
        raise field_error(
            f"{where}.{key}", f"unknown value {value!r}; expected one of {', '.join(choices)}"
        )
    if pattern is not None and not pattern.fullmatch(value):
        raise field_error(
            f"{where}.{key}", f"{value!r} is not valid" + (f"; {hint}" if hint else "")
        )
    return value


def optional_text(table: Mapping[str, Any], key: str, where: str, **kwargs) -> str | None:
    if table.get(key) is None:
        return None
    return text(table, key, where, **kwargs)


def integer(
    table: Mapping[str, Any], key: str, where: str, *, default: int | None = None, minimum: int = 0
) -> int:
    value = table.get(key, default)
    if value is None:
        raise field_error(f"{where}.{key}", "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise field_error(f"{where}.{key}", f"must be a whole number, not {_kind(value)}")
    if value < minimum:
        raise field_error(f"{where}.{key}", f"must be at least {minimum}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value.strip() else "an empty string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
