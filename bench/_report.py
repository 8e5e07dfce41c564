"""
The benchmark's table: one L{Row} per figure, its same-run baseline, the
ratio and whether it meets its target, printed as text or Markdown.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """
    One line of the table.

    @ivar ratio: The figure over its baseline (or L{None} when the row only
        reports).
    @ivar met: Whether the target is met; L{None} for "report it" rows.
    """

    number: str
    figure: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    command: str
    notes: str = ""

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "NO", None: "-"}[self.met]


def spread(values: Sequence[float]) -> str:
    """
    C{median (min-max)} of a few measurements, or the one value.
    """
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def _ratio(row: Row) -> str:
    return "" if row.ratio is None else f"{row.ratio:.2f}x"


def text(rows: Sequence[Row]) -> str:
    """
    A plain-text table for the terminal.
    """
    header = ("#", "figure", "value", "baseline (same run)", "ratio", "target", "met")
    body = [(r.number, r.figure, r.value, r.baseline, _ratio(r), r.target, r.verdict) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {r.number}. {r.notes}" for r in rows if r.notes]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def markdown(rows: Sequence[Row]) -> str:
    """
    The same table in Markdown, with each row's command below it.
    """
    lines = [
        "| # | figure | value | baseline (same run) | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.number} | {r.figure} | {r.value} | {r.baseline} | {_ratio(r)} | {r.target} | {r.verdict} |")
    lines.append("")
    for r in rows:
        lines.append(f"{r.number}. `{r.command}`" + (f": {r.notes}" if r.notes else ""))
    return "\n".join(lines)
