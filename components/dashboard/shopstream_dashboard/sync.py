"""Background threads that keep the read model up to date with the stores.

Each loop reads only what is new, and saves where it got to in the read model, in the same
transaction as what it read, so a restart resumes there.

MongoDB: events are followed by their `StoredAt` (indexed). A drain's insert can become
readable a little after its `StoredAt`, so the cursor has two ends: `settled`, before which
every event has been read, kept `events_settle_s` behind the clock, and `newest`, the newest
StoredAt read. Each look reads the events stored after `newest` (the new ones), and once the
range from `settled` to the clock minus `events_settle_s` (what may have become readable late),
so an event is read about twice in all, however often the page refreshes; the read model
recognises the copies by EventId. A first look (or one after a long stop) reads the whole
history the same way, range by range, saving the cursor after each.

The lake: the newly committed Parquet files, each read once (`shopstream.adapters.lake`).

Small tables are copied whole, each replacing its read-model copy in one transaction:
PostgreSQL's products and customers (loaded by the batch's `dimensions` task; not there yet
on a fresh stack, then the copy is empty: products show as their ids), read again only when
their row count or newest `updated_at` changed; MongoDB's session day sums and product
engagement (the batch's `sessions` task), a few hundred documents.
A store that fails is reported down in its `Source`; what was loaded before stays queryable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from minio import Minio
from pymongo.collection import Collection
from sqlalchemy import Engine, text

from shopstream.adapters.lake import LakeFiles
from shopstream.contracts.dimensions import CUSTOMERS, PRODUCTS, DimensionTable, column
from shopstream.contracts.sessions import ProductEngagement, SessionDay
from shopstream.settings import Settings

from .readmodel import ENRICHMENT, ReadModel

log = logging.getLogger(__name__)

# Enrichment: absent on events stored before enrichment (the read model counts them as unknown)
EVENT_FIELDS = {"UserId": 1, "EventName": 1, "TimeStamp": 1, "StoredAt": 1, "Enrichment": 1}


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def _newest(table: pa.Table, newest: datetime | None) -> datetime | None:
    """The newer of `newest` and the table's newest StoredAt."""
    if not table.num_rows:
        return newest
    last = _utc(pc.max(table["StoredAt"]).as_py())
    return last if newest is None or last > newest else newest


def describe(e: BaseException) -> str:
    """An error as the page shows it: its type and message, kept short."""
    return f"{type(e).__name__}: {e}"[:300]


