"""Run the benchmark: ``python -m bench.run [--quick] [--only SCENARIO ...]``.

Starts a private Redis and the stub, runs the scenarios in order against
them, prints the table of figures and targets, and writes
``bench/results/<UTC timestamp>.json``, ``latest.json`` and ``latest.md``
(``-quick`` variants for ``--quick``). It reports; it never fails on a missed
target. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import report
from bench.config import FULL, QUICK
from bench.harness import open_bench
from bench.scenarios import SCENARIOS
from bench.stats import Figure
from bench.targets import evaluate

logger = logging.getLogger("bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one run of each scenario with small counts (a smoke test)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(SCENARIOS),
        metavar="SCENARIO",
        help=f"run only these scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, --quick 1)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the run's temporary directory (child logs)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios and report; returns the exit code (0 unless it could not run)."""
    args = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # httpx logs every request at INFO: the stub client polls many times a second.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    counts = QUICK if args.quick else FULL
    if args.runs:
        counts = dataclasses.replace(counts, runs=args.runs)
    selected = [name for name in SCENARIOS if not args.only or name in args.only]
    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    figures: list[Figure] = []
    with open_bench(keep_dir=args.keep_tmp) as bench:
        info = report.machine(bench.redis)
        for name in selected:
            report.say(f"== {name}")
            try:
                figures += SCENARIOS[name](bench, counts)
            except Exception:  # a broken scenario must not lose the others' figures
                logger.exception("scenario %s failed", name)
    verdicts = evaluate(figures)
    # The machine is shared: the load at the end says whether it was busy throughout.
    load_at_end = os.getloadavg()
    meta = {
        "started": started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "scenarios": selected,
        "runs": counts.runs,
        "seconds": time.monotonic() - started,
        "load_average_end": load_at_end,
        "counts": dataclasses.asdict(counts),
    }
    table_rows = report.rows(figures, verdicts)
    title = f"aicm-tasks benchmark{' (--quick smoke run)' if args.quick else ''}, {meta['started']}"
    report.print_table(table_rows, title)
    payload = {
        "meta": meta,
        "machine": info,
        "figures": [figure.summary() for figure in figures],
        "targets": [
            {"figure": v.target.figure, "target": v.target.text, "ratio": v.ratio, "met": v.met}
            for v in verdicts
        ],
    }
    md = report.markdown(table_rows, info, meta, figures)
    for path in report.write(args.results_dir, payload, md, args.quick):
        report.say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
