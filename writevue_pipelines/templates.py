"""Dashboard templates: a layout an operator defines once and applies to many tenants.

A template (a TOML or YAML file, see ``docs/templates/`` and docs/dashboards.md) names
sections of metrics in order, each with a chart type; calculated metrics (formulas over
the tenant's metrics, ``writevue_pipelines.formulas``); the default comparison; per-metric
polarity; optionally a brand. It is validated whole (each message names the place, such
as ``sections[1].items[0].metric``) and stored as JSON in ``dashboard_templates``; a tenant
points at one through ``tenant_settings.template_id``. A tenant without one gets the
automatic layout. The dashboard (``dashboard_server/data.py``) turns a template and the
tenant's aggregates into cards; nothing here reads facts.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tomllib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import registry
from .errors import InvalidInput, NotFound
from .formulas import NAME, Formula, Ref, parse, valid_dimension
from .models import Brand, DashboardTemplate, TenantSettings, utcnow
from .sources import SOURCES

Kind = Literal["counter", "gauge", "ratio"]
Polarity = Literal["up_good", "up_bad", "neutral"]
Unit = Literal["number", "money", "percent", "count"]
Chart = Literal["number", "line", "bar", "table"]
Comparison = Literal["previous", "last_year"]

KINDS: tuple[str, ...] = ("counter", "gauge", "ratio")
POLARITIES: tuple[str, ...] = ("up_good", "up_bad", "neutral")
UNITS: tuple[str, ...] = ("number", "money", "percent", "count")
CHARTS: tuple[str, ...] = ("number", "line", "bar", "table")
COMPARISONS: tuple[str, ...] = ("previous", "last_year")

MAX_SECTIONS = 20
MAX_ITEMS = 60
MAX_CALCULATED = 30
MAX_TEXT = 200_000
#: the source name calculated metrics are referred to by: ``calc.<name>``
CALC = "calc"

log = logging.getLogger(__name__)

_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_METRIC = re.compile(r"([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)")


@dataclass(frozen=True)
class Calculated:
    """A metric computed from others at view time: ``calc.<name>`` in items and formulas.

    ``unit`` "percent" means the value is a fraction, shown times 100 with %. A "money" metric
    is in ``currency`` (an ISO code, lower case like Stripe's dimension values).
    """

    name: str
    label: str
    formula: Formula
    kind: Kind = "counter"
    polarity: Polarity = "up_good"
    unit: Unit = "number"
    currency: str | None = None

    @property
    def ref(self) -> str:
        return f"{CALC}.{self.name}"


@dataclass(frozen=True)
class Item:
    """One card: a metric's total over its dimensions (no dimension, no split), one
    dimension value (``dimension``), or one entry per dimension value (``split``)."""

    metric: str
    dimension: str | None = None
    split: bool = False
    chart: Chart = "number"
    label: str | None = None


@dataclass(frozen=True)
class Section:
    title: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Template:
    name: str
    sections: tuple[Section, ...]
    calculated: tuple[Calculated, ...] = ()
    comparison: Comparison = "previous"
    brand: str | None = None
    #: metric ref ("stripe.refunds", "calc.x") -> polarity: the template's defaults,
    #: which a tenant's settings override
    polarity: Mapping[str, str] = field(default_factory=dict)

    def calculated_by_name(self) -> dict[str, Calculated]:
        return {calc.name: calc for calc in self.calculated}

    def to_json(self) -> dict[str, Any]:
        """The template as plain JSON data, in the file format's shape."""
        data: dict[str, Any] = {"name": self.name, "comparison": self.comparison}
        if self.brand is not None:
            data["brand"] = self.brand
        if self.polarity:
            data["polarity"] = dict(sorted(self.polarity.items()))
        data["sections"] = [
            {"title": section.title, "items": [_item_json(item) for item in section.items]}
            for section in self.sections
        ]
        data["calculated"] = [
            {
                "name": calc.name,
                "label": calc.label,
                "formula": str(calc.formula),
                "kind": calc.kind,
                "polarity": calc.polarity,
                "unit": calc.unit,
                **({"currency": calc.currency} if calc.currency else {}),
            }
            for calc in self.calculated
        ]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Template:
        """A template from JSON data (``to_json``'s or a file's), validated whole."""
        return _build(data)


def _item_json(item: Item) -> dict[str, Any]:
    data: dict[str, Any] = {"metric": item.metric}
    if item.dimension is not None:
        data["dimension"] = item.dimension
    if item.split:
        data["split"] = True
    data["chart"] = item.chart
    if item.label is not None:
        data["label"] = item.label
    return data


# -- metric refs ---------------------------------------------------------------------------


def check_metric_ref(
    metric: Any,
    dimension: str | None = None,
    *,
    calculated: Iterable[str] | None = None,
    calc_home: str = "this template",
) -> None:
    """Refuse a metric ref that names no metric: an unknown source, an unknown metric of
    a built-in source (any name for ``rest``), a calculated metric not in
    ``calculated`` (described as in ``calc_home``), or a dimension where there is none.
    The message has no place; callers prefix it."""
    if not isinstance(metric, str):
        raise InvalidInput("expected a metric such as stripe.gross_volume")
    match = _METRIC.fullmatch(metric)
    if match is None or not all(NAME.fullmatch(part) for part in match.groups()):
        raise InvalidInput(f'"{_short(metric)}" is not a metric such as stripe.gross_volume')
    source, name = match.groups()
    if source == CALC:
        if name not in set(calculated or ()):
            raise InvalidInput(f'no calculated metric "{name}" in {calc_home}')
        if dimension is not None:
            raise InvalidInput("a calculated metric has no breakdown")
        return
    if source not in SOURCES:
        raise InvalidInput(f'no source "{source}"; sources are {", ".join(sorted(SOURCES))}')
    if source != "rest" and name not in SOURCES[source].metrics:
        raise InvalidInput(
            f'{source} has no metric "{name}"; its metrics are '
            f"{', '.join(sorted(SOURCES[source].metrics))}"
        )
    if dimension is not None and not has_breakdown(source):
        raise InvalidInput(f"{source} metrics have no breakdown")


def has_breakdown(source: str) -> bool:
    """Whether a source's metrics may carry a dimension (a REST spec may give one)."""
    return source == "rest" or (source in SOURCES and SOURCES[source].dimension is not None)


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


# -- validation ----------------------------------------------------------------------------


class _Reader:
    """Reads one table of the file, every message prefixed by its place."""

    def __init__(self, data: Any, where: str, known: tuple[str, ...]):
        self.where = where
        if not isinstance(data, dict):
            raise self.fail("expected a table of keys and values", None)
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise InvalidInput(
                f'{where or "template"}: unknown key "{_short(unknown[0])}"; known keys are '
                f"{', '.join(sorted(known))}"
            )
        self.data = data

    def fail(self, message: str, key: str | None) -> InvalidInput:
        place = ".".join(part for part in (self.where, key) if part) or "template"
        place = place.replace(".[", "[")
        return InvalidInput(f"{place}: {message}")

    def place(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def text(self, key: str, *, required: bool = False, limit: int = 100) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail("missing", key)
            return None
        if not isinstance(value, str):
            raise self.fail("expected text", key)
        if not value.strip() or len(value) > limit or any(ord(c) < 32 for c in value):
            raise self.fail(f"expected 1 to {limit} characters on one line", key)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or value not in choices:
            shown = f'"{_short(value)}"' if isinstance(value, str) else repr(value)[:40]
            raise self.fail(f"{shown} is not one of {', '.join(choices)}", key)
        return value

    def table_list(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail("expected a list", key)
        return value


def _build(data: Any) -> Template:
    top = _Reader(data, "", ("name", "comparison", "brand", "polarity", "sections", "calculated"))
    name = top.text("name", required=True)
    if not _TEMPLATE_NAME.fullmatch(name) or _is_uuid(name):
        raise top.fail("a template name is 1 to 100 letters, digits, - and _ (not an id)", "name")
    comparison = top.choice("comparison", COMPARISONS, "previous")
    brand = top.text("brand")

    raw_calculated = top.table_list("calculated")
    if len(raw_calculated) > MAX_CALCULATED:
        raise top.fail(f"at most {MAX_CALCULATED} calculated metrics", "calculated")
    names: dict[str, int] = {}
    readers: list[_Reader] = []
    for index, raw in enumerate(raw_calculated):
        reader = _Reader(
            raw,
            f"calculated[{index}]",
            ("name", "label", "formula", "kind", "polarity", "unit", "currency"),
        )
        calc_name = reader.text("name", required=True)
        if not NAME.fullmatch(calc_name):
            raise reader.fail(
                f'"{_short(calc_name)}" is not a name: lower case letters, digits and _, '
                "starting with a letter",
                "name",
            )
        if calc_name in names:
            raise reader.fail(
                f'"{calc_name}" is already the name of calculated[{names[calc_name]}]', "name"
            )
        names[calc_name] = index
        readers.append(reader)
    calculated = tuple(_calculated(reader, names) for reader in readers)
    _refuse_cycles(calculated)

    raw_sections = top.table_list("sections")
    if len(raw_sections) > MAX_SECTIONS:
        raise top.fail(f"at most {MAX_SECTIONS} sections", "sections")
    sections: list[Section] = []
    titles: dict[str, int] = {}
    count = 0
    for index, raw in enumerate(raw_sections):
        reader = _Reader(raw, f"sections[{index}]", ("title", "items"))
        title = reader.text("title", required=True)
        if title in titles:
            raise reader.fail(
                f'"{title}" is already the title of sections[{titles[title]}]', "title"
            )
        titles[title] = index
        raw_items = reader.table_list("items")
        count += len(raw_items)
        if count > MAX_ITEMS:
            raise reader.fail(f"at most {MAX_ITEMS} items in a template", "items")
        items: list[Item] = []
        for item_index, raw_item in enumerate(raw_items):
            item = _item(
                _Reader(
                    raw_item,
                    f"sections[{index}].items[{item_index}]",
                    ("metric", "dimension", "split", "chart", "label"),
                ),
                names,
            )
            if any(
                (other.metric, other.dimension, other.split)
                == (item.metric, item.dimension, item.split)
                for other in items
            ):
                raise InvalidInput(
                    f"sections[{index}].items[{item_index}]: {item.metric} is already in "
                    "this section"
                )
            items.append(item)
        sections.append(Section(title, tuple(items)))

    polarity: dict[str, str] = {}
    raw_polarity = data.get("polarity")
    if raw_polarity is not None:
        if not isinstance(raw_polarity, dict):
            raise top.fail("expected a table of metric = polarity", "polarity")
        if len(raw_polarity) > MAX_ITEMS:
            raise top.fail(f"at most {MAX_ITEMS} metrics", "polarity")
        for key, value in raw_polarity.items():
            place = f'polarity."{_short(str(key))}"'
            try:
                check_metric_ref(key, calculated=names)
            except InvalidInput as exc:
                raise InvalidInput(f"{place}: {exc}") from None
            if value not in POLARITIES:
                raise InvalidInput(f"{place}: expected {', '.join(POLARITIES)}")
            polarity[key] = value

    return Template(
        name=name,
        sections=tuple(sections),
        calculated=calculated,
        comparison=comparison,  # type: ignore[arg-type]
        brand=brand,
        polarity=polarity,
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _item(reader: _Reader, calculated: Mapping[str, int]) -> Item:
    metric = reader.data.get("metric")
    if metric is None:
        raise reader.fail("missing", "metric")
    try:
        check_metric_ref(metric, calculated=calculated)
    except InvalidInput as exc:
        raise reader.fail(str(exc), "metric") from None
    source = metric.partition(".")[0]
    dimension = reader.text("dimension", limit=128)
    if dimension is not None and not valid_dimension(dimension):
        raise reader.fail(
            "a dimension is 1 to 128 printable characters, without brackets or quotes",
            "dimension",
        )
    split = reader.data.get("split", False)
    if not isinstance(split, bool):
        raise reader.fail("expected true or false", "split")
    if split and dimension is not None:
        raise InvalidInput(f"{reader.where}: split and dimension exclude each other")
    for key, given in (("dimension", dimension is not None), ("split", split)):
        if given and source == CALC:
            raise reader.fail("a calculated metric has no breakdown", key)
        if given and not has_breakdown(source):
            raise reader.fail(f"{source} metrics have no breakdown", key)
    chart = reader.choice("chart", CHARTS, "number")
    label = reader.text("label")
    return Item(metric, dimension, split, chart, label)  # type: ignore[arg-type]


def _calculated(reader: _Reader, names: Mapping[str, int]) -> Calculated:
    name = reader.data["name"]
    raw_formula = reader.data.get("formula")
    if raw_formula is None:
        raise reader.fail("missing", "formula")
    if not isinstance(raw_formula, str):
        raise reader.fail("expected text", "formula")
    try:
        formula = parse(raw_formula)
        for ref in formula.refs:
            check_metric_ref(ref.metric, ref.dimension, calculated=names)
    except InvalidInput as exc:
        raise reader.fail(str(exc), "formula") from None
    label = reader.text("label") or name.replace("_", " ").capitalize()
    kind = reader.choice("kind", KINDS, "ratio" if formula.divides else "counter")
    polarity = reader.choice("polarity", POLARITIES, "up_good")
    unit = reader.choice("unit", UNITS, "number")
    currency = reader.text("currency", limit=20)
    if currency is not None:
        if unit != "money":
            raise reader.fail('only a money metric (unit = "money") has a currency', "currency")
        if not _CURRENCY.fullmatch(currency):
            raise reader.fail(f'"{currency}" is not a currency code such as "eur"', "currency")
        currency = currency.lower()
    elif unit == "money":
        currency = _pinned_currency(formula.refs)
        if currency is None:
            raise reader.fail(
                'a money metric needs a currency (such as "eur") unless every metric in its '
                "formula is pinned to the same one (stripe.gross_volume[eur])",
                "currency",
            )
    return Calculated(name, label, formula, kind, polarity, unit, currency)  # type: ignore[arg-type]


def _pinned_currency(refs: tuple[Ref, ...]) -> str | None:
    pinned = {ref.dimension for ref in refs}
    if len(pinned) != 1:
        return None
    (only,) = pinned
    if only is None or not _CURRENCY.fullmatch(only):
        return None
    return only.lower()


def _refuse_cycles(calculated: tuple[Calculated, ...]) -> None:
    uses = {
        calc.name: [ref.name for ref in calc.formula.refs if ref.is_calculated]
        for calc in calculated
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for used in uses.get(name, ()):
            cycle = visit(used, [*path, name])
            if cycle:
                return cycle
        done.add(name)
        return None

    for index, calc in enumerate(calculated):
        cycle = visit(calc.name, [])
        if cycle:
            shown = " -> ".join(f"{CALC}.{name}" for name in cycle)
            raise InvalidInput(
                f"calculated[{index}].formula: {CALC}.{calc.name} refers back to itself ({shown})"
            )


# -- files ---------------------------------------------------------------------------------


def parse_template(text: str, fmt: Literal["toml", "yaml"]) -> Template:
    """A template from the text of a TOML or YAML file, validated whole."""
    if fmt not in ("toml", "yaml"):
        raise InvalidInput(f"A template is toml or yaml, not {str(fmt)[:20]!r}.")
    if not isinstance(text, str):
        raise InvalidInput("A template is text.")
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"The template is larger than {MAX_TEXT // 1000} kB.")
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"The template is not valid TOML: {exc}.") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise InvalidInput(f"The template is not valid YAML{where}.") from None
    if not isinstance(data, dict):
        raise InvalidInput("The template must be a table of keys (name, sections, ...).")
    return _build(data)


def load_template_file(path: str | Path) -> Template:
    """The template in a ``.toml``, ``.yaml`` or ``.yml`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        fmt = "toml"
    elif suffix in (".yaml", ".yml"):
        fmt = "yaml"
    else:
        raise InvalidInput(f"{path.name}: a template file ends in .toml, .yaml or .yml.")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_TEXT + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidInput(f"{path.name}: cannot read it ({reason}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path.name}: not UTF-8 text.") from None
    try:
        return parse_template(text, fmt)  # type: ignore[arg-type]
    except InvalidInput as exc:
        raise InvalidInput(f"{path.name}: {exc}") from None


# -- storage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateInfo:
    id: str
    name: str
    #: how many tenants it is applied to
    tenants: int
    updated_at: dt.datetime


def _find(session: Session, name_or_id: str) -> DashboardTemplate:
    row = None
    if isinstance(name_or_id, str):
        if _is_uuid(name_or_id):
            row = session.get(DashboardTemplate, str(uuid.UUID(name_or_id)))
        else:
            row = session.scalar(
                select(DashboardTemplate).where(DashboardTemplate.name == name_or_id)
            )
    if row is None:
        shown = _short(str(name_or_id))
        raise NotFound(f'No template "{shown}"; `writevue template list` shows them.')
    return row


def _brand_id(session: Session, brand: str | None) -> str | None:
    if brand is None:
        return None
    brand_id = session.scalar(select(Brand.id).where(Brand.name == brand))
    if brand_id is None:
        raise InvalidInput(
            f'The template names no brand named "{_short(brand)}": add that brand first, '
            "or take brand out of the template."
        )
    return brand_id


def save_template(session: Session, template: Template, *, replace: bool = False) -> str:
    """Store a template; its id. A name in use is refused unless ``replace``, which keeps
    the id (the tenants it is applied to get the new version)."""
    template = Template.from_json(template.to_json())  # validated, whoever built it
    brand_id = _brand_id(session, template.brand)
    existing = session.scalar(
        select(DashboardTemplate).where(DashboardTemplate.name == template.name)
    )
    if existing is not None:
        if not replace:
            raise InvalidInput(
                f'A template named "{template.name}" exists already; pass --replace to replace it.'
            )
        existing.definition = template.to_json()
        existing.brand_id = brand_id
        existing.updated_at = utcnow()
        session.flush()
        return existing.id
    template_id = str(uuid.uuid4())
    session.add(
        DashboardTemplate(
            id=template_id, name=template.name, definition=template.to_json(), brand_id=brand_id
        )
    )
    session.flush()
    return template_id


def _load(session: Session, row: DashboardTemplate) -> Template:
    template = Template.from_json(row.definition)
    if row.brand_id is not None:
        # the brand's current name, should it have been renamed
        name = session.scalar(select(Brand.name).where(Brand.id == row.brand_id))
        if name is not None and name != template.brand:
            template = Template(
                template.name,
                template.sections,
                template.calculated,
                template.comparison,
                name,
                template.polarity,
            )
    return template


def get_template(session: Session, name_or_id: str) -> Template:
    return _load(session, _find(session, name_or_id))


def template_id(session: Session, name_or_id: str) -> str:
    """The id of the template with this name or id."""
    return _find(session, name_or_id).id


def list_templates(session: Session) -> list[TemplateInfo]:
    counts = dict(
        session.execute(
            select(TenantSettings.template_id, func.count())
            .where(TenantSettings.template_id.is_not(None))
            .group_by(TenantSettings.template_id)
        ).all()
    )
    rows = session.scalars(select(DashboardTemplate).order_by(DashboardTemplate.name))
    return [TemplateInfo(row.id, row.name, counts.get(row.id, 0), row.updated_at) for row in rows]


def delete_template(session: Session, name: str) -> None:
    """Delete a template; refused while it is applied to tenants."""
    row = _find(session, name)
    applied = session.scalar(
        select(func.count()).select_from(TenantSettings).where(TenantSettings.template_id == row.id)
    )
    if applied:
        raise InvalidInput(
            f'Template "{row.name}" is applied to {applied} tenant{"s" if applied != 1 else ""}; '
            "`writevue template clear TENANT_ID...` them first."
        )
    session.delete(row)
    session.flush()


def _settings_rows(session: Session, tenant_ids: Iterable[str]) -> list[TenantSettings]:
    """Each tenant's settings row (new ones added), every tenant checked first."""
    ids = list(dict.fromkeys(registry.require_tenant(session, t) for t in tenant_ids))
    if not ids:
        raise InvalidInput("Name at least one tenant.")
    rows = []
    for tenant_id in ids:
        row = session.get(TenantSettings, tenant_id)
        if row is None:
            row = TenantSettings(tenant_id=tenant_id, locale="en", polarity={})
            session.add(row)
        rows.append(row)
    return rows


def apply_template(session: Session, name: str, tenant_ids: Iterable[str]) -> list[str]:
    """Give these tenants the template (all of them or, on any error, none); their ids."""
    row = _find(session, name)
    rows = _settings_rows(session, tenant_ids)
    for settings in rows:
        settings.template_id = row.id
        settings.updated_at = utcnow()
    session.flush()
    return [settings.tenant_id for settings in rows]


def clear_template(session: Session, tenant_ids: Iterable[str]) -> list[str]:
    """Back to the automatic layout for these tenants; their ids."""
    rows = _settings_rows(session, tenant_ids)
    for settings in rows:
        settings.template_id = None
        settings.updated_at = utcnow()
    session.flush()
    return [settings.tenant_id for settings in rows]


def template_for_tenant(session: Session, tenant_id: str) -> Template | None:
    """The tenant's template, or None: the automatic layout."""
    settings = session.get(TenantSettings, tenant_id)
    if settings is None or settings.template_id is None:
        return None
    row = session.get(DashboardTemplate, settings.template_id)
    if row is None:
        return None
    try:
        return _load(session, row)
    except InvalidInput as exc:
        # stored when valid, but a source has since lost a metric: the automatic layout
        # rather than no dashboard; `writevue template add --replace` mends it
        log.warning(
            "template %s is no longer valid (%s); showing the automatic layout", row.name, exc
        )
        return None


__all__ = [
    "CHARTS",
    "COMPARISONS",
    "KINDS",
    "POLARITIES",
    "UNITS",
    "Calculated",
    "Item",
    "Section",
    "Template",
    "TemplateInfo",
    "apply_template",
    "check_metric_ref",
    "clear_template",
    "delete_template",
    "get_template",
    "list_templates",
    "load_template_file",
    "parse_template",
    "save_template",
    "template_for_tenant",
]
