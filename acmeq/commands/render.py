"""How every command prints: tables that use the terminal and never cut ids, and ``--json``.

Two rules (docs/cli.md, "Output"):

- **On a terminal** tables are laid out for the terminal's real width (rich asks the terminal;
  ``COLUMNS`` overrides). Long free-text cells are shortened or wrapped to fit, but a job id is
  never cut: an id column keeps the width of its longest id.
- **When stdout is not a terminal** (a pipe, a file, cron mail) nothing is shortened: the
  console is as wide as the longest line, so ``acmeq config show | grep max_processes`` finds
  every row and ids can be copied from logs. Charts are drawn 80 columns wide. An exported
  ``COLUMNS`` (shells set it without exporting it) asks for that width instead; ids stay whole.

Commands import :data:`console`, :func:`table`, :func:`show` and :func:`emit_json` from here
(``acmeq.commands.common`` re-exports the consoles and ``emit_json`` for older modules).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any, Literal

from rich.console import Console, ConsoleDimensions, RenderableType
from rich.table import Column, Table
from rich.text import Text

# The width of a console whose output is not a terminal: wider than any line acmeq prints, so
# rich never wraps or shortens; lines are only as long as their content.
UNLIMITED = 100_000


class OutputConsole(Console):
    """A rich console that is unlimited in width when its output is not a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        real = super().size
        if self.is_terminal or _columns_given():
            return real
        return ConsoleDimensions(UNLIMITED, real.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def layout_width(self) -> int:
        """The width to lay charts and bars out for: the terminal's, else COLUMNS or 80."""
        return super().size.width


def _columns_given() -> bool:
    return os.environ.get("COLUMNS", "").isdigit()


console = OutputConsole()
err_console = Console(stderr=True)


def layout_width() -> int:
    """See :meth:`OutputConsole.layout_width`."""
    return console.layout_width()


def is_terminal() -> bool:
    return console.is_terminal


def table(
    *headers: str,
    ids: Iterable[str] = (),
    right: Iterable[str] = (),
    fold: Iterable[str] = (),
) -> Table:
    """A borderless table of ``headers``.

    ``ids``: columns holding ids, never cut (see :func:`show`); ``right``: right-aligned
    (numbers); ``fold``: free text that wraps on a narrow terminal instead of being cut.
    Every other cell stays on one line and is shortened with "…" only on a narrow terminal.
    """
    id_set, right_set, fold_set = set(ids), set(right), set(fold)
    columns: list[Column] = []
    for header in headers:
        justify: Literal["left", "right"] = "right" if header in right_set else "left"
        column = Column(
            header,
            justify=justify,
            no_wrap=header not in fold_set,
            overflow="fold" if header in fold_set else "ellipsis",
        )
        if header in id_set:
            column.no_wrap = True
            column.overflow = "fold"
            column.__dict__["acmeq_id"] = True  # see keep_ids()
        columns.append(column)
    return Table(*columns, box=None, pad_edge=False)


def mark_id_column(column: Column) -> None:
    """Mark a column built elsewhere as holding ids (kept whole by :func:`keep_ids`)."""
    column.no_wrap = True
    column.overflow = "fold"
    column.__dict__["acmeq_id"] = True


def keep_ids(table: Table) -> Table:
    """Give every id column the width of its longest cell: rich then never shortens it."""
    for column in table.columns:
        if column.__dict__.get("acmeq_id"):
            cells = [len(c.plain if isinstance(c, Text) else str(c)) for c in column.cells]
            column.min_width = max([len(str(column.header)), *cells])
    return table


def show(*renderables: RenderableType) -> None:
    """Print tables (ids kept whole) and other renderables on stdout."""
    for item in renderables:
        if isinstance(item, Table):
            keep_ids(item)
        console.print(item)


def line(text: str) -> None:
    """Print one plain line (no markup, no highlighting, never wrapped)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Print machine-readable output on stdout: stable keys, ISO times, no colour."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def json_line(data: Any) -> None:
    """One JSON document on one line (``--watch --json`` streams)."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
