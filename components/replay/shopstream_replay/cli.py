"""`invoke replay` / `python -m shopstream_replay`: historical records through the API, each stored once.

Sources: `file PATH...` (CSV, JSON Lines, Parquet of events or purchases), `lake` (Parquet
purchases of another lake location, or the lake itself for a dry run against today's
contract), `dead-letters` (MongoDB's) and `quarantine` (the lake's). Exit code 0 when every
record was sent, found stored already, or rejected with its reason; 1 when the API refused
(a key, or an answer replay cannot go on from) or could not be reached; 2 for a usage error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from pathlib import Path

import httpx
import typer
import urllib3
from minio.error import MinioException
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from shopstream.settings import Settings

from .files import Item, Table, open_file
from .mapping import Kind, detect_kind
from .run import Marker, Summary, replay
from .sender import Refused, Sender
from .stores import DeadLetters, Destination, EventsDestination, LakeDestination, Quarantine, lake_tables

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)

DRY_RUN = typer.Option(
    False, "--dry-run", help="check every record and list what would be rejected and why; send nothing"
)
RATE = typer.Option(
    None, "--rate", min=0.001, help="records per second at most (default: as fast as the API takes them)"
)
JSON = typer.Option(False, "--json", help="print the summary as one JSON object on stdout, no progress bar")
MAP = typer.Option(
    [],
    "--map",
    help="Column=Field: the source column that fills a contract field (Field: dotted, e.g. Attributes.Price)",
)
REASON = typer.Option(None, "--reason", help="only the records whose reason contains this text (any case)")


def _explicit(maps: list[str]) -> dict[str, str]:
    out = {}
    for m in maps:
        col, sep, target = m.partition("=")
        if not sep or not col or not target:
            raise typer.BadParameter(f"--map {m!r}: write Column=Field")
        out[col] = target
    return out


def _destination(settings: Settings, kind: Kind) -> Destination:
    return EventsDestination(settings) if kind is Kind.events else LakeDestination(settings)


def _progress(console: Console, quiet: bool) -> Progress | nullcontext:
    if quiet:
        return nullcontext()
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _run(
    source: str,
    dry_run: bool,
    rate: float | None,
    as_json: bool,
    plan: Callable[[Settings, Summary], Iterator[tuple[Kind, Iterator[Item], int | None, Marker | None]]],
) -> None:
    """The common part: settings, sender, progress, summary and exit code. `plan` yields per
    part of the source (a file): its kind, its items, how many (None: unknown) and its marker."""
    settings = Settings()
    console = Console(stderr=as_json)
    summary = Summary(source=source, kind="", dry_run=dry_run)
    kinds: set[str] = set()
    code = 0
    with ExitStack() as stack:
        sender = None if dry_run else Sender(settings, rate)
        if sender is not None:
            stack.callback(sender.close)
        destinations: dict[Kind, Destination] = {}
        progress = stack.enter_context(_progress(console, as_json))
        try:
            for kind, items, total, marker in plan(settings, summary):
                kinds.add(kind.value)
                if kind not in destinations:
                    destinations[kind] = _destination(settings, kind)
                    stack.callback(destinations[kind].close)
                task = progress.add_task(source, total=total) if progress is not None else None

                def advance(n: int, task=task) -> None:
                    if progress is not None and task is not None:
                        progress.advance(task, n)

                replay(items, kind, summary, destinations[kind], sender, marker, advance)
        except (ValueError, FileNotFoundError) as e:
            console.print(f"[red]replay not possible[/]: {e}")
            raise typer.Exit(2) from None
        except (Refused, httpx.HTTPError, PyMongoError, MinioException, urllib3.exceptions.HTTPError) as e:
            console.print(f"[red]replay stopped[/]: {type(e).__name__}: {e}")
            code = 1
    summary.kind = ",".join(sorted(kinds))
    if as_json:
        print(json.dumps(summary.as_dict()))
    else:
        render(summary, console)
    raise typer.Exit(code)


def render(summary: Summary, console: Console) -> None:
    if summary.rejects and summary.dry_run:
        listed = RichTable(title="would be rejected", title_justify="left")
        for column in ("where", "EventId", "reason"):
            listed.add_column(column, overflow="fold")
        for r in summary.rejects:
            listed.add_row(r["where"], r["EventId"], r["reason"])
        console.print(listed)
    table = RichTable(title=f"replay of {summary.source}" + (" (dry run)" if summary.dry_run else ""))
    table.add_column("records")
    table.add_column("count", justify="right")
    rows = [("read", summary.read), ("would send" if summary.dry_run else "sent", summary.would_send or summary.sent)]
    rows += [("already stored", summary.already_stored), ("already replayed", summary.already_replayed)]
    rows += [("repeated in the source", summary.duplicates), ("rejected", sum(summary.rejected.values()))]
    for name, count in rows:
        table.add_row(name, f"{count:,}")
    for reason, count in summary.rejected.most_common(10):
        table.add_row(f"  {reason}", f"{count:,}")
    console.print(table)
    for note in summary.notes:
        console.print(f"[yellow]note[/]: {note}")
    for name, columns in summary.ignored_columns.items():
        if columns:
            console.print(f"{name}: columns mapped to no field, not sent: {', '.join(columns)}")


def _tables(tables: Iterator[Table], kind: Kind | None, maps: dict[str, str], summary: Summary):
    for table in tables:
        chosen = kind or detect_kind(table.columns, maps)
        yield chosen, table.items(chosen, maps), table.total, None
        summary.ignored_columns[table.name] = table.ignored


@app.command("file")
def file_source(
    paths: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="CSV, JSON Lines or Parquet files"),
    kind: Kind | None = typer.Option(None, "--kind", help="events or purchases (default: told by the columns)"),
    maps: list[str] = MAP,
    fmt: str | None = typer.Option(None, "--format", help="csv, jsonl or parquet (default: by the file's suffix)"),
    dry_run: bool = DRY_RUN,
    rate: float | None = RATE,
    as_json: bool = JSON,
) -> None:
    """Replay files of events or purchases; their EventIds: their own, else from the file's hash and the line."""
    explicit = _explicit(maps)

    def plan(settings: Settings, summary: Summary):
        return _tables((open_file(p, fmt) for p in paths), kind, explicit, summary)

    _run(", ".join(map(str, paths)), dry_run, rate, as_json, plan)


