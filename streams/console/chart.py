"""The solvency page's ratio chart, laid out here and drawn as inline SVG by the template
(`solvency.html`): no script, so it is there as soon as the page is, and every value that came
from an event reaches the page through the template's escaping.

Geometry: one point per period (by its end, oldest left), y the liability : distributable ratio
from 0 at the bottom to `y_max` at the top of the plot, and the policy's warning and critical
lines across it. A period with liability and nothing distributable has no ratio: its point sits
in the band above the plot, off the scale, as does a ratio past `y_max` (the scale stops at a
few times the critical line so the lines stay readable after a collapse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rebate_guard.contract.records import SolvencyReading

WIDTH = 820
HEIGHT = 300
#: Room left of the plot for the ratio ticks, right of it for the lines' labels, above it
#: for the off-scale band, below it for the time labels.
LEFT, RIGHT, TOP, BOTTOM = 48, 110, 28, 30
#: The scale reaches at least this far past the highest line, and stops at this many times it.
HEADROOM = 1.25
SCALE_STOP = 3.0
#: Ticks on the ratio axis, at most.
MAX_TICKS = 6


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    reading: SolvencyReading
    #: Drawn in the band above the plot: no ratio with something owed, or past `y_max`.
    off_scale: bool
    #: The open period's figures so far (the last point, drawn apart from the closed ones).
    running: bool = False


@dataclass(frozen=True)
class PolicyLine:
    name: str  # "warning" or "critical"
    ratio: float
    y: float


@dataclass(frozen=True)
class Tick:
    value: float
    y: float


@dataclass(frozen=True)
class RatioChart:
    points: list[ChartPoint]
    lines: list[PolicyLine]
    ticks: list[Tick]
    y_max: float
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    right_edge: int = WIDTH - RIGHT
    bottom_edge: int = HEIGHT - BOTTOM
    #: Where off-scale points sit: the middle of the band above the plot.
    off_scale_y: float = TOP / 2

    @property
    def path(self) -> str:
        """The polyline through the closed periods' points, oldest first."""
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points if not p.running)

    @property
    def running_segment(self) -> tuple[ChartPoint, ChartPoint] | None:
        """From the last closed period to the open one, when both are drawn."""
        if len(self.points) < 2 or not self.points[-1].running:
            return None
        return self.points[-2], self.points[-1]


def by_period(readings: Sequence[SolvencyReading]) -> list[SolvencyReading]:
    """One reading per period (the last stored, should a period be written twice), oldest
    first."""
    last = {r.period_start: r for r in readings}
    return sorted(last.values(), key=lambda r: (r.period_end, r.period_start))


def scale_top(highest_ratio: float, highest_line: float) -> float:
    """The top of the ratio axis: past the highest line and the highest ratio up to
    `SCALE_STOP` times the line, rounded up to a whole tick."""
    wanted = min(max(highest_line * HEADROOM, highest_ratio), highest_line * SCALE_STOP)
    step = tick_step(wanted)
    return math.ceil(wanted / step) * step


def tick_step(top: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that needs at most `MAX_TICKS` steps."""
    if not top > 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(top / MAX_TICKS))
    return next(m * power for m in (1, 2, 5, 10) if top / (m * power) <= MAX_TICKS)


def ratio_chart(
    readings: Sequence[SolvencyReading],
    *,
    warning: float,
    critical: float,
    running: SolvencyReading | None = None,
) -> RatioChart:
    """The chart of `readings` (one scope's closed periods) with the policy's lines, and the
    `running` figures of the open period after them, if they are of a later period."""
    ordered = by_period(readings)
    if running is not None and (not ordered or running.period_start > ordered[-1].period_start):
        ordered.append(running)
    else:
        running = None
    finite = [r.ratio for r in ordered if r.ratio is not None]
    y_max = scale_top(max(finite, default=0.0), max(warning, critical))
    plot_height = HEIGHT - BOTTOM - TOP
    plot_width = WIDTH - RIGHT - LEFT

    def y_of(ratio: float) -> float:
        return TOP + (1 - ratio / y_max) * plot_height

    first = ordered[0].period_end if ordered else 0
    span = (ordered[-1].period_end - first) if ordered else 0
    points = []
    for r in ordered:
        x = LEFT + (plot_width * (r.period_end - first) / span if span else plot_width / 2)
        # Nothing distributable and nothing owed is a ratio of nothing: drawn at 0, as is a
        # book that owes less than nothing (clawed back more than it granted).
        ratio = r.ratio if r.ratio is not None or r.liability_cents > 0 else 0.0
        off = ratio is None or ratio > y_max
        y = TOP / 2 if ratio is None or off else y_of(max(ratio, 0.0))
        points.append(ChartPoint(x, y, r, off, running=r is running))
    lines = [PolicyLine(name, ratio, y_of(ratio)) for name, ratio in
             (("warning", warning), ("critical", critical))]  # fmt: skip
    step = tick_step(y_max)
    ticks = [Tick(i * step, y_of(i * step)) for i in range(round(y_max / step) + 1)]
    return RatioChart(points, lines, ticks, y_max)
