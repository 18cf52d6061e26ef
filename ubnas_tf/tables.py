"""Fixed-width text tables, as the tools and benchmarks print them."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["text_table"]


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
