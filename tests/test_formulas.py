"""Calculated metrics' formulas: parsed without eval, evaluated over aggregates safely."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from writevue_pipelines.errors import InvalidInput
from writevue_pipelines.formulas import MAX_DEPTH, MAX_LENGTH, Ref, parse, parse_ref

VALUES = {
    Ref("stripe.gross_volume"): 1000.0,
    Ref("stripe.gross_volume", "eur"): 600.0,
    Ref("stripe.refunds", "eur"): 50.0,
    Ref("stripe.fees", "eur"): 20.0,
    Ref("stripe.charges"): 8.0,
    Ref("ga4.sessions"): 400.0,
    Ref("ga4.conversions"): 10.0,
    Ref("calc.aov"): 125.0,
    Ref("github.stars", "acme/api"): 7.0,
    Ref("stripe.zero"): 0.0,
}


def value_of(ref: Ref) -> float | None:
    return VALUES.get(ref)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stripe.gross_volume / stripe.charges", 125.0),
        ("stripe.gross_volume[eur] - stripe.refunds[eur] - stripe.fees[eur]", 530.0),
        ("ga4.conversions / ga4.sessions", 0.025),
        ("calc.aov * 2", 250.0),
        ("-calc.aov + 1", -124.0),
        ("2 * (3 + 4)", 14.0),
        ("2 * 3 + 4", 10.0),
        ("10 - 2 - 3", 5.0),
        ("100 / 10 / 5", 2.0),
        ("10 - (2 - 3)", 11.0),
        ("- -3", 3.0),
        ("--3", 3.0),
        ("-(1 + 2) * 2", -6.0),
        (".5 + 1.5e1", 15.5),
        ("  github.stars[acme/api]\t* 1 ", 7.0),
    ],
)
def test_evaluates_with_the_usual_precedence(text, expected):
    assert parse(text).evaluate(value_of) == pytest.approx(expected)


def test_missing_data_and_division_by_zero_give_none():
    assert parse("stripe.gross_volume / stripe.unknown").evaluate(value_of) is None
    assert parse("stripe.unknown * 0").evaluate(value_of) is None
    assert parse("stripe.gross_volume / stripe.zero").evaluate(value_of) is None
    assert parse("1 / (stripe.charges - 8)").evaluate(value_of) is None
    assert parse("1e300 * 1e300").evaluate(value_of) is None  # overflow: not a number
    assert parse("stripe.charges").evaluate(lambda ref: math.nan) is None
    assert parse("stripe.charges").evaluate(lambda ref: math.inf) is None


def test_refs_divides_and_normalised_text():
    formula = parse("(stripe.gross_volume[eur]-stripe.refunds[eur])/stripe.charges+calc.aov")
    assert formula.refs == (
        Ref("stripe.gross_volume", "eur"),
        Ref("stripe.refunds", "eur"),
        Ref("stripe.charges"),
        Ref("calc.aov"),
    )
    assert formula.divides
    assert str(formula) == (
        "(stripe.gross_volume[eur] - stripe.refunds[eur]) / stripe.charges + calc.aov"
    )
    assert not parse("stripe.net - stripe.fees").divides
    assert parse("ga4.sessions + ga4.sessions").refs == (Ref("ga4.sessions"),)
    assert str(parse("a.b / (c.d * e.f)")) == "a.b / (c.d * e.f)"
    assert str(parse("a.b - (c.d - e.f)")) == "a.b - (c.d - e.f)"
    assert str(parse("(a.b - c.d) - e.f")) == "a.b - c.d - e.f"
    assert str(parse("-(a.b * 2)")) == "-(a.b * 2)"
    assert str(parse("2.50 * 1e20")) == "2.5 * 1e+20"
    assert Ref("calc.aov").is_calculated and Ref("stripe.fees", "eur").source == "stripe"
    assert parse_ref("github.stars[acme/api]") == Ref("github.stars", "acme/api")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("stripe.gross_volume /", "at the end"),
        ("stripe.gross_volume // 2", "position 22 ('/')"),
        ("(1 + 2", "at the end"),
        ("1 + 2)", "position 6 (')')"),
        ("Stripe.fees", "position 1 ('S')"),
        ("stripe", "position 1 ('s')"),
        ("stripe.fees.x", "position 12 ('.')"),
        ("stripe.Fees", "position 1 ('s')"),
        ("stripe.fees[", "position 12 ('[')"),
        ("stripe.fees[]", "position 13 (']')"),
        ("stripe.fees[ eur]", "position 13 (' ')"),
        ("__import__('os')", "position 1 ('_')"),
        ("1 ** 2", "position 4 ('*')"),
        ("1e999", "number too large"),
        ("2 3", "position 3 ('3')"),
        ("a.b\n+ c.d", "one line"),
        ("+1", "position 1 ('+')"),
        ("\uff11 + 1", "position 1"),  # a full-width digit one
        ("\u0663", "position 1"),  # an Arabic-Indic three
    ],
)
def test_bad_input_names_the_position(text, where):
    with pytest.raises(InvalidInput) as caught:
        parse(text)
    assert where in str(caught.value)
    assert str(caught.value).startswith("formula")


def test_limits_on_length_and_depth():
    assert parse("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH).evaluate(value_of) == 1
    with pytest.raises(InvalidInput, match="nested"):
        parse("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(InvalidInput, match="nested"):
        parse("-" * (MAX_DEPTH + 1) + "1")
    long_sum = " + ".join(["ga4.sessions"] * 30)
    assert len(long_sum) <= MAX_LENGTH
    assert parse(long_sum).evaluate(value_of) == 12000
    with pytest.raises(InvalidInput, match="longer than 500"):
        parse("1" + " + 1" * 200)
    with pytest.raises(InvalidInput):
        parse(None)  # type: ignore[arg-type]


ALPHABET = st.sampled_from(
    [*"0123456789.+-*/()[] eE_abcsz", "stripe.fees", "calc.x", "ga4.sessions", "[eur]"]
)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(ALPHABET, max_size=60).map("".join)))
def test_hostile_input_only_ever_raises_invalid_input(text):
    try:
        formula = parse(text)
    except InvalidInput:
        return
    for values in (lambda ref: 0.0, lambda ref: None, lambda ref: 1e308, lambda ref: -3.5):
        result = formula.evaluate(values)
        assert result is None or math.isfinite(result)
    # the normalised text is a formula with the same meaning
    again = parse(str(formula))
    assert again.refs == formula.refs
    for values in (lambda ref: 2.0, lambda ref: -0.5):
        first, second = formula.evaluate(values), again.evaluate(values)
        assert (first is None) == (second is None)
        if first is not None:
            assert second == pytest.approx(first, rel=1e-9, abs=1e-12)


@given(
    st.recursive(
        st.one_of(
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda x: f"{x!r}"),
            st.sampled_from(["stripe.fees", "ga4.sessions[x]", "calc.aov"]),
        ),
        lambda inner: st.tuples(inner, st.sampled_from("+-*/"), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        max_leaves=12,
    )
)
def test_generated_formulas_evaluate_without_raising(text):
    try:
        formula = parse(text)
    except InvalidInput as exc:  # only the depth limit
        assert "nested" in str(exc)
        return
    result = formula.evaluate(lambda ref: 3.0)
    assert result is None or math.isfinite(result)
