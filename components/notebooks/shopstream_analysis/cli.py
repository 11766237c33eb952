"""`python -m shopstream_analysis` (`invoke analyze`): execute both notebooks against the stack
the settings point at, and write their reports (`report.run_notebooks`).

Exit code 0 when both ran; 1 when the lake has no purchases yet or a notebook failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from shopstream.settings import REPO_ROOT, Settings

console = Console(highlight=False)
app = typer.Typer(add_completion=False, help=__doc__)


def say(msg: str) -> None:
    console.print(f"[bold]shopstream:[/bold] {msg}", soft_wrap=True)  # a path stays whole


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@app.command()
def analyze(
    as_of: str | None = typer.Option(None, "--as-of", help="the analysis' now, ISO 8601 with offset (default: now)"),
    out: Path = typer.Option(REPO_ROOT / "reports" / "analysis", "--out", help="where the reports go"),
) -> None:
    """Run both analysis notebooks headless; HTML and JSON reports in --out."""
    from .lake import NoDataYet
    from .report import AnalysisFailed, run_notebooks

    try:
        paths = run_notebooks(Settings(), out, as_of=as_of, say=say)
    except (NoDataYet, AnalysisFailed) as e:
        say(str(e))
        raise typer.Exit(1) from None
    say("reports: " + ", ".join(_short(p) for p in paths))


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="shopstream-analysis")


if __name__ == "__main__":
    main()