class SourceState:
    """How a store last answered: the `Source` of the JSON API."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "loading"
        self.synced_at: datetime | None = None
        self.error: str | None = None
        self.detail: str | None = None

    def ok(self, detail: str | None = None) -> None:
        self.state, self.synced_at, self.error, self.detail = "up", datetime.now(UTC), None, detail

    def failed(self, e: BaseException) -> None:
        self.state, self.error = "down", describe(e)

    def loading(self, detail: str) -> None:
        if self.state != "down":
            self.state = "loading"
        self.detail = detail

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "synced_at": self.synced_at,
            "error": self.error,
            "detail": self.detail,
        }


class Loop:
    """Runs `step()` every `interval` seconds in a daemon thread until `stop()`; `source` says
    how its store (`store`, by default its name) last answered."""

    name = "loop"
    store: str | None = None

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dashboard-{self.name}", daemon=True)
        self.source = SourceState(self.store or self.name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - the store is down or answered nonsense: say so, try again later
                if self.source.state != "down":
                    log.warning("%s: %s", self.name, e)
                self.source.failed(e)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def step(self) -> None:
        raise NotImplementedError


class EventsSync(Loop):
    """MongoDB's stored user events -> the read model's event rollups."""

    name = "mongodb"
    CHUNK = 50_000  # events per settling range, about: the range's span adapts to it

    def __init__(self, model: ReadModel, events: Collection, interval: float, settle_s: float) -> None:
        super().__init__(interval)
        self.model, self.settle = model, timedelta(seconds=settle_s)
        self.events = events
        self.span = timedelta(minutes=1)  # of the next settling range

    def _read(self, query: dict[str, Any], chunk: int | None = None) -> Iterator[pa.Table]:
        """The events matching `query`, as tables of `chunk` rows at most (all in one without)."""
        cols: dict[str, list] = {
            k: [] for k in ("EventId", "UserId", "EventName", "TimeStamp", "StoredAt", "Enrichment")
        }

        def table() -> pa.Table:
            t = pa.table(
                {
                    "EventId": pa.array(cols["EventId"], pa.string()),
                    "UserId": pa.array(cols["UserId"], pa.string()),
                    "EventName": pa.array(cols["EventName"], pa.string()),
                    "TimeStamp": pa.array(cols["TimeStamp"], pa.timestamp("us", tz="UTC")),
                    "StoredAt": pa.array(cols["StoredAt"], pa.timestamp("us", tz="UTC")),
                    "Enrichment": pa.array(cols["Enrichment"], ENRICHMENT),
                }
            )
            for v in cols.values():
                v.clear()
            return t

        for read, doc in enumerate(self.events.find(query, EVENT_FIELDS, batch_size=10_000), start=1):
            cols["EventId"].append(str(doc["_id"]))
            for k in ("UserId", "EventName", "TimeStamp", "StoredAt"):
                cols[k].append(doc[k])
            cols["Enrichment"].append(doc.get("Enrichment"))
            if chunk and read % chunk == 0:
                yield table()
        yield table()

    def _fold(
        self, query: dict[str, Any], now: datetime, settled: datetime, newest: datetime | None
    ) -> tuple[datetime | None, int]:
        """Read the events matching `query` into the read model and save the cursor (settled, newest)
        with them; returns the new newest and how many were read."""
        (table,) = self._read(query)
        newest = _newest(table, newest)
        self.model.add_events(table, now, settled, cursor=(settled, newest))
        return newest, table.num_rows

    def _collection_id(self) -> str | None:
        """The events collection's UUID (a new one when it was dropped and made again); a count
        would cost the embedded server a scan of every document."""
        for c in self.events.database.list_collections(filter={"name": self.events.name}):
            uuid = c.get("info", {}).get("uuid")
            return str(uuid.hex() if isinstance(uuid, bytes) else uuid) if uuid is not None else None
        return None

    def step(self) -> None:
        collection = self._collection_id()
        if collection != self.model.get_meta("events_collection"):
            if self.model.events_cursor() is not None:
                log.warning("MongoDB's events collection was made again: reading its events from the start")
                self.model.reset_events()
            self.model.set_meta("events_collection", collection)
        now = datetime.now(UTC)
        target = now - self.settle
        cursor = self.model.events_cursor()
        if cursor is None:  # a first look: everything stored up to `target`, saved once at the end
            t0, newest = time.monotonic(), None
            self.source.loading("loading events: 0 read")
            for table in self._read({"StoredAt": {"$lte": target}}, self.CHUNK):
                if self._stop.is_set():
                    return
                newest = _newest(table, newest)
                self.model.add_events(table, now, target)
                self.source.loading(f"loading events: {self.model.counts()['events']:,} read")
            self.model.add_events(table.slice(0, 0), now, target, cursor=(target, newest))
            read = self.model.counts()["events"]
            log.info("read %s events from MongoDB in %.1f s", f"{read:,}", time.monotonic() - t0)
            settled = target
        else:
            settled, newest = cursor
        # the ranges no late insert can reach any more, each read once (a long one after a long stop)
        while settled < target and not self._stop.is_set():
            upto = min(settled + self.span, target)
            newest, read = self._fold({"StoredAt": {"$gt": settled, "$lte": upto}}, now, upto, newest)
            if read > self.CHUNK:
                self.span = max(self.span / 2, timedelta(milliseconds=1))
            elif read < self.CHUNK / 4:
                self.span = min(self.span * 2, timedelta(days=1))
            settled = upto
            if upto < target:
                self.source.loading(f"loading events stored up to {upto:%Y-%m-%d %H:%M:%S}")
        if self._stop.is_set():
            return
        # the new events: stored after the newest one read (the late ones come with their range)
        self._fold({"StoredAt": {"$gt": max(newest or target, target)}}, now, target, newest)
        self.source.ok(f"{self.model.counts()['events']:,} events")


class LakeSync(Loop):
    """The lake's committed purchases -> the read model's `purchases` and `lines`."""

    name = "lake"

    def __init__(
        self, model: ReadModel, s3: Minio, settings: Settings, interval: float, files_per_load: int = 200
    ) -> None:
        super().__init__(interval)
        self.model, self.files_per_load = model, files_per_load
        self.lake = LakeFiles(s3, settings)
        self.loaded: set[str] | None = None  # the files read: the read model's, kept here too

    def step(self) -> None:
        committed = self.lake.committed()
        if self.loaded is None:
            self.loaded = self.model.lake_files()
        if self.loaded - committed:
            log.warning("files read before are no longer in the lake: reading the lake again")
            self.model.reset_purchases()
            self.loaded = set()
        new = sorted(committed - self.loaded)
        t0, before = time.monotonic(), self.model.counts()["purchases"]
        for i in range(0, len(new), self.files_per_load):
            part = new[i : i + self.files_per_load]
            self.model.add_purchases(self.lake.read(part), part)
            self.loaded.update(part)
            if len(new) > self.files_per_load:
                self.source.loading(f"loading purchases: {min(i + len(part), len(new)):,} of {len(new):,} files")
        if new and time.monotonic() - t0 > 1.0:  # a first load, or a catch-up
            log.info(
                "read %s purchases from %s lake files in %.1f s",
                f"{self.model.counts()['purchases'] - before:,}",
                f"{len(new):,}",
                time.monotonic() - t0,
            )
        self.source.ok(f"{self.model.counts()['purchases']:,} purchases in {len(self.loaded):,} files")


class DimensionsSync(Loop):
    """PostgreSQL's products and customers -> the read model's copies (names, categories, homes)."""

    name = "dimensions"
    store = "postgresql"
    TABLES: ClassVar[dict[str, DimensionTable]] = {
        "products": PRODUCTS,
        "customers": CUSTOMERS,
    }  # the read model's table -> PostgreSQL's

    def __init__(self, model: ReadModel, pg: Engine, interval: float) -> None:
        super().__init__(interval)
        self.model, self.pg = model, pg
        self.seen: dict[str, Any] = {}  # per table, the (rows, newest updated_at) copied last

    def _copy(self, conn: Any, name: str, table: DimensionTable) -> int:
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": table.name}).scalar() is None:
            mark: Any = None  # not loaded yet (a fresh stack): nothing to name things by
            records: list = []
        else:
            mark = tuple(conn.execute(text(f"SELECT count(*), max(updated_at) FROM {table.name}")).one())
            if self.seen.get(name, ()) == mark:
                return self.model.snapshot_rows(name)
            fields = {column(f): f for f in table.model.model_fields}
            rows = conn.execute(text(f"SELECT {', '.join(fields)} FROM {table.name}")).mappings()
            records = [table.model.model_validate({fields[c]: v for c, v in r.items()}) for r in rows]
        if self.seen.get(name, ()) != mark:
            self.model.replace_snapshot(name, records)
            self.seen[name] = mark
        return len(records)

    def step(self) -> None:
        with self.pg.connect() as conn:  # a connection per look: see pg_engine_unpooled
            counts = {name: self._copy(conn, name, table) for name, table in self.TABLES.items()}
        self.source.ok(", ".join(f"{n:,} {name}" for name, n in counts.items()))


def session_day(doc: dict[str, Any]) -> SessionDay:
    """A `session_days` document (`_id` is its Day; sums never incremented are absent) as its contract."""
    return SessionDay(**{k: v for k, v in doc.items() if k != "_id"})


def engagement(doc: dict[str, Any]) -> ProductEngagement:
    """A `product_engagement` document (`_id` is the ProductId) as its contract."""
    return ProductEngagement(ProductId=doc["_id"], **{k: v for k, v in doc.items() if k != "_id"})


class SessionsSync(Loop):
    """MongoDB's session day sums and product engagement -> the read model's copies."""

    name = "sessions"
    store = "mongodb"

    def __init__(self, model: ReadModel, days: Collection, products: Collection, interval: float) -> None:
        super().__init__(interval)
        self.model, self.days, self.products = model, days, products

    def step(self) -> None:
        days = [session_day(d) for d in self.days.find()]
        products = [engagement(d) for d in self.products.find()]
        self.model.replace_snapshot("session_days", days)
        self.model.replace_snapshot("product_engagement", products)
        self.source.ok(f"{len(days):,} days, {len(products):,} products")
