"""The local server's cost ledger: ingest rate and month-report time, SQLite and PostgreSQL.

    python -m bench.ledger [--events 400000] [--steps 2] [--repeats 3] [--postgres-url URL]

For each storage it fills a fresh ledger through the server's own ``/track``
logic (``answer_batch``: validation, costing, store) in batches of 500, in
``--steps`` equal steps; the ingest rate of a step times ``answer_batch`` only
(the step's records are made before its clock starts: making them is the
client's work, ~5 µs a record; and they are frozen out of the garbage
collector's sight while the clock runs: a server does not keep them). Each
storage is filled twice over, with the records' timestamps spread at random
over 90 days (the worst case for the rollups) and in time order (a live
pipeline), see ``ORDERS``. ``--repeats`` fills that many fresh ledgers and
reports, per step, the median rate and the range. After each step of the
first fill it times (median of 20):

- the month report as ``GET /api/v1/costs?group_by=model`` computes it, from
  the daily rollups (``store.rollups`` + ``cost_report``);
- the same figures by scanning the events table (``SUM ... GROUP BY`` over a
  month of timestamps), which is what the rollups save.

No Redis and no HTTP: this measures the ledger, not the pipeline. PostgreSQL
runs in a scratch database (random name, dropped at the end) when one answers
at ``--postgres-url`` (a role that may create databases). Writes
``bench/results/ledger.md``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import genai_prices

from aicm_tasks.server.catalog import ServiceCatalog
from aicm_tasks.server.pricing import PriceBook
from aicm_tasks.server.reports import cost_report
from aicm_tasks.server.store import EventStore, open_store
from aicm_tasks.server.track import answer_batch

RESULTS = Path(__file__).parent / "results" / "ledger.md"
MODELS = (
    "openai::gpt-4o-mini",
    "openai::gpt-4o",
    "openai::o3-mini",
    "anthropic::claude-3-5-haiku-20241022",
    "anthropic::claude-sonnet-4-5",
    "google::gemini-2.5-flash",
    "google::gemini-2.5-pro",
    "mistral::mistral-large-latest",
)
CUSTOMERS = 40
#: Records are spread over these days; the report covers the last 30 of them.
DAYS = 90
FIRST_DAY = date(2025, 1, 1)
BATCH = 500


#: How the records' timestamps fall: ``spread`` at random over the days (a
#: backfill, the worst case for rollups: nearly every record of a batch its own
#: rollup row, anywhere in the table), ``in time order`` (a live pipeline: a
#: batch is an hour or two of traffic, its rollup rows those of one day).
ORDERS = ("spread", "in time order")


def records(
    count: int, rng: random.Random, *, order: str = "spread", first: int = 0, total: int = 0
) -> Iterator[list[dict[str, Any]]]:
    """``count`` records in batches; in time order, records ``first`` on of ``total``."""
    start = datetime(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day, tzinfo=timezone.utc)
    base = start.timestamp()
    span_s = DAYS * 86400

    def timestamp(index: int) -> float:
        if order == "spread":
            return base + rng.random() * span_s
        return base + (first + index + rng.random()) / (total or count) * span_s

    for offset in range(0, count, BATCH):
        yield [
            {
                "service_key": rng.choice(MODELS),
                "response_id": uuid.uuid4().hex,
                "timestamp": f"{timestamp(offset + i):.3f}",
                "payload": {
                    "input_tokens": rng.randint(100, 20_000),
                    "output_tokens": rng.randint(10, 2_000),
                    "cached_input_tokens": 0,
                },
                "customer_key": f"customer-{rng.randrange(CUSTOMERS)}",
                "context": {"route": "/chat"},
            }
            for i in range(min(BATCH, count - offset))
        ]


def median_ms(func: Callable[[], object], repeat: int = 20) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(
    store: EventStore, total: int, steps: int, *, reads: bool = True, order: str = "spread"
) -> list[dict[str, Any]]:
    catalog, prices, rng = ServiceCatalog(), PriceBook(), random.Random(1)
    month_end = date.fromordinal(FIRST_DAY.toordinal() + DAYS - 1)
    month_start = date.fromordinal(month_end.toordinal() - 29)
    lo = datetime(month_start.year, month_start.month, month_start.day, tzinfo=timezone.utc)
    scan_sql = (
        "SELECT service_key, COUNT(*), SUM(input_tokens + output_tokens), SUM(cost_nano_usd)"
        " FROM events WHERE timestamp >= ? AND timestamp < ? GROUP BY service_key"
    )
    scan_params = (lo.timestamp(), lo.timestamp() + 30 * 86400)
    rows: list[dict[str, Any]] = []
    stored = 0
    per_step = total // steps
    for _ in range(steps):
        batches = list(records(per_step, rng, order=order, first=stored, total=total))
        # The step's records are the client's (in a real pipeline they live in the
        # worker, and a request's records die with it): frozen, so the cyclic
        # collector does not walk 600,000 of the bench's dicts on every full
        # collection, ~1 µs of a record's time it would not cost a server.
        gc.freeze()
        started, cpu_started = time.perf_counter(), time.process_time()
        for batch in batches:
            answer_batch(batch, catalog=catalog, prices=prices, store=store)
        ingest_s = time.perf_counter() - started
        # This process's CPU a record: on a machine shared with other work it says
        # what the ledger costs better than the rate (PostgreSQL's own is not in it).
        cpu_us = (time.process_time() - cpu_started) / per_step * 1e6
        gc.unfreeze()
        del batches
        stored += per_step
        if not reads:
            rows.append({"events": stored, "ingest_per_s": per_step / ingest_s, "cpu_us": cpu_us})
            print(f"  {rows[-1]}", flush=True)
            continue

        def report() -> dict[str, Any]:
            rollups = store.rollups(
                month_start.isoformat(), month_end.isoformat(), group_by=("service_key",)
            )
            return cost_report(rollups, start=month_start, end=month_end, group_by="model")

        rollup_rows = len(store.rollups(month_start.isoformat(), month_end.isoformat()))
        rows.append(
            {
                "events": stored,
                "ingest_per_s": per_step / ingest_s,
                "cpu_us": cpu_us,
                "report_ms": median_ms(report),
                "rollup_rows": rollup_rows,
                "scan_ms": median_ms(lambda: store._fetch(scan_sql, scan_params), repeat=5),
            }
        )
        print(f"  {rows[-1]}", flush=True)
    return rows


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str | None]:
    try:
        import psycopg

        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except Exception as exc:
        print(f"PostgreSQL skipped: {exc}")
        yield None
        return
    name = f"aicm_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the table")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    for repeat in range(args.repeats):
        for order in ORDERS:
            # The reads once, on the first fill of the spread records.
            reads = not repeat and order == "spread"
            with tempfile.TemporaryDirectory() as tmp:
                print(f"SQLite, {order}, fill {repeat + 1}")
                with open_store(f"{tmp}/ledger.sqlite3") as store:
                    runs.setdefault(f"SQLite|{order}", []).append(
                        measure(store, args.events, args.steps, reads=reads, order=order)
                    )
            with scratch_postgres(args.postgres_url) as url:
                if url is not None:
                    print(f"PostgreSQL, {order}, fill {repeat + 1}")
                    with open_store(url) as store:
                        runs.setdefault(f"PostgreSQL|{order}", []).append(
                            measure(store, args.events, args.steps, reads=reads, order=order)
                        )
    for storage in ("SQLite", "PostgreSQL"):
        for order in ORDERS:
            fills = runs.get(f"{storage}|{order}")
            if fills:
                results[f"{storage}|{order}"] = [
                    combine([fill[i] for fill in fills]) for i in range(args.steps)
                ]
    write(results, args)


def combine(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One step over the fills: the first fill's reads, the median ingest rate and its range."""
    rates = [step["ingest_per_s"] for step in steps]
    return {
        **steps[0],
        "ingest_per_s": statistics.median(rates),
        "ingest_min": min(rates),
        "ingest_max": max(rates),
        "cpu_us": statistics.median(step["cpu_us"] for step in steps),
    }


