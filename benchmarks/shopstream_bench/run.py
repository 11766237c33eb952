"""`invoke bench`: run the benchmarks on an isolated embedded stack and write the reports."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from . import aggregation
from .harness import isolated_stack, write_report

console = Console()


def main(out_dir: Path, quick: bool = False) -> Path:
    figures = []
    console.print("[bold]aggregation[/bold]: the same new batch on a small and a large history")
    with isolated_stack(["mongo"]) as settings:
        histories = (10_000, 100_000) if quick else (10_000, 1_000_000)
        figures += aggregation.run(settings, histories=histories, repeats=2 if quick else 3)
    json_path, md_path = write_report(figures, out_dir)
    console.print(md_path.read_text())
    console.print(f"reports: {json_path}, {md_path}")
    return md_path
