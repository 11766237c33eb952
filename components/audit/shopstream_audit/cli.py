"""`invoke audit` / `python -m shopstream_audit`: reconcile the whole pipeline per EventId.

Takes every record the API acknowledged (the ledger) and finds it in Kafka, MongoDB's
events (or dead letters), the EventCount sums and the lake (or quarantine), each stage
only up to what it has committed. Exit code 0: nothing missing or doubled; 1: something
is missing or doubled; 2: nothing is, but a stage could not be checked (or Kafka could
not be read).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import typer
from rich.console import Console

from shopstream.settings import Settings

from .reconcile import SAMPLES
from .report import collect, render, summary
from .sources import AuditError

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def audit(
    samples: int = typer.Option(SAMPLES, "--samples", min=0, help="missing and doubled EventIds shown per stage"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the table as JSON to this file (for tools)"),
) -> None:
    """Reconcile every acknowledged record with every stage; exit 1 on any difference."""
    settings = Settings()
    # wide enough for the table when the output is not a terminal (CI logs, pipes)
    console = Console(width=max(150, shutil.get_terminal_size((150, 24)).columns))
    try:
        report = collect(settings, console, samples=samples)
    except AuditError as e:
        console.print(f"[red]audit not possible[/]: {e}")
        if json_out:
            json_out.write_text(json.dumps({"exit_code": 2, "error": str(e), "stages": []}))
        raise typer.Exit(2) from None
    render(report, settings, console)
    if json_out:
        json_out.write_text(json.dumps(summary(report), indent=1))
    raise typer.Exit(report.exit_code)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="shopstream-audit")


if __name__ == "__main__":
    main()
