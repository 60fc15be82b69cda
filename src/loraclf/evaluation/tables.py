"""Plain-text and Markdown tables: the one place that lays out rows of cells for a terminal or a
Markdown file (``loraclf compare``, ``loraclf params``, sweep results, the model card)."""

from __future__ import annotations

from typing import Sequence


def text_table(rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    """Rows of cells as aligned lines, two spaces between columns: columns before `right_from`
    are left-aligned (names), the rest right-aligned (numbers). Trailing spaces are dropped."""
    rows = [[str(c) for c in r] for r in rows]
    if not rows:
        return []
    widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(max(len(r) for r in rows))]
    return ["  ".join(c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")  # a label may contain the column separator


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], right_from: int | None = None) -> str:
    """A Markdown (GitHub) table; columns from `right_from` on are right-aligned (``---:``)."""
    def rule(i: int) -> str:
        return "---:" if right_from is not None and i >= right_from else "---"

    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join(rule(i) for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
