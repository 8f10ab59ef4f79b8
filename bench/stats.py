"""Small statistics: percentiles of samples, and median (min–max) over runs."""

# ruff: noqa: RUF001, RUF002, RUF003  (en dashes, ×, µ and – are meant)

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    index = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values))))
    return float(sorted_values[index])


@dataclass
class Figure:
    """One measured figure: a value per run, and what else each run saw.

    ``key`` names it for targets and JSON (``drain.aicm.steady``); ``label``
    and ``unit`` are for the table; ``also`` holds per-run extras (same
    keys each run) summarised next to the figure; ``note`` says anything a
    reader must know (a smaller count, a failed run).
    """

    key: str
    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    also: list[dict[str, float]] = field(default_factory=list)
    note: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        """Median over runs, or None when no run produced a value."""
        return statistics.median(self.values) if self.values else None

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: median, min, max, runs and the extras' medians."""
        extras: dict[str, dict[str, float]] = {}
        for name in sorted({k for run in self.also for k in run}):
            column = [run[name] for run in self.also if name in run]
            extras[name] = spread(column)
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "runs": list(self.values),
            **(spread(self.values) if self.values else {}),
            "also": extras,
            "also_runs": list(self.also),
            "note": self.note,
            "errors": list(self.errors),
        }


def spread(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of a non-empty sequence."""
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def fmt_number(value: float | None) -> str:
    """A figure for a table: thousands separators, few decimals."""
    if value is None:
        return "n/a"
    if float(value).is_integer():
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_spread(values: Sequence[float]) -> str:
    """``median (min–max)``, or just the value for a single run."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt_number(values[0])
    s = spread(values)
    return f"{fmt_number(s['median'])} ({fmt_number(s['min'])}–{fmt_number(s['max'])})"
