"""Money as integer minor units, and the providers' decimal strings."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# ISO 4217 currencies without minor units (Stripe's and PayPal's lists agree on these).
ZERO_DECIMAL = frozenset(
    [
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    ]
)


def exponent(currency: str) -> int:
    return 0 if currency.upper() in ZERO_DECIMAL else 2


def to_minor(value: str | int | float | Decimal, currency: str) -> int:
    """``"12.50"`` EUR -> 1250; raise ValueError on anything that is not an exact amount."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not an amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    scaled = amount.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value!r} has more decimals than {currency.upper()} allows")
    return int(scaled)


def to_decimal_str(minor: int, currency: str) -> str:
    """1250 EUR -> ``"12.50"`` (what Mollie and PayPal expect)."""
    places = exponent(currency)
    quantum = Decimal(1).scaleb(-places)
    return str(Decimal(minor).scaleb(-places).quantize(quantum, rounding=ROUND_HALF_UP))


def fmt(minor: int, currency: str) -> str:
    return f"{to_decimal_str(minor, currency)} {currency.upper()}"