def _lake_location(path: str | None, settings: Settings) -> Iterator[Table]:
    if path is None:
        return lake_tables(settings, settings.s3.bucket, settings.streaming.output_path)
    if "://" in path:
        scheme, _, rest = path.partition("://")
        if scheme not in ("s3", "s3a"):
            raise ValueError(f"--path {path}: s3://bucket/prefix or a local folder")
        bucket, _, prefix = rest.partition("/")
        return lake_tables(settings, bucket, prefix)
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--path {path}: no such folder")
    files = sorted(
        f for f in folder.rglob("*.parquet") if not any(p.startswith(("_", ".")) for p in f.relative_to(folder).parts)
    )
    return (open_file(f, "parquet") for f in files)


@app.command("lake")
def lake_source(
    path: str | None = typer.Option(
        None, "--path", help="s3://bucket/prefix (committed files) or a local folder of Parquet (default: the lake)"
    ),
    maps: list[str] = MAP,
    dry_run: bool = DRY_RUN,
    rate: float | None = RATE,
    as_json: bool = JSON,
) -> None:
    """Replay the purchases of a lake: another location's (a backfill), or this one's (with --dry-run:
    which old records today's contract rejects; replayed for real, it holds them all already)."""
    explicit = _explicit(maps)

    def plan(settings: Settings, summary: Summary):
        return _tables(_lake_location(path, settings), Kind.purchases, explicit, summary)

    _run(path or "the lake", dry_run, rate, as_json, plan)


@app.command("dead-letters")
def dead_letters(
    reason: str | None = REASON, dry_run: bool = DRY_RUN, rate: float | None = RATE, as_json: bool = JSON
) -> None:
    """Validate the drain's dead letters again and replay those that pass now (each marked, so once)."""

    def plan(settings: Settings, summary: Summary):
        letters = DeadLetters(settings, reason)
        summary.already_replayed += letters.already_replayed
        try:
            yield Kind.events, letters.items(), letters.total, letters
        finally:
            letters.close()

    _run("dead letters", dry_run, rate, as_json, plan)


@app.command("quarantine")
def quarantine(
    reason: str | None = REASON, dry_run: bool = DRY_RUN, rate: float | None = RATE, as_json: bool = JSON
) -> None:
    """Validate the lake's quarantined records again and replay those that pass now (each marked, so once)."""

    def plan(settings: Settings, summary: Summary):
        held = Quarantine(settings, reason)
        summary.already_replayed += held.already_replayed
        try:
            yield Kind.purchases, held.items(), held.total, held
        finally:
            held.close()

    _run("quarantine", dry_run, rate, as_json, plan)


def main(argv: list[str] | None = None) -> None:
    """Run the command, then leave the process at once with its exit code.

    Once the summary is out, the interpreter's own teardown is skipped: a Parquet read leaves
    Arrow's native thread pool behind, and tearing it down at exit now and then aborts the
    process (SIGABRT, "terminate called without an active exception": apache/arrow#34314)
    after the work is done, turning a finished replay into a failed one."""
    code = 0
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="shopstream-replay")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
