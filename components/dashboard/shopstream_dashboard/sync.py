"""Background threads that keep the read model up to date with the stores.

Each loop copies only what is new: MongoDB events stored since the last look (with an
overlap, since a drain's insert can become visible a little after its StoredAt; the
read model drops the copies), and the lake's newly committed Parquet files. A store
that fails is reported down in its `Source`; what was loaded before stays queryable.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from minio import Minio
from pymongo.collection import Collection

from shopstream.adapters.lake import LakeFiles
from shopstream.settings import Settings

from .readmodel import ReadModel

log = logging.getLogger(__name__)

EVENT_FIELDS = {"UserId": 1, "EventName": 1, "TimeStamp": 1, "StoredAt": 1}


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
    """Runs `step()` every `interval` seconds in a daemon thread until `stop()`."""

    name = "loop"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dashboard-{self.name}", daemon=True)
        self.source = SourceState(self.name)

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
    """MongoDB's stored user events -> the read model's `events`."""

    name = "mongodb"

    def __init__(
        self, model: ReadModel, events: Collection, interval: float, overlap_s: float, chunk: int = 50_000
    ) -> None:
        super().__init__(interval)
        self.model, self.overlap, self.chunk = model, timedelta(seconds=overlap_s), chunk
        self.events = events
        self.watermark: datetime | None = None  # newest StoredAt read

    def _copy(self, query: dict[str, Any], total: int | None) -> tuple[int, datetime | None]:
        cols: dict[str, list] = {"EventId": [], "UserId": [], "EventName": [], "TimeStamp": []}
        added, newest = 0, None

        def flush() -> None:
            nonlocal added
            added += self.model.add_events(pa.table(cols))
            for v in cols.values():
                v.clear()

        for read, doc in enumerate(self.events.find(query, EVENT_FIELDS, batch_size=10_000), start=1):
            cols["EventId"].append(str(doc["_id"]))
            for k in ("UserId", "EventName", "TimeStamp"):
                cols[k].append(doc[k])
            newest = doc["StoredAt"] if newest is None or doc["StoredAt"] > newest else newest
            if read % self.chunk == 0:
                flush()
                if total:
                    self.source.loading(f"loading events {min(read, total):,} of {total:,}")
        flush()
        return added, newest

    def step(self) -> None:
        if self.watermark is None:  # first look: everything there is
            started = datetime.now(UTC)
            total = self.events.estimated_document_count()
            self.source.loading(f"loading events 0 of {total:,}")
            t0 = time.monotonic()
            added, newest = self._copy({}, total)
            log.info("read %s events from MongoDB in %.1f s", f"{added:,}", time.monotonic() - t0)
            # what a drain inserted while the scan ran may have been missed: look again from its start
            self.watermark = min(newest, started) if newest else started - self.overlap
        else:
            added, newest = self._copy({"StoredAt": {"$gt": self.watermark - self.overlap}}, None)
            if newest and newest > self.watermark:
                self.watermark = newest
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
        self.loaded: set[str] = set()
        self.warm_ms: float | None = None

    def step(self) -> None:
        new = sorted(self.lake.committed() - self.loaded)
        t0, before = time.monotonic(), self.model.counts()["purchases"]
        for i in range(0, len(new), self.files_per_load):
            part = new[i : i + self.files_per_load]
            table = self.lake.read(part)
            if table is not None:
                self.model.add_purchases(table)
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
        detail = f"{self.model.counts()['purchases']:,} purchases in {len(self.loaded):,} files"
        if new or self.warm_ms is None:  # the sales answer, ready before the page asks for it
            self.warm_ms = self.model.warm()
        self.source.ok(f"{detail}; sales computed in {self.warm_ms:,.0f} ms")
