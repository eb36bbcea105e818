"""The worker's Lua scripts, read from the package's ``lua/`` files (package data).

Each script's header documents its KEYS and ARGV; the Python side builds ARGV from a dataclass
whose fields are those names in that order (:func:`argv`), and a test checks that every header
and name list agrees with its dataclass.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from importlib import resources
from typing import Any


@cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files("acmeq.worker").joinpath("lua", f"{name}.lua").read_text("utf-8")


def script(*names: str) -> str:
    """Several files joined into one script (a library file first, then the main one)."""
    return "\n".join(source(name) for name in names)


def argv(args: Any) -> list[Any]:
    """A dataclass instance as ARGV: its field values in field order (bools as '1'/'0')."""
    out: list[Any] = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, float):
            value = repr(value)
        elif value is None:
            value = ""
        out.append(value)
    return out
