"""The benchmark's output: the table on the terminal, and JSON + Markdown files.

The only module besides ``bench.run`` that prints.
"""

# ruff: noqa: RUF001, RUF003  (en dashes, ×, µ and – are meant)

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from bench.stats import Figure, fmt_number, fmt_spread
from bench.targets import Verdict

#: Distributions whose versions describe a run.
PACKAGES = ("aicm-tasks", "celery", "kombu", "amqp", "redis", "httpx", "aicostmanager",
            "celery-batches", "psutil", "starlette", "uvicorn")  # fmt: skip
COLUMNS = ("figure", "unit", "median (min–max)", "target", "ratio", "✓/✗", "also (medians)")


@dataclass(frozen=True)
class Row:
    """One table row; a figure with several targets spans several rows."""

    cells: tuple[str, str, str, str, str, str, str]


def machine(client: redis.Redis) -> dict[str, Any]:
    """What this run ran on: cores, memory, CPU, and the versions that matter."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "memory_gib": round(_meminfo_kib("MemTotal") / 1024 / 1024, 1),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": client.info("server").get("redis_version"),
        "load_average": os.getloadavg(),
    }
    for package in PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def _meminfo_kib(field: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _also_text(figure: Figure) -> str:
    parts = []
    for name, spread_ in figure.summary()["also"].items():
        parts.append(f"{name} {fmt_number(spread_['median'])}")
    if figure.note:
        parts.append(figure.note)
    if figure.errors:
        parts.append(f"{len(figure.errors)} failed run(s)")
    return "; ".join(parts)


def rows(figures: list[Figure], verdicts: list[Verdict]) -> list[Row]:
    """Table rows: each figure, with its targets beside it."""
    by_figure: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        by_figure.setdefault(verdict.target.figure, []).append(verdict)
    result: list[Row] = []
    for figure in figures:
        mine = by_figure.get(figure.key) or [None]  # type: ignore[list-item]
        for index, verdict in enumerate(mine):
            head = (
                (figure.label, figure.unit, fmt_spread(figure.values))
                if index == 0
                else ("", "", "")
            )
            target = (
                (verdict.target.text, verdict.ratio_text, verdict.mark) if verdict else ("", "", "")
            )
            also = _also_text(figure) if index == 0 else ""
            result.append(Row((*head, *target, also)))
    return result


def print_table(table_rows: list[Row], title: str) -> None:
    """The table on the terminal (rich)."""
    table = Table(title=title, show_lines=False)
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in table_rows:
        table.add_row(*row.cells)
    Console(width=max(160, Console().width)).print(table)


def markdown(table_rows: list[Row], info: dict[str, Any], meta: dict[str, Any],
             figures: list[Figure]) -> str:  # fmt: skip
    """``latest.md``: the table and the machine it ran on."""
    lines = [f"# aicm-tasks benchmark, {meta['started']}", ""]
    if meta.get("quick"):
        lines += ["**Quick smoke run (`--quick`): one run each, small counts. Not figures.**", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table_rows:
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in row.cells) + " |")
    errors = [(f.label, e) for f in figures for e in f.errors]
    if errors:
        lines += ["", "## Failed runs", ""] + [f"- {label}: {error}" for label, error in errors]
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += ["", f"Scenarios: {', '.join(meta['scenarios'])}; runs per figure: {meta['runs']}; "
              f"wall time {meta['seconds']:.0f} s.", ""]  # fmt: skip
    if meta.get("command"):
        lines += [f"Command: `{meta['command']}`", ""]
    if meta.get("load_average_end"):
        load = ", ".join(f"{value:.2f}" for value in meta["load_average_end"])
        lines += [f"Load average at the end: {load} (at the start: under Machine).", ""]
    return "\n".join(lines)


def write(results_dir: Path, payload: dict[str, Any], md: str, quick: bool) -> list[Path]:
    """Write ``<UTC timestamp>.json`` and ``latest.{json,md}`` (``-quick`` for smoke runs)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(payload, indent=2, default=str)
    paths = [
        results_dir / f"{stamp}{suffix}.json",
        results_dir / f"latest{suffix}.json",
        results_dir / f"latest{suffix}.md",
    ]
    paths[0].write_text(text)
    paths[1].write_text(text)
    paths[2].write_text(md)
    return paths


def say(message: str) -> None:
    """A line for the person running the benchmark (stderr keeps stdout for the table)."""
    print(message, file=sys.stderr)
