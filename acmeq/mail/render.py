"""Templates per locale (jinja2, text + HTML) with Babel formatting of money, numbers and dates.

A template ``NAME`` is ``templates/<locale>/NAME.txt``: a first line ``Subject: ...``, a blank
line, then the plain-text body. The HTML part is ``templates/<locale>/NAME.html`` when it exists,
otherwise the text body set in ``templates/_layout.html`` (paragraphs, links kept). Locales fall
back ``nl_BE`` -> ``nl`` -> the configured default -> ``en``.

Filters (all use the message's locale): ``money(minor, currency)`` (``€ 1.234,56`` in nl,
``1.234,56 €`` in de), ``number(value)``, ``percent(fraction)``, ``date(value, 'long')`` and
``datetime(value)``; dates may be ISO strings (job arguments are JSON).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, format_percent, get_currency_precision

from acmeq.errors import UsageError

TEMPLATES = Path(__file__).resolve().parent / "templates"
LOCALES = ("en", "nl", "fr", "de")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    locale: str


def resolve_locale(locale: str | None, default: str = "en") -> str:
    """The best template locale for ``locale`` (``nl-BE`` -> ``nl``), else ``default``."""
    for candidate in (locale or "", default, "en"):
        tag = candidate.replace("-", "_")
        for option in (tag, tag.split("_")[0]):
            if option and (TEMPLATES / option).is_dir():
                return option
    return "en"


def money(minor: int | str | Decimal, currency: str, locale: str) -> str:
    """An amount in minor units (cents) as the locale writes it: nl ``€ 1.234,56``."""
    digits = get_currency_precision(currency)
    amount = Decimal(int(minor)).scaleb(-digits)
    return str(format_currency(amount, currency, locale=_babel(locale)))


def _as_date(value: Any) -> date | datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value)
    if isinstance(value, date):
        return value
    raise ValueError(f"not a date: {value!r}")


@functools.cache
def _babel(locale: str) -> Locale:
    try:
        return Locale.parse(locale.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


@functools.cache
def _environment(locale: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    loc = _babel(locale)
    env.filters["money"] = lambda minor, currency: money(minor, currency, locale)
    env.filters["number"] = lambda value: format_decimal(value, locale=loc)
    env.filters["percent"] = lambda value: format_percent(value, locale=loc)
    env.filters["date"] = lambda value, fmt="long": format_date(_as_date(value), fmt, locale=loc)
    env.filters["datetime"] = lambda value, fmt="medium": format_datetime(
        _as_date(value), fmt, locale=loc
    )
    return env


def render(name: str, context: dict[str, Any], locale: str | None, default: str = "en") -> Rendered:
    """Render template ``name`` in the best locale; raise UsageError for an unknown template."""
    loc = resolve_locale(locale, default)
    env = _environment(loc)
    try:
        source = env.get_template(f"{loc}/{name}.txt")
    except jinja2.TemplateNotFound:
        try:
            source = env.get_template(f"en/{name}.txt")
        except jinja2.TemplateNotFound:
            raise UsageError(
                f"unknown mail template {name!r}; known: {', '.join(names())}"
            ) from None
    full = source.render(locale=loc, **context)
    first, _, body = full.partition("\n")
    if not first.startswith("Subject:"):
        raise UsageError(f"mail template {name!r} must start with a 'Subject:' line")
    subject = first.removeprefix("Subject:").strip()
    body = body.lstrip("\n")
    try:
        html = env.get_template(f"{loc}/{name}.html").render(locale=loc, **context)
    except jinja2.TemplateNotFound:
        html = html_from_text(subject, body, loc)
    return Rendered(subject=subject, text=body, html=html, locale=loc)


def html_from_text(subject: str, text: str, locale: str) -> str:
    """The HTML part of a text-only message: the layout with one paragraph per text block."""
    env = _environment(locale)
    paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
    return env.get_template("_layout.html").render(
        subject=subject, paragraphs=[p.split("\n") for p in paragraphs], locale=locale
    )


def names() -> list[str]:
    """The template names available (in English, the fallback locale)."""
    return sorted(p.name.removesuffix(".txt") for p in (TEMPLATES / "en").glob("*.txt"))