def write(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    lines = [
        "# Ledger: ingest and month report",
        "",
        f"`python -m bench.ledger --events {args.events} --steps {args.steps} "
        f"--repeats {args.repeats}`, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"genai-prices {genai_prices.__version__}, {platform.machine()} with "
        f"{__import__('os').cpu_count()} cores (shared).",
        "",
        f"Records over {DAYS} days ({' or '.join(ORDERS)}: `ORDERS`), {len(MODELS)} models, "
        f"{CUSTOMERS} customers, batches of "
        f"{BATCH} through `answer_batch` (validation, costing, one transaction), records made "
        f"before the clock starts. Ingest: median of {args.repeats} fresh fills (range in "
        "brackets); CPU a record: the median of this process's CPU time over the fills "
        "(PostgreSQL's own not included). The report is the last 30 days grouped by model; the "
        "scan is the same sums straight off `events`.",
        "",
        "| storage | records | events stored | ingest (records/s) | CPU a record (µs) | daily "
        "rollup rows in the month | month report from rollups (ms) | same from an events scan "
        "(ms) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, rows in results.items():
        storage, order = key.split("|")
        for row in rows:
            reads = (
                f"{row['rollup_rows']:,} | {row['report_ms']:.1f} | {row['scan_ms']:.1f}"
                if "report_ms" in row
                else "| |"
            )
            lines.append(
                f"| {storage} | {order} | {row['events']:,} | {row['ingest_per_s']:,.0f} "
                f"({row['ingest_min']:,.0f}-{row['ingest_max']:,.0f}) | {row['cpu_us']:.1f} "
                f"| {reads} |"
            )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
