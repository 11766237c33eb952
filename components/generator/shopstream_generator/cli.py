"""`shopstream-generate` (and `invoke generate`): send Faker-made shop traffic to the API every second."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from shopstream.contracts.types import EARLIEST, LATEST
from shopstream.settings import get_settings

from .runner import Outcome, Plan, run
from .sender import Report

PLAIN_PROGRESS_EVERY_S = 10.0  # when stderr is not a terminal: one progress line this often

app = typer.Typer(add_completion=False, help=__doc__)


def progress_line(totals: Report, elapsed_s: float) -> Text:
    """Cohorts, sent / accepted / rejected / failed / retried, and the accepted rate."""
    t, e, p = totals.total, totals.events, totals.purchases
    line = Text(f"cohorts {totals.cohorts:,}  ")
    line.append(f"events {e.accepted:,}/{e.sent:,}  purchases {p.accepted:,}/{p.sent:,} accepted  ")
    line.append(f"rejected {t.rejected:,}  ", style="bold red" if t.rejected else "")
    line.append(f"failed {t.failed:,}  ", style="bold red" if t.failed else "")
    line.append(f"retried {t.retried:,}  ", style="yellow" if t.retried else "")
    line.append(f"{t.accepted / elapsed_s if elapsed_s > 0 else 0:,.0f} records/s")
    return line


def summary_line(outcome: Outcome, seed: int) -> str:
    t, e, p = outcome.totals.total, outcome.totals.events, outcome.totals.purchases
    rate = t.accepted / outcome.elapsed_s if outcome.elapsed_s > 0 else 0.0
    return (
        f"{outcome.cohorts:,} cohorts in {outcome.elapsed_s:.1f} s (seed {seed}): "
        f"{t.sent:,} records sent ({e.sent:,} events, {p.sent:,} purchases), {t.accepted:,} accepted, "
        f"{t.rejected:,} rejected, {t.failed:,} failed, {t.retried:,} retried requests; {rate:,.0f} records/s"
    )


def _parse_start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        start = datetime.fromisoformat(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--start") from None
    if start.tzinfo is None:
        raise typer.BadParameter("needs a UTC offset, e.g. 2026-01-01T12:00:00Z", param_hint="--start")
    if not EARLIEST + timedelta(days=1) <= start < LATEST - timedelta(days=365):
        raise typer.BadParameter(f"must be between {EARLIEST:%Y} and {LATEST:%Y}", param_hint="--start")
    return start


async def _run_with_progress(plan: Plan, console: Console) -> Outcome:
    """Run `plan` showing live progress; the first Ctrl-C stops after the current cohort, a second aborts."""
    loop, task, stop = asyncio.get_running_loop(), asyncio.current_task(), asyncio.Event()
    assert task is not None  # a coroutine runs this
    totals, began = Report(), time.monotonic()

    def on_signal() -> None:
        if stop.is_set():
            task.cancel()
            return
        stop.set()
        console.print("stopping after the current cohort (Ctrl-C again to abort)")

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or not Unix
            pass

    async def plain_progress() -> None:
        while True:
            await asyncio.sleep(PLAIN_PROGRESS_EVERY_S)
            console.print(progress_line(totals, time.monotonic() - began), soft_wrap=True)

    reporter = None if console.is_terminal else asyncio.create_task(plain_progress())
    live = (
        Live(
            get_renderable=lambda: progress_line(totals, time.monotonic() - began),
            console=console,
            refresh_per_second=4,
            transient=True,
        )
        if console.is_terminal
        else None
    )
    try:
        if live is not None:
            live.start()
        return await run(plan, stop, totals, say=lambda line: console.print(line, soft_wrap=True, markup=False))
    except asyncio.CancelledError:
        console.print("aborted: the current cohort was not sent completely", style="bold red")
        return Outcome(totals.cohorts, time.monotonic() - began, totals, aborted=True)
    finally:
        if live is not None:
            live.stop()
        if reporter is not None:
            reporter.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)


@app.command()
def generate(
    api_url: Annotated[
        str | None, typer.Option(help="Base URL of the ingestion API. (default: the settings' api.base_url)")
    ] = None,
    sessions_per_second: Annotated[
        int | None,
        typer.Option(
            "--sessions-per-second",
            "-n",
            min=1,
            max=10_000,
            help="Cohort size: shop sessions built and sent each second. "
            "(default: the settings' generator.sessions_per_second)",
        ),
    ] = None,
    seconds: Annotated[
        float | None, typer.Option(min=0.001, help="Stop after this many seconds. (default: no limit)")
    ] = None,
    cohorts: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many cohorts. (default: no limit)")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Same seed, same users, products and sessions. "
            "(default: the settings' generator.seed, else random and printed)"
        ),
    ] = None,
    users: Annotated[int, typer.Option(min=1, max=1_000_000, help="Size of the user pool.")] = 500,
    products: Annotated[int, typer.Option(min=1, max=100_000, help="Size of the product catalogue.")] = 200,
    start: Annotated[
        str | None,
        typer.Option(
            help="Time of the first cohort (ISO 8601 with offset); later cohorts are 1 s apart. "
            "With --seed, every record is identical run after run. (default: the clock)"
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=1_000, help="Requests in flight at most.")] = 16,
    dimensions: Annotated[
        bool,
        typer.Option(
            help="Publish the world's products and customers to the settings' compacted Kafka topics "
            "(kafka.products_topic, kafka.customers_topic) before the first cohort."
        ),
    ] = True,
) -> None:
    """Send a cohort of Faker-made sessions (events and purchases) to the API every second.

    Ctrl-C stops after the current cohort. Exit code 1 if any record was rejected or failed.
    """
    settings = get_settings()
    sessions_per_second = sessions_per_second or settings.generator.sessions_per_second
    if seed is None:
        seed = settings.generator.seed if settings.generator.seed is not None else secrets.randbelow(2**31)
    plan = Plan(
        api_url=api_url or settings.api.base_url,
        sessions_per_cohort=sessions_per_second,
        seed=seed,
        users=users,
        products=products,
        seconds=seconds,
        cohorts=cohorts,
        start=_parse_start(start),
        concurrency=concurrency,
        max_body_bytes=settings.api.max_body_bytes,
        dimensions=settings.kafka if dimensions else None,
        client_key=settings.api.client_key,
    )
    progress, out = Console(stderr=True), Console(highlight=False)
    progress.print(
        f"sending {sessions_per_second} sessions/s to {plan.api_url} (seed {seed}); Ctrl-C stops",
        soft_wrap=True,
        markup=False,
    )
    outcome = asyncio.run(_run_with_progress(plan, progress))
    out.print(summary_line(outcome, seed), soft_wrap=True)
    for error in outcome.totals.errors[:5]:
        progress.print(error, style="red", markup=False, soft_wrap=True)
    if not outcome.totals.ok or outcome.aborted:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; `argv` defaults to the command line."""
    app(args=argv, prog_name="shopstream-generate")
