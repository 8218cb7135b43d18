"""Figures as a client reads them: compact on cards (€12.9k), exact on hover and in
tables (€12,912.40), counts without decimals, percentages, the tenant's separators."""

from __future__ import annotations

import math

from writevue_pipelines.sources.stripe import ZERO_DECIMAL
from writevue_pipelines.tenant_settings import LOCALES

#: ISO 4217 code (as Stripe spells it, lower case) -> symbol; others show their code
CURRENCY_SYMBOLS = {
    "usd": "$",
    "eur": "€",
    "gbp": "£",
    "jpy": "¥",
    "cny": "CN¥",
    "inr": "₹",
    "krw": "₩",
    "brl": "R$",
    "aud": "A$",
    "cad": "CA$",
    "nzd": "NZ$",
    "hkd": "HK$",
    "sgd": "S$",
    "mxn": "MX$",
    "ils": "₪",
    "pln": "zł",
    "try": "₺",
    "rub": "₽",
    "uah": "₴",
    "thb": "฿",
    "php": "₱",
    "vnd": "₫",
    "ngn": "₦",
}


def separators(locale: str) -> tuple[str, str]:
    """(thousands, decimal) of a tenant's locale; en for one this version does not know."""
    return LOCALES.get(locale, LOCALES["en"])


#: where the currency symbol goes: before the figure in en (and ch), after it elsewhere
_SYMBOL_FIRST = frozenset({"en", "ch"})
_COMPACT = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def _digits(value: float, decimals: int, locale: str) -> str:
    thousands, point = separators(locale)
    text = f"{abs(value):,.{decimals}f}"
    text = text.replace(",", "\0").replace(".", point).replace("\0", thousands)
    return ("-" if value < 0 and float(f"{abs(value):.{decimals}f}") != 0 else "") + text


def _money(text: str, currency: str | None, locale: str) -> str:
    if not currency:
        return text
    symbol = CURRENCY_SYMBOLS.get(currency.lower())
    negative = text.startswith("-")
    body = text[1:] if negative else text
    sign = "-" if negative else ""
    if symbol is None:
        return f"{sign}{body}\u00a0{currency.upper()}"
    if locale in _SYMBOL_FIRST:
        return f"{sign}{symbol}{body}"
    return f"{sign}{body}\u00a0{symbol}"


def _decimals(value: float, unit: str, currency: str | None) -> int:
    if unit == "money":
        return 0 if (currency or "").lower() in ZERO_DECIMAL else 2
    if unit == "count":
        return 0
    if unit == "percent":
        return 1
    return 0 if float(value).is_integer() or abs(value) >= 100 else 2


def exact(value: float | None, unit: str, currency: str | None = None, locale: str = "en") -> str:
    """The whole figure: thousands separators, cents for money, none for counts."""
    if value is None or not math.isfinite(value):
        return "—"
    if unit == "percent":
        return _digits(value * 100, 1, locale) + "%"
    return _money(_digits(value, _decimals(value, unit, currency), locale), currency, locale)


def compact(value: float | None, unit: str, currency: str | None = None, locale: str = "en") -> str:
    """A short figure for a card: €12.9k, 1.2M, 37; the exact one goes beside it."""
    if value is None or not math.isfinite(value):
        return "—"
    if unit == "percent":
        return exact(value, unit, currency, locale)
    for size, suffix in _COMPACT:
        if abs(value) >= size:
            scaled = value / size
            decimals = 0 if abs(scaled) >= 100 else 1
            text = _digits(scaled, decimals, locale)
            point = separators(locale)[1]
            if decimals and text.endswith(point + "0"):
                text = text[:-2]
            return _money(text + suffix, currency, locale)
    if unit in ("count", "money"):
        whole = unit == "count" or abs(value) >= 100 or float(value).is_integer()
        decimals = 0 if whole else _decimals(value, unit, currency)
        return _money(_digits(value, decimals, locale), currency, locale)
    return exact(value, unit, currency, locale)


def change(fraction: float | None, locale: str = "en") -> str:
    """A relative change as +12.5% (or with a minus sign, -3.1%)."""
    if fraction is None or not math.isfinite(fraction):
        return "—"
    text = _digits(fraction * 100, 1, locale)
    return ("+" if fraction >= 0 else "\u2212") + text.lstrip("-") + "%"


def axis(value: float, unit: str, currency: str | None = None, locale: str = "en") -> str:
    """A chart axis label: compact, without a currency symbol."""
    return (
        compact(value, "percent" if unit == "percent" else "number", None, locale)
        if (unit == "percent" or abs(value) >= 1000)
        else _digits(value, 0 if float(value).is_integer() else 1, locale)
    )


def csv_number(value: float, unit: str) -> int | float:
    """A CSV cell: counts as whole numbers (no ``.0``), the rest as they are."""
    if unit == "count" and float(value).is_integer():
        return int(value)
    return value
