"""`invoke bench`: run each benchmark on an isolated embedded stack and write the reports.

Each module brings the servers it needs (`SERVERS`); its stack lives only while it runs,
so one benchmark's data and load never reach the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from shopstream.settings import Settings

from . import aggregation, analysis, api, dashboard, dashboard_polling, drain, footprint, streaming
from .harness import Figure, isolated_stack, write_report

console = Console()


def _aggregation(settings: Settings, quick: bool) -> list[Figure]:
    histories = (10_000, 100_000) if quick else (10_000, 1_000_000)
    return aggregation.run(settings, histories=histories, repeats=2 if quick else 3)


# (title, servers, run(settings, quick))
Benchmark = tuple[str, list[str], Callable[[Settings, bool], list[Figure]]]
BENCHMARKS: list[Benchmark] = [
    ("API: PUT /SendEvent and POST /PurchasedItems under wrk", api.SERVERS, api.run),
    ("batch: drain UserEvents into MongoDB", drain.SERVERS, drain.run),
    ("batch: aggregation on a small and a large history", ["mongo"], _aggregation),
    ("streaming: throughput and freshness", streaming.SERVERS, streaming.run),
    ("analysis: notebook 1's computations", analysis.SERVERS, analysis.run),
    (
        "dashboard: data calls, memory and restart on 1M purchases and 1M, then 10M events",
        dashboard.SERVERS,
        dashboard.run,
    ),
    ("dashboard: what its polling costs MongoDB", dashboard_polling.SERVERS, dashboard_polling.run),
    ("footprint: CPU and RSS of the running stack, and its catch-up rate", footprint.SERVERS, footprint.run),
]


class NoSuchBenchmark(ValueError):
    pass


def selected(only: list[str] | None) -> list[Benchmark]:
    """The benchmarks whose title has one of the words in `only`, in any case (every one
    without `only`); a word no title has is an error, not an empty report."""
    if not only:
        return BENCHMARKS
    words = {w: [b for b in BENCHMARKS if w.lower() in b[0].lower()] for w in only}
    if unknown := [w for w, hits in words.items() if not hits]:
        raise NoSuchBenchmark(
            f"no benchmark's title has {', '.join(map(repr, unknown))}; the titles: "
            + "; ".join(title for title, _, _ in BENCHMARKS)
        )
    return [b for b in BENCHMARKS if any(b in hits for hits in words.values())]


def main(out_dir: Path, quick: bool = False, only: list[str] | None = None, footprint_s: float | None = None) -> Path:
    """`footprint_s`: the footprint's window (default 5 minutes, 2 with `quick`)."""
    chosen = selected(only)
    if footprint_s:
        footprint.WINDOW_S = footprint.QUICK_WINDOW_S = footprint_s
    figures: list[Figure] = []
    for title, servers, run in chosen:
        console.rule(f"[bold]{title}[/bold]")
        t0 = time.monotonic()
        with isolated_stack(servers) as settings:
            figures += run(settings, quick)
        console.print(f"{title}: {time.monotonic() - t0:.0f} s")
        write_report(figures, out_dir, quick=quick)  # so far: a later failure keeps these figures
    json_path, md_path = write_report(figures, out_dir, quick=quick)
    console.print(md_path.read_text())
    console.print(f"reports: {json_path}, {md_path}")
    return md_path
