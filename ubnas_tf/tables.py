"""Tables of figures, as the tools and benchmarks print (text) and write (markdown) them,
and the mean and spread their repeated runs report."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["markdown_table", "mean_std", "text_table"]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    r"""\\((\bar x, s)\\): the mean and the sample standard deviation (ddof = 1) of `values`;
    ``s`` is None for a single value (one run says nothing about the spread)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values.")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; a ``|`` inside a cell is escaped."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells")

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1,
               footer: Sequence[Sequence[str]] = (), framed: bool = False) -> str:
    """Aligns `header`, `rows` and `footer` (cells already formatted as strings).

    The first `left` columns are left-aligned (names), the others right-aligned (figures).
    A rule follows the header and precedes the footer; `framed` adds one above the header
    and below the last line.
    """
    lines = [header, *rows, *footer]
    if any(len(line) != len(header) for line in lines):
        raise ValueError(f"every row needs {len(header)} cells")
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [rule] if framed else []
    out += [fmt(header), rule, *(fmt(r) for r in rows)]
    if footer:
        out += [rule, *(fmt(r) for r in footer)]
    if framed:
        out.append(rule)
    return "\n".join(out)
