"""The list page's outcome chart as numbers: stacked AA/AE/AR bars per day.

Only geometry and labels are computed here; `templates/chart.svg` draws them, autoescaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["OUTCOMES", "Bar", "Chart", "Slice", "outcome_chart"]

OUTCOMES = ("AA", "AE", "AR")  # bottom to top
COLOURS = {"AA": "#2e7d32", "AE": "#ef8f00", "AR": "#c62828"}
BAR, GAP, HEIGHT, TOP = 28, 10, 120, 14  # px: bar width, gap, plot height, room above for the totals


@dataclass(frozen=True)
class Slice:
    outcome: str
    count: int
    y: int
    height: int
    colour: str


@dataclass(frozen=True)
class Bar:
    date: str  # YYYY-MM-DD (the slices' tooltips)
    label: str  # MM-DD under the bar
    total: int
    x: int
    centre: float
    top: int  # y of the bar's top: the total is written above it
    slices: list[Slice]


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bar_width: int
    base: int  # y of the bars' bottom
    bars: list[Bar]
    legend: list[tuple[str, str, int]]  # (outcome, colour, x)


def _bar(i: int, day: dict[str, Any], peak: int) -> Bar:
    x = GAP + i * (BAR + GAP)
    y = TOP + HEIGHT
    slices = []
    for outcome in OUTCOMES:
        n = int(day["outcomes"].get(outcome, 0))
        if not n:
            continue
        h = max(1, round(HEIGHT * n / peak))  # a single message stays visible beside a busy day
        y -= h
        slices.append(Slice(outcome, n, y, h, COLOURS[outcome]))
    date = str(day["date"])
    return Bar(date=date, label=date[5:], total=int(day["messages"]), x=x, centre=x + BAR / 2, top=y, slices=slices)


def outcome_chart(days: list[dict[str, Any]]) -> Chart | None:
    """The chart of `days` (the /audit/stats days, oldest first); None when there is nothing to draw."""
    if not days:
        return None
    peak = max(int(d["messages"]) for d in days) or 1
    width = max(len(days) * (BAR + GAP) + GAP + 40, 160)  # room for the legend
    legend = [(o, COLOURS[o], GAP + k * 44) for k, o in enumerate(OUTCOMES)]
    return Chart(width=width, height=HEIGHT + TOP + 36, bar_width=BAR, base=TOP + HEIGHT,
                 bars=[_bar(i, d, peak) for i, d in enumerate(days)], legend=legend)
