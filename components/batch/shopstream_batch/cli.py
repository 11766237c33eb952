"""The batch's command line (`python -m shopstream_batch`).

- `check` (`invoke batch-check`): does MongoDB agree with Kafka? Recounts UserEvents from the
  topic (`check.check_counts`) and prints how that compares with MongoDB's stored events and
  counts. Exit code 0 when they agree, 1 when they do not.
- `sessions` (`invoke sessions`): the daily session metrics and the products' engagement, as
  the DAG's sessions task keeps them.
"""

from __future__ import annotations

import shutil
import sys

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import bindparam, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from shopstream.adapters.mongo import collections, database, mongo_client
from shopstream.adapters.postgres import pg_engine_unpooled
from shopstream.contracts.dimensions import PRODUCTS
from shopstream.contracts.sessions import DayMetrics, EngagementRates, ProductEngagement, SessionDay
from shopstream.settings import Settings

from .check import CountCheck, check_counts

app = typer.Typer(add_completion=False, help=__doc__)
# wide enough for the table when output is not a terminal (CI logs, pipes)
console = Console(highlight=False, width=max(120, shutil.get_terminal_size((120, 24)).columns))


def say(msg: str) -> None:
    console.print(f"[bold]shopstream:[/bold] {msg}")


def render(r: CountCheck) -> None:
    table = Table(title="UserEvents in Kafka vs MongoDB")
    table.add_column("what")
    table.add_column("number", justify="right")
    for label, value in [
        ("records read from Kafka (up to the batch's committed offsets)", r.records_read),
        ("  of which not valid (dead-lettered)", r.invalid),
        ("  distinct valid events (by EventId)", r.distinct_events),
        ("events stored in MongoDB", r.stored_events),
        ("sum of EventCount over all (UserId, EventName)", r.counted_events),
        ("(UserId, EventName) pairs", r.pairs),
        ("stored, not counted yet (next aggregation)", r.uncounted),
        ("waiting in Kafka (next drain)", r.lag),
    ]:
        table.add_row(label, f"{value:,}")
    console.print(table)
    if r.uncounted:
        say("an aggregation is pending; run this again after the next DAG run for a pair-by-pair check")
    for pair, (want, got) in list(r.mismatches.items())[:20]:
        say(f"[red]mismatch[/red] {pair}: Kafka has {want}, MongoDB counts {got}")
    say("[green]counts match[/green]" if r.ok else "[red]counts do not match[/red]")


@app.callback()
def batch() -> None:
    """The batch's tools; the DAG (components/dags) runs the drain and the aggregation."""


@app.command()
def check() -> None:
    """Recount UserEvents from Kafka and compare with MongoDB's counts; exit 1 if they differ."""
    r = check_counts(Settings())
    render(r)
    raise typer.Exit(0 if r.ok else 1)


@app.command()
def sessions(
    days: int = typer.Option(7, min=1, help="the latest days shown"),
    products: int = typer.Option(10, min=1, help="the most viewed products shown"),
) -> None:
    """Print the daily session metrics and the most viewed products' click-through."""
    settings = Settings()
    client = mongo_client(settings.mongo)
    try:
        colls = collections(database(client, settings.mongo), settings.batch)
        day_docs = list(colls.session_days.find({}, {"_id": 0}).sort("Day", -1).limit(days))
        product_docs = list(colls.product_engagement.find().sort([("Viewed", -1), ("_id", 1)]).limit(products))
    finally:
        client.close()
    table = Table(title="Sessions per day (UTC, by start; bots apart)")
    rows = [SessionDay(**d).metrics().model_dump() for d in reversed(day_docs)]
    for column in DayMetrics.model_fields:
        table.add_column(column, justify="left" if column == "Day" else "right")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()))
    console.print(table)
    table = Table(title="Product engagement: sessions that viewed, added to the basket, bought")
    rates = [ProductEngagement(ProductId=d.pop("_id"), **d).rates().model_dump() for d in product_docs]
    names = product_names(settings, [r["ProductId"] for r in rates])
    table.add_column("Name")
    for column in EngagementRates.model_fields:
        table.add_column(column, justify="left" if column == "ProductId" else "right")
    for row in rates:
        cells = (f"{v:,}" if isinstance(v, int) else str(v) for v in row.values())
        table.add_row(names.get(row["ProductId"], row["ProductId"]), *cells)
    console.print(table)
    if not rows:
        say("no sessions yet: the DAG's sessions task fills these after its first run")


def product_names(settings: Settings, ids: list[str]) -> dict[str, str]:
    """The catalogue's names of these products (PostgreSQL's `products`, which the dimensions task
    loads); none while the table is not there or PostgreSQL does not answer."""
    engine = pg_engine_unpooled(settings.postgres, connect_timeout_s=5)
    try:
        with engine.connect() as conn:
            if not ids or not inspect(conn).has_table(PRODUCTS.name):
                return {}
            query = text(f"SELECT product_id, name FROM {PRODUCTS.name} WHERE product_id IN :ids")
            return dict(conn.execute(query.bindparams(bindparam("ids", expanding=True)), {"ids": ids}).all())
    except SQLAlchemyError as e:
        say(f"[yellow]product names not read[/yellow] ({type(e).__name__}); shown by id")
        return {}
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="shopstream-batch")


if __name__ == "__main__":
    main()
