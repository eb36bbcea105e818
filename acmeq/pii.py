"""Masking of personal data in what acmeq shows: job arguments, results, exception text.

Job arguments of a donation platform carry donors' e-mail addresses, names, IBANs and card
details. Whatever acmeq prints ends up in terminals, tickets, chat and cron mail, so values are
masked before they leave the core:

- the value of a key that looks personal (``email``, ``donor_name``, ``iban``, ``card``,
  ``address``, ``phone``, ``ip``, ``token``, ``password`` ...) becomes ``***``, whatever its
  type (a nested ``donor`` object is masked whole);
- e-mail addresses and IBANs are masked inside any string, wherever they appear (free-text
  arguments, exception messages, tracebacks);
- ids and amounts stay: a key ending in ``id``/``ids``/``uuid`` (``donor_id``) is never masked
  by its name, and numbers under non-personal keys are kept, so a failure can still be traced to
  its donation.

Matching is deliberately broad (``campaign_name`` is masked too): a false positive costs a
look-up in the database, a false negative leaks a donor. There is no way to reveal the values
from the CLI; who needs them reads the database, where access is controlled and audited.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

MASK = "***"
EMAIL_MASK = "***@***"

# Key tokens that name personal or secret data (after splitting snake_case/camelCase/kebab).
PERSONAL_TOKENS = frozenset(
    {
        "email",
        "mail",
        "name",
        "firstname",
        "lastname",
        "fullname",
        "surname",
        "username",
        "phone",
        "mobile",
        "tel",
        "telephone",
        "iban",
        "bic",
        "account",
        "card",
        "pan",
        "cvc",
        "cvv",
        "expiry",
        "address",
        "street",
        "zip",
        "postcode",
        "postal",
        "ip",
        "token",
        "password",
        "passwd",
        "pwd",
        "secret",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "auth",
        "cookie",
        "donor",
        "recipient",
        "ssn",
        "birth",
        "birthday",
        "dob",
        "signature",
    }
)
# A key whose last token is one of these names an identifier: kept, even ``donor_id``.
ID_TOKENS = frozenset({"id", "ids", "uuid", "uuids"})

_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# ISO 13616: country code, two check digits, 11-30 alphanumerics (spaces allowed in groups of 4).
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")


def key_tokens(key: str) -> list[str]:
    """``donorEmail`` -> ``['donor', 'email']``; ``first-name`` -> ``['first', 'name']``."""
    return [t.lower() for t in _SPLIT.split(_CAMEL.sub("_", key)) if t]


def is_personal_key(key: str) -> bool:
    """Whether values under this key are masked (identifiers never are)."""
    tokens = key_tokens(key)
    if not tokens or tokens[-1] in ID_TOKENS:
        return False
    for token in tokens:
        singular = token[:-1] if token.endswith("s") and len(token) > 3 else token
        if token in PERSONAL_TOKENS or singular in PERSONAL_TOKENS:
            return True
    # Compounds written as one word: "donoremail", "billingaddress", "cardnumber".
    joined = "".join(tokens)
    return any(len(t) >= 4 and t in joined for t in PERSONAL_TOKENS)


def mask_text(text: str) -> str:
    """Mask e-mail addresses and IBANs inside free text (messages, tracebacks)."""
    return _IBAN.sub(MASK, _EMAIL.sub(EMAIL_MASK, text))


def mask(value: Any, key: str | None = None) -> Any:
    """A copy of ``value`` (JSON-like data) with personal values masked.

    ``key`` is the name the value was found under (a dict key or a parameter name).
    """
    if key is not None and value is not None and is_personal_key(key):
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(item) for item in value]
    return value


def mask_call(
    args: Sequence[Any], kwargs: Mapping[str, Any], param_names: Iterable[str] = ()
) -> dict[str, Any]:
    """Masked ``{"args": [...], "kwargs": {...}}`` of a job call.

    ``param_names`` are the job function's positional parameter names, so a positional
    ``send_receipt("jane@example.org", "Jane Doe")`` is masked by its parameters' names too.
    """
    names = list(param_names)
    masked_args = [
        mask(value, names[i] if i < len(names) else None) for i, value in enumerate(args)
    ]
    return {"args": masked_args, "kwargs": mask(dict(kwargs))}
