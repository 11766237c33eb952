"""Collect every store's snapshot, reconcile, and print the audit."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import urllib3
from kafka.errors import KafkaError
from minio.error import S3Error
from pymongo.errors import PyMongoError
from rich.console import Console, JustifyMethod
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shopstream.locations import PURCHASES, checkpoint_url
from shopstream.settings import Settings

from . import sources
from .reconcile import (
    SAMPLES,
    AnyOf,
    Audit,
    Copies,
    Stage,
    count_stage,
    doubled_stage,
    kafka_stage,
    store_stage,
    within_end,
)

LAST_REWINDS = 5
STORE_ERRORS = (PyMongoError, S3Error, urllib3.exceptions.HTTPError, pa.ArrowException, OSError)


@dataclass
class Report:
    audit: Audit
    ledger: sources.Ledger
    api: sources.ApiMetrics
    rewinds: list = field(default_factory=list)  # shopstream.rewinds.Rewind
    rewinds_error: str | None = None
    gone_files: list[str] = field(default_factory=list)
    samples: int = SAMPLES

    @property
    def exit_code(self) -> int:
        return self.audit.exit_code


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _offsets(committed: dict[int, int], end: dict[int, int]) -> str:
    return f"{sum(committed.values()):,} of {sum(end.values()):,}"


def _error(e: Exception) -> str:
    text = str(e).strip()
    return text if text.startswith(type(e).__name__) else f"{type(e).__name__}: {text}" if text else type(e).__name__


def _why(e: Exception) -> str:
    return f"could not read: {_error(e)}"


def _past_end(topic: str, partitions: list[int]) -> list[str]:
    if not partitions:
        return []
    return [
        f"committed past the end of {', '.join(f'{topic}-{p}' for p in partitions)} (the broker lost "
        "records; the stage reads them again): nothing there is due yet"
    ]


def _kafka_failed(settings: Settings, e: Exception) -> sources.AuditError:
    return sources.AuditError(f"Kafka at {settings.kafka.bootstrap_servers}: {_error(e)}")


def _mongo_stages(
    settings: Settings,
    led: sources.Ledger,
    copies: Copies,
    drained: dict[int, int],
    end: dict[int, int],
    progress: Progress,
    samples: int,
) -> list[Stage]:
    """MongoDB's events (or dead letters) up to the batch group's committed offsets, and the counts."""
    topic = settings.kafka.user_events_topic
    name, where = "MongoDB events", f"group {settings.batch.consumer_group}: {_offsets(drained, end)}"
    task = progress.add_task("MongoDB", total=None)
    try:
        snap = sources.read_mongo(
            settings,
            led.acked[topic],
            lambda n: progress.advance(task, n),
            lambda total: progress.update(task, total=total),
        )
    except STORE_ERRORS as e:
        return [
            Stage(name, where, len(led.acked[topic]), None, unchecked=_why(e)),
            Stage("EventCount", acknowledged=None, expected=None, unchecked=_why(e)),
        ]
    due, past = within_end(drained, end)
    stage = store_stage(
        name, led.acked[topic], copies, due, AnyOf(snap.in_events, snap.in_dead_letters), where, samples=samples
    )
    stage.notes += _past_end(topic, past)
    only_dead = len(snap.in_dead_letters - snap.in_events)
    if only_dead:
        stage.notes.append(f"{only_dead:,} of them in the dead letters")
    stage.notes.append(f"{snap.events:,} events and {snap.dead_letters:,} dead letters stored")
    return [
        stage,
        count_stage(
            snap.counts, snap.applied_batches, snap.stored, f"applied batches: {len(snap.applied_batches):,}", samples
        ),
    ]


def _lake_stage(
    settings: Settings,
    led: sources.Ledger,
    copies: Copies,
    streamed: sources.Checkpoint,
    quarantined: sources.Checkpoint,
    end: dict[int, int],
    progress: Progress,
    samples: int,
) -> tuple[Stage, list[str]]:
    """The lake (or quarantine) up to the streaming job's committed offsets; and the
    committed files that are gone."""
    topic, name = settings.kafka.purchases_topic, "Lake (Parquet)"
    problem = streamed.problem or quarantined.problem
    committed = (
        None
        if problem
        else {
            p: min(streamed.offsets.get(p, 0), quarantined.offsets.get(p, 0))
            for p in set(streamed.offsets) | set(quarantined.offsets)
        }
    )
    if committed is None:
        where = "unknown"
    elif streamed.batch is None:
        where = "no batch committed yet"
    else:
        where = f"batch {streamed.batch} (quarantine {quarantined.batch}): {_offsets(committed, end)}"
    try:
        files, quarantine = sources.lake_files(settings)
        task = progress.add_task("lake files", total=len(files) + len(quarantine))
        lake = sources.read_lake(settings, led.acked[topic], files, quarantine, lambda n: progress.advance(task, n))
    except STORE_ERRORS as e:
        return Stage(name, where, len(led.acked[topic]), None, unchecked=_why(e)), []
    due, past = within_end(committed, end) if committed is not None else (None, [])
    stage = store_stage(
        name,
        led.acked[topic],
        copies,
        due,
        AnyOf(lake.in_lake, lake.in_quarantine),
        where,
        unchecked=problem,
        samples=samples,
    )
    doubled_stage(stage, lake.doubled, samples)
    stage.notes += _past_end(topic, past)
    only_quarantined = len(lake.in_quarantine - lake.in_lake)
    if only_quarantined:
        stage.notes.append(f"{only_quarantined:,} of them in quarantine")
    stage.notes.append(f"{lake.rows:,} rows in {lake.files:,} committed files; {lake.quarantine_rows:,} in quarantine")
    if lake.gone:
        stage.notes.append(f"committed files gone from S3: {len(lake.gone):,}")
    return stage, lake.gone


def collect(settings: Settings, console: Console | None = None, samples: int = SAMPLES) -> Report:
    """Snapshot every stage and reconcile it with the ledger. The order keeps the snapshots
    consistent while the pipeline runs: the ledger (each record in it is in Kafka by then),
    the stages' committed positions, Kafka's end offsets and records, then the stores (a
    stage writes before it commits, so what lies below a position read earlier is there)."""
    console = console or Console(stderr=True)
    user_events, purchases = settings.kafka.user_events_topic, settings.kafka.purchases_topic
    led = sources.read_ledger(settings)
    try:
        drained = sources.group_committed(settings, user_events)
    except KafkaError as e:
        raise _kafka_failed(settings, e) from e
    # the streaming job writes the lake and the quarantine from one query, one checkpoint
    streamed = quarantined = sources.read_checkpoint(checkpoint_url(settings, PURCHASES), purchases)
    with _progress(console) as progress:
        try:
            bounds = sources.topic_bounds(settings)
            task = progress.add_task(
                "Kafka",
                total=sum(
                    e - bounds.beginning[t].get(p, 0) for t, parts in bounds.end.items() for p, e in parts.items()
                ),
            )
            copies = sources.scan_topics(settings, led.acked, bounds, lambda n: progress.advance(task, n))
        except KafkaError as e:
            raise _kafka_failed(settings, e) from e
        stages = [
            kafka_stage(t, led.acked[t], copies[t], bounds.beginning[t], bounds.end[t], samples)
            for t in settings.kafka.topics
        ]
        stages += _mongo_stages(settings, led, copies[user_events], drained, bounds.end[user_events], progress, samples)
        lake, gone = _lake_stage(
            settings, led, copies[purchases], streamed, quarantined, bounds.end[purchases], progress, samples
        )
        stages.append(lake)

    report = Report(Audit(stages), led, sources.api_metrics(settings), gone_files=gone, samples=samples)
    try:
        from shopstream.rewinds import rewinds

        report.rewinds = list(rewinds(settings))
    except Exception as e:  # noqa: BLE001 - the audit still stands without them; say why they are not shown
        report.rewinds_error = _error(e)
    return report


def summary(report: Report) -> dict:
    """The table as data: what `--json` writes (for `invoke chaos`, say)."""
    fields = ("name", "acknowledged", "expected", "found", "missing", "doubled", "pending", "unchecked")
    return {
        "exit_code": report.exit_code,
        "acknowledged": {t: len(ids) for t, ids in report.ledger.acked.items()},
        "missing": report.audit.missing,
        "doubled": report.audit.doubled,
        "stages": [{f: getattr(s, f) for f in fields} for s in report.audit.stages],
    }


# -- printing -----------------------------------------------------------------------------------
def _n(value: int | None, bad: bool = False) -> str:
    if value is None:
        return "—"
    return f"[bold red]{value:,}[/]" if bad and value else f"{value:,}"


def _ledger_line(report: Report, settings: Settings) -> str:
    led = report.ledger
    if not led.lines:
        return (
            f"[yellow]The ledger is empty[/] ({led.folder}): no acknowledged record to check. The API "
            "writes it while its journal is on (SHOPSTREAM_API__JOURNAL)."
        )
    since = led.oldest_hour.strftime("%Y-%m-%d %H:00 UTC") if led.oldest_hour else "?"
    per_topic = ", ".join(f"{t} {len(ids):,}" for t, ids in led.acked.items())
    line = (
        f"Ledger: {led.lines:,} lines since {since} (retention {settings.api.ledger_retention_hours:g} h): "
        f"acknowledged records {per_topic}"
    )
    again = sum(led.again.values())
    if again:
        line += f"; {again:,} acknowledged more than once (client retries, published again after a broker loss)"
    if led.other_topics:
        line += "; ignored lines of other topics: " + ", ".join(f"{t} {n:,}" for t, n in led.other_topics.items())
    return line


def table(audit: Audit) -> Table:
    t = Table(title="Every acknowledged record, stage by stage", title_justify="left")
    columns: list[tuple[str, JustifyMethod]] = [
        ("stage", "left"),
        ("committed", "left"),
        ("acknowledged", "right"),
        ("expected", "right"),
        ("found", "right"),
        ("missing", "right"),
        ("doubled", "right"),
        ("pending", "right"),
        ("notes", "left"),
    ]
    for name, justify in columns:
        t.add_column(name, justify=justify, overflow="fold")
    for s in audit.stages:
        expected = "?" if s.expected is None else f"{s.expected:,}"
        notes = "; ".join(s.notes)
        if s.unchecked:
            notes = f"[yellow]not checked: {s.unchecked}[/]" + (f"; {notes}" if notes else "")
        t.add_row(
            s.name,
            s.position,
            _n(s.acknowledged),
            expected,
            _n(s.found),
            _n(s.missing, True),
            _n(s.doubled, True),
            _n(s.pending),
            notes,
        )
    return t


def _rewind_lines(report: Report, console: Console) -> None:
    if report.rewinds_error:
        console.print(f"Rewinds: [yellow]could not be read[/] ({report.rewinds_error})")
        return
    if not report.rewinds:
        console.print("Rewinds: none recorded (no stage had to read records again after a broker loss)")
        return
    per_stage = Counter(r.stage for r in report.rewinds)
    console.print(
        "Rewinds (a stage read records again after the broker lost a tail): "
        + ", ".join(f"{stage} {n:,}" for stage, n in sorted(per_stage.items()))
    )
    t = Table(title=f"the last {min(LAST_REWINDS, len(report.rewinds))}", title_justify="left")
    for name in ["at (UTC)", "stage", "partition", "committed", "resumed from", "end", "reason"]:
        t.add_column(name)
    for r in report.rewinds[-LAST_REWINDS:]:
        t.add_row(
            f"{r.at:%Y-%m-%d %H:%M:%S}",
            r.stage,
            f"{r.topic}-{r.partition}",
            f"{r.committed:,}",
            f"{r.resumed_from:,}",
            f"{r.end:,}",
            r.reason,
        )
    console.print(t)


def _api_lines(report: Report, settings: Settings, console: Console) -> None:
    api = report.api
    if api.error:
        console.print(f"API metrics: the API at {api.url} does not answer ({api.error}); not shown")
        return
    t = Table(title=f"API metrics ({api.url})", title_justify="left")
    t.add_column("counter")
    topics = settings.kafka.topics
    for topic in topics:
        t.add_column(topic, justify="right")
    for metric, label in sources.API_METRICS.items():
        values = api.values.get(metric)
        if values is None:
            t.add_row(f"{label} ({metric})", *["not exported"] * len(topics))
        else:
            t.add_row(f"{label} ({metric})", *[f"{values.get(topic, 0):,.0f}" for topic in topics])
    console.print(t)


def render(report: Report, settings: Settings, console: Console) -> None:
    audit = report.audit
    console.print(_ledger_line(report, settings))
    console.print(table(audit))
    for s in audit.stages:
        if s.missing_sample:
            console.print(
                f"[red]missing[/] at {s.name} ({len(s.missing_sample)} of {s.missing:,}):",
                "; ".join(s.missing_sample),
                soft_wrap=True,
            )
        if s.doubled_sample:
            console.print(
                f"[red]doubled[/] at {s.name} ({len(s.doubled_sample)} of {s.doubled:,}):",
                "; ".join(s.doubled_sample),
                soft_wrap=True,
            )
        if s.unchecked:
            console.print(f"[yellow]not checked[/] at {s.name}: {s.unchecked}")
    for key in report.gone_files[: report.samples]:
        console.print(f"[red]gone[/]: committed lake file {key} is not in the bucket")
    _rewind_lines(report, console)
    _api_lines(report, settings, console)
    if audit.exit_code == 1:
        console.print(f"[bold red]differences[/]: {audit.missing:,} missing, {audit.doubled:,} doubled (exit 1)")
    elif audit.exit_code == 2:
        console.print(
            "[yellow]nothing missing or doubled in what could be checked, but "
            f"{len(audit.unchecked)} stage(s) could not be checked[/] (exit 2)"
        )
    else:
        console.print("[bold green]all good[/]: every acknowledged record is where it is due, once (exit 0)")
