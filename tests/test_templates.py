"""Dashboard templates, calculated metrics' definitions and per-tenant settings: the file
format and its validation, storage on SQLite and PostgreSQL, and the commands."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import pytest
from support import add_tenant, run_cli

from writevue_pipelines import templates, tenant_settings
from writevue_pipelines.errors import InvalidInput, NotFound
from writevue_pipelines.formulas import Ref
from writevue_pipelines.models import Brand, DashboardTemplate, TenantSettings
from writevue_pipelines.templates import Calculated, Item, Section, Template

DOCS = Path(__file__).resolve().parent.parent / "docs" / "templates"

SMALL = """
name = "small"

[[sections]]
title = "Sales"
items = [{ metric = "stripe.gross_volume", chart = "line" }, { metric = "calc.aov" }]

[[calculated]]
name = "aov"
label = "Average order value"
formula = "stripe.gross_volume[eur] / stripe.charges"
unit = "money"
currency = "EUR"
"""


def small(**changes) -> str:
    return SMALL.replace('name = "small"', f'name = "{changes.get("name", "small")}"')


# -- the format ----------------------------------------------------------------------------


def test_the_shipped_ecommerce_example():
    template = templates.load_template_file(DOCS / "ecommerce.toml")
    assert template.name == "ecommerce" and template.comparison == "previous"
    calc = {c.name: c for c in template.calculated}
    aov = calc["average_order_value"]
    assert (aov.kind, aov.unit, aov.currency, aov.polarity) == ("ratio", "money", "eur", "up_good")
    assert aov.formula.refs == (Ref("stripe.gross_volume", "eur"), Ref("stripe.charges"))
    net = calc["net_revenue"]
    assert (net.kind, net.unit, net.currency) == ("counter", "money", "eur")
    assert str(net.formula) == ("stripe.gross_volume[eur] - stripe.refunds[eur] - stripe.fees[eur]")
    items = [item for section in template.sections for item in section.items]
    metrics = [item.metric for item in items]
    assert {"stripe.gross_volume", "stripe.charges", "calc.average_order_value"} <= set(metrics)
    assert "calc.net_revenue" in metrics and "stripe.refunds" in metrics
    assert dict(template.polarity) == {"stripe.refunds": "up_bad", "stripe.fees": "up_bad"}
    assert all(item.chart in {"number", "line", "bar", "table"} for item in items)


def test_the_shipped_open_source_example_puts_totals_first():
    template = templates.load_template_file(DOCS / "open-source.toml")
    first, *rest = template.sections
    assert [(i.metric, i.split, i.dimension) for i in first.items][:3] == [
        ("github.stars", False, None),
        ("github.forks", False, None),
        ("github.open_issues", False, None),
    ]
    split = [i for section in rest for i in section.items if i.split]
    assert {i.metric for i in split} >= {"github.stars", "github.commits"}


def test_yaml_is_the_same_format(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: yamly\ncomparison: last_year\nsections:\n"
        "  - title: Traffic\n    items:\n      - metric: ga4.sessions\n        chart: bar\n"
        "      - {metric: calc.conversion_rate, label: Conversion}\n"
        "calculated:\n  - name: conversion_rate\n    formula: ga4.conversions / ga4.sessions\n"
        "    unit: percent\n"
    )
    template = templates.load_template_file(path)
    assert template.comparison == "last_year"
    (calc,) = template.calculated
    assert (calc.kind, calc.unit, calc.polarity, calc.currency) == (
        "ratio",
        "percent",
        "up_good",
        None,
    )
    assert calc.label == "Conversion rate"  # from the name when none is given
    assert template.sections[0].items[1] == Item("calc.conversion_rate", label="Conversion")
    assert templates.load_template_file(path.rename(tmp_path / "t.yml")) == template
    with pytest.raises(InvalidInput, match=r"\.toml, \.yaml or \.yml"):
        templates.load_template_file(path.with_suffix(".json"))
    with pytest.raises(InvalidInput, match="cannot read"):
        templates.load_template_file(tmp_path / "missing.toml")


def test_json_round_trip_keeps_everything():
    template = templates.parse_template(SMALL, "toml")
    data = template.to_json()
    assert json.loads(json.dumps(data)) == data
    assert Template.from_json(data) == template
    assert data["calculated"][0]["formula"] == "stripe.gross_volume[eur] / stripe.charges"
    assert data["calculated"][0]["currency"] == "eur"
    for path in DOCS.glob("*.toml"):
        loaded = templates.load_template_file(path)
        assert Template.from_json(json.loads(json.dumps(loaded.to_json()))) == loaded


def test_a_hand_built_template_validates_like_a_file():
    from writevue_pipelines.formulas import parse

    template = Template(
        name="hand",
        sections=(Section("Repos", (Item("github.stars", split=True, chart="bar"),)),),
        calculated=(
            Calculated(
                "ratio",
                "PR merge rate",
                parse("github.pull_requests_merged / github.pull_requests_opened"),
                "ratio",
                "up_good",
                "percent",
                None,
            ),
        ),
    )
    assert Template.from_json(template.to_json()) == template


BAD = [
    (
        'name = "x"\n[[sections]]\ntitle = "A"\nitems = [{ metric = "stripe.gross_volume" }]\n'
        '[[sections]]\ntitle = "B"\nitems = [{ metric = "strpe.fees" }]',
        'sections[1].items[0].metric: no source "strpe"; sources are ga4, github, rest, stripe',
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\nitems = [{ metric = "stripe.gross" }]',
        'sections[0].items[0].metric: stripe has no metric "gross"; its metrics are charges,'
        " fees, gross_volume, net, new_customers, refunds",
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\nitems = [{ metric = "rest.anything_goes" },'
        ' { metric = "calc.missing" }]',
        'sections[0].items[1].metric: no calculated metric "missing" in this template',
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\n'
        'items = [{ metric = "ga4.sessions", chart = "pie" }]',
        'sections[0].items[0].chart: "pie" is not one of number, line, bar, table',
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\n'
        'items = [{ metric = "ga4.sessions", chrat = "bar" }]',
        'sections[0].items[0]: unknown key "chrat"; known keys are chart, dimension, label,'
        " metric, split",
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\n'
        'items = [{ metric = "ga4.sessions", split = true }]',
        "sections[0].items[0].split: ga4 metrics have no breakdown",
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\n'
        'items = [{ metric = "github.stars", split = true, dimension = "a/b" }]',
        "sections[0].items[0]: split and dimension exclude each other",
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "calc.b + 1"\n'
        '[[calculated]]\nname = "b"\nformula = "calc.a * 2"',
        "calculated[0].formula: calc.a refers back to itself (calc.a -> calc.b -> calc.a)",
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "calc.a + 1"',
        "calculated[0].formula: calc.a refers back to itself (calc.a -> calc.a)",
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "1"\n[[calculated]]\nname = "a"\n'
        'formula = "2"',
        'calculated[1].name: "a" is already the name of calculated[0]',
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "stripe.fees / "',
        "calculated[0].formula: formula at the end: expected a number",
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "stripe.fees / stripe.charges"\n'
        'unit = "money"',
        'calculated[0].currency: a money metric needs a currency (such as "eur") unless '
        "every metric in its formula is pinned to the same one",
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "ga4.sessions[x]"',
        "calculated[0].formula: ga4 metrics have no breakdown",
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "ga4.sessions"\nkind = "level"',
        'calculated[0].kind: "level" is not one of counter, gauge, ratio',
    ),
    (
        'name = "x"\n[[calculated]]\nname = "a"\nformula = "ga4.sessions"\npolarity = "good"',
        'calculated[0].polarity: "good" is not one of up_good, up_bad, neutral',
    ),
    (
        'name = "x"\n[[calculated]]\nname = "Bad Name"\nformula = "1"',
        'calculated[0].name: "Bad Name" is not a name: lower case letters, digits and _,'
        " starting with a letter",
    ),
    (
        'name = "x"\ncomparison = "yesterday"',
        'comparison: "yesterday" is not one of previous, last_year',
    ),
    ("sections = []", "name: missing"),
    ('name = "x"\nsections = [{ items = [] }]', "sections[0].title: missing"),
    ('name = "x"\nsections = "all"', "sections: expected a list"),
    ('name = "x"\ncolour = "red"', 'unknown key "colour"'),
    ('name = "x" = "y"', "not valid TOML"),
    (
        'name = "x"\n' + "".join(f'[[sections]]\ntitle = "s{i}"\n' for i in range(21)),
        "sections: at most 20 sections",
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\nitems = ['
        + ", ".join('{ metric = "ga4.sessions" }' for _ in range(61))
        + "]",
        "at most 60 items",
    ),
    (
        'name = "x"\n[[sections]]\ntitle = "A"\n[[sections]]\ntitle = "A"',
        'sections[1].title: "A" is already the title of sections[0]',
    ),
    (
        'name = "6f1c2e0a-1b2c-4d5e-8f90-1234567890ab"',
        "name: a template name is 1 to 100 letters, digits, - and _ (not an id)",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=range(len(BAD)))
def test_validation_names_the_place(text, message):
    with pytest.raises(InvalidInput) as caught:
        templates.parse_template(text, "toml")
    assert message in str(caught.value)


def test_bad_yaml_and_wrong_shapes_are_one_message():
    for text in ("name: [unclosed", "- a list", "just text", "name: x\nsections: {a: 1}"):
        with pytest.raises(InvalidInput):
            templates.parse_template(text, "yaml")
    with pytest.raises(InvalidInput, match="toml or yaml"):
        templates.parse_template("name = 'x'", "json")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="larger than"):
        templates.parse_template("#" * 200_001, "toml")


def test_kind_and_currency_defaults():
    text = (
        'name = "k"\n[[calculated]]\nname = "net"\n'
        'formula = "stripe.gross_volume[usd] - stripe.fees[usd]"\nunit = "money"\n'
        '[[calculated]]\nname = "level"\nformula = "github.stars * 2"\nkind = "gauge"\n'
        'polarity = "neutral"\n'
    )
    net, level = templates.parse_template(text, "toml").calculated
    assert (net.kind, net.currency, net.polarity, net.label) == ("counter", "usd", "up_good", "Net")
    assert (level.kind, level.polarity, level.unit) == ("gauge", "neutral", "number")
    with pytest.raises(InvalidInput, match="currency: only a money metric"):
        templates.parse_template(
            'name = "k"\n[[calculated]]\nname = "a"\nformula = "1"\ncurrency = "eur"', "toml"
        )
    with pytest.raises(InvalidInput, match="not a currency code"):
        templates.parse_template(
            'name = "k"\n[[calculated]]\nname = "a"\nformula = "1"\nunit = "money"\n'
            'currency = "euro"',
            "toml",
        )


# -- storage -------------------------------------------------------------------------------


def _brand(runtime, name: str) -> str:
    brand_id = str(uuid.uuid4())
    with runtime.db.session() as session:
        session.add(Brand(id=brand_id, name=name, display_name=name.title(), colors={}))
    return brand_id


def test_storage_save_get_list_apply_clear_delete(any_runtime):
    runtime = any_runtime
    a, b = add_tenant(runtime, "A Co"), add_tenant(runtime, "B Co")
    template = templates.parse_template(SMALL, "toml")
    with runtime.db.session() as session:
        template_id = templates.save_template(session, template)
    with runtime.db.session() as session:
        assert templates.get_template(session, "small") == template
        assert templates.get_template(session, template_id) == template
        with pytest.raises(InvalidInput, match="already"):
            templates.save_template(session, template)
    with runtime.db.session() as session:
        (info,) = templates.list_templates(session)
        assert (info.id, info.name, info.tenants) == (template_id, "small", 0)
        assert info.updated_at.tzinfo is not None
        assert templates.template_for_tenant(session, a) is None
        templates.apply_template(session, "small", [a, b])
    with runtime.db.session() as session:
        assert templates.template_for_tenant(session, a) == template
        assert templates.list_templates(session)[0].tenants == 2
        assert tenant_settings.get_settings(session, a).template_id == template_id
        with pytest.raises(InvalidInput, match="applied to 2 tenants"):
            templates.delete_template(session, "small")

    changed = Template(template.name, template.sections[:1], template.calculated, "last_year")
    with runtime.db.session() as session:
        assert templates.save_template(session, changed, replace=True) == template_id
    with runtime.db.session() as session:
        assert templates.template_for_tenant(session, b).comparison == "last_year"
        templates.clear_template(session, [a, b])
    with runtime.db.session() as session:
        assert templates.template_for_tenant(session, a) is None
        templates.delete_template(session, "small")
    with runtime.db.session() as session:
        assert templates.list_templates(session) == []
        with pytest.raises(NotFound, match="template list"):
            templates.get_template(session, "small")


def test_apply_is_all_or_nothing(any_runtime):
    runtime = any_runtime
    a = add_tenant(runtime)
    with runtime.db.session() as session:
        templates.save_template(session, templates.parse_template(SMALL, "toml"))
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound), runtime.db.session() as session:
        templates.apply_template(session, "small", [a, missing])
    with pytest.raises(NotFound), runtime.db.session() as session:
        templates.apply_template(session, "nope", [a])
    with runtime.db.session() as session:
        assert templates.template_for_tenant(session, a) is None
        assert session.query(TenantSettings).count() == 0


def test_a_template_names_an_existing_brand(any_runtime):
    runtime = any_runtime
    brand_id = _brand(runtime, "northwind")
    branded = small(name="branded").replace(
        'name = "branded"', 'name = "branded"\nbrand = "northwind"'
    )
    template = templates.parse_template(branded, "toml")
    assert template.brand == "northwind"
    with runtime.db.session() as session:
        template_id = templates.save_template(session, template)
    with runtime.db.session() as session:
        assert session.get(DashboardTemplate, template_id).brand_id == brand_id
        assert templates.get_template(session, template_id).brand == "northwind"
    unknown = templates.parse_template(branded.replace("northwind", "southwind"), "toml")
    with pytest.raises(InvalidInput, match='no brand named "southwind"'), runtime.db.session() as s:
        templates.save_template(
            s, Template("other", unknown.sections, unknown.calculated, brand=unknown.brand)
        )


# -- tenant settings -----------------------------------------------------------------------


def test_settings_defaults_updates_and_validation(any_runtime):
    runtime = any_runtime
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        settings = tenant_settings.get_settings(session, tenant)
    assert settings == tenant_settings.DashboardSettings()
    assert (settings.locale, settings.comparison, dict(settings.polarity)) == ("en", None, {})
    assert tenant_settings.separators("en") == (",", ".")
    assert tenant_settings.separators("de") == (".", ",")
    with runtime.db.session() as session:
        tenant_settings.update_settings(
            session,
            tenant,
            locale="de",
            comparison="last_year",
            polarity_set={"stripe.refunds": "up_bad", "rest.churn": "up_bad"},
        )
    with runtime.db.session() as session:
        settings = tenant_settings.get_settings(session, tenant)
        assert (settings.locale, settings.comparison) == ("de", "last_year")
        assert dict(settings.polarity) == {"stripe.refunds": "up_bad", "rest.churn": "up_bad"}
        tenant_settings.update_settings(
            session, tenant, comparison=None, polarity_clear=["rest.churn"]
        )
    with runtime.db.session() as session:
        settings = tenant_settings.get_settings(session, tenant)
        assert (settings.locale, settings.comparison) == ("de", None)
        assert dict(settings.polarity) == {"stripe.refunds": "up_bad"}

    bad = [
        ({"locale": "klingon"}, 'locale "klingon" is not one of'),
        ({"comparison": "yesterday"}, 'comparison "yesterday" is not one of previous, last_year'),
        ({"polarity_set": {"stripe.refunds": "bad"}}, "up_good, up_bad or neutral"),
        ({"polarity_set": {"strpe.refunds": "up_bad"}}, 'no source "strpe"'),
        ({"polarity_set": {"calc.aov": "up_bad"}}, 'no calculated metric "aov"'),
    ]
    for kwargs, message in bad:
        with pytest.raises(InvalidInput, match=message), runtime.db.session() as session:
            tenant_settings.update_settings(session, tenant, **kwargs)
    with pytest.raises(NotFound), runtime.db.session() as session:
        tenant_settings.update_settings(session, str(uuid.uuid4()), locale="de")
    with runtime.db.session() as session:
        assert tenant_settings.get_settings(session, tenant).locale == "de"  # unchanged
        # a calculated metric of the tenant's template can have its polarity overridden
        templates.save_template(session, templates.parse_template(SMALL, "toml"))
        templates.apply_template(session, "small", [tenant])
        tenant_settings.update_settings(session, tenant, polarity_set={"calc.aov": "neutral"})
    with runtime.db.session() as session:
        assert tenant_settings.get_settings(session, tenant).polarity["calc.aov"] == "neutral"
    with pytest.raises(InvalidInput):
        tenant_settings.separators("xx")


# -- the commands --------------------------------------------------------------------------


def test_template_and_tenant_set_commands_end_to_end(runtime, monkeypatch, capsys, tmp_path):
    a, b = add_tenant(runtime, "A Co"), add_tenant(runtime, "B Co")
    ecommerce = str(DOCS / "ecommerce.toml")

    code, out, err = run_cli(monkeypatch, capsys, "template", "add", ecommerce)
    assert code == 0, err
    template_id = out.strip().splitlines()[-1]
    assert uuid.UUID(template_id)
    code, out, err = run_cli(monkeypatch, capsys, "template", "add", ecommerce)
    assert code == 2 and "--replace" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(monkeypatch, capsys, "template", "add", ecommerce, "--replace")
    assert code == 0 and out.strip().splitlines()[-1] == template_id, err

    code, out, err = run_cli(monkeypatch, capsys, "template", "apply", "ecommerce", a, b)
    assert code == 0 and "2 tenants" in out, err
    code, out, _ = run_cli(monkeypatch, capsys, "template", "list", "--json")
    (listed,) = json.loads(out)
    assert (listed["id"], listed["name"], listed["tenants"]) == (template_id, "ecommerce", 2)
    code, out, _ = run_cli(monkeypatch, capsys, "template", "list")
    assert "ecommerce" in out and "2 tenants" in out
    code, out, _ = run_cli(monkeypatch, capsys, "template", "show", "ecommerce", "--json")
    assert Template.from_json(json.loads(out)) == templates.load_template_file(ecommerce)
    code, out, _ = run_cli(monkeypatch, capsys, "template", "show", template_id)
    assert "average_order_value = stripe.gross_volume[eur] / stripe.charges" in out

    code, out, err = run_cli(monkeypatch, capsys, "template", "remove", "ecommerce")
    assert code == 2 and "applied to 2 tenants" in err
    code, out, err = run_cli(monkeypatch, capsys, "template", "clear", a, b)
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "template", "remove", "ecommerce")
    assert code == 0, err
    code, out, _ = run_cli(monkeypatch, capsys, "template", "list", "--json")
    assert json.loads(out) == []

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[sections]]\ntitle = "A"\nitems = [{ metric = "strpe.x" }]\n')
    code, out, err = run_cli(monkeypatch, capsys, "template", "add", str(bad))
    assert code == 2 and out == "" and "sections[0].items[0].metric" in err
    assert len(err.strip().splitlines()) == 1

    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("tenant", "set", a, "--locale", "fr", "--comparison", "last_year"),
        *("--polarity", "stripe.refunds=up_bad", "--polarity", "stripe.fees=up_bad"),
    )
    assert code == 0, err
    code, out, err = run_cli(
        monkeypatch, capsys, "tenant", "set", a, "--clear-polarity", "stripe.fees"
    )
    assert code == 0, err
    assert "locale fr" in out and "stripe.refunds=up_bad" in out
    with runtime.db.session() as session:
        settings = tenant_settings.get_settings(session, a)
    assert (settings.locale, settings.comparison, dict(settings.polarity)) == (
        "fr",
        "last_year",
        {"stripe.refunds": "up_bad"},
    )
    for args, message in [
        (["--polarity", "stripe.refunds"], "REF=up_good"),
        (["--locale", "xx"], 'locale "xx"'),
        (["--comparison", "yesterday"], "invalid choice"),
    ]:
        code, out, err = run_cli(monkeypatch, capsys, "tenant", "set", a, *args)
        assert code == 2 and message in err and out == "", err
    code, out, err = run_cli(monkeypatch, capsys, "tenant", "set", a, "--comparison", "default")
    assert code == 0, err
    with runtime.db.session() as session:
        assert tenant_settings.get_settings(session, a).comparison is None


def test_settings_rows_are_timestamped(runtime):
    tenant = add_tenant(runtime)
    before = dt.datetime.now(dt.UTC)
    with runtime.db.session() as session:
        tenant_settings.update_settings(session, tenant, locale="sv")
    with runtime.db.session() as session:
        row = session.get(TenantSettings, tenant)
        assert row.updated_at >= before - dt.timedelta(seconds=1)


def test_a_stored_template_that_no_longer_validates_falls_back_to_the_automatic_layout(
    runtime, caplog
):
    tenant = add_tenant(runtime)
    with runtime.db.session() as session:
        template_id = templates.save_template(session, templates.parse_template(SMALL, "toml"))
        templates.apply_template(session, "small", [tenant])
        row = session.get(DashboardTemplate, template_id)
        broken = dict(row.definition)
        broken["sections"] = [{"title": "A", "items": [{"metric": "stripe.gone"}]}]
        row.definition = broken
    with runtime.db.session() as session:
        with pytest.raises(InvalidInput, match='stripe has no metric "gone"'):
            templates.get_template(session, "small")
        assert templates.template_for_tenant(session, tenant) is None
    assert any("no longer valid" in r.getMessage() for r in caplog.records)
