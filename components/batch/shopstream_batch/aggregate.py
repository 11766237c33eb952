"""Task 2: EventCount per (UserId, EventName), exact under retries and overlapping runs.

Only events not counted yet are read, so the cost follows the run's new events,
not the history. The drain stores its new events already in an aggregation batch of their
own (`AggBatch`, `shopstream_batch.batches`), so the aggregation counts them as they are.
Each run, holding a lease so aggregations never interleave:

1. takes the batches the drain has closed, oldest first (events of a batch whose drain
   died before closing it, or stored by something else than the drain, are uncounted
   instead: the run claims those into a new batch of its own, `AggBatch` = batch id);
2. adds each batch's per-pair counts to the counts collection, one single-document write per
   pair (an insert for a new pair, else an upsert), where a pair document remembers the last
   batches applied to it, so re-applying a batch (a retry after a crash between steps 2
   and 3) changes nothing;
3. marks the batch applied.

A batch left unfinished by a crashed run is finished first by the next one.

A run has a time budget (`BatchSettings.aggregate_max_seconds`): it takes the next batch
only while the rate measured so far says it fits in the time left, and its first claim is
small, each next one as large as fits (`shopstream_batch.budget`). What it leaves uncounted
is in the report's `remaining`, for the next run. A run stopped anywhere (its budget, a timeout, a crash)
leaves the counts exact: a batch is claimed, merged and marked applied in that order,
and whatever of it was left undone is finished by the next run.

The lease is short (`BatchSettings.lease_seconds`, 30 s) and a heartbeat thread renews
it every third of that while the run works, so a run that dies, or loses MongoDB, holds
up the next one for at most one lease. Expiry is judged by the server's clock. A holder
writes nothing more once it cannot be sure it still holds the lease: a renewal found it
taken, or none has succeeded for `lease_seconds - margin` (counted from when that renewal
was sent, so this local deadline always falls before the server-side expiry). Every
acquisition also gets a larger fencing token, which the holder stamps on the batches it
works on; batch documents change only under the stamping holder's token, and right
before each write to the events or the counts the server confirms that the lease and
the batch are still this holder's. So a stale holder stops at its next step even when
it has not noticed the loss (its process was frozen, say): only a single write the
server was already running when the lease lapsed can overlap the next holder's work.
"""

from __future__ import annotations

import bisect
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pymongo
from pymongo import ReturnDocument, UpdateOne, WriteConcern
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from shopstream.adapters.mongo import Collections, database, mongo_client
from shopstream.settings import Settings, get_settings

from .batches import CLAIMED, IN_CHUNK, abandon_stale, new_batch_id, storing
from .budget import Budget
from .store import DUPLICATE_KEY, ensure_collections

log = logging.getLogger(__name__)

LEASE = "aggregate-event-counts"
APPLIED_WINDOW = 200  # batches remembered per pair; a retry comes long before 200 more runs
_PAIR_CHUNK = 1000  # pairs per bulk write
# events in a run's first batch, which times the server for the next ones (and the smallest
# batch: below a few thousand events, merging into the pairs they touch costs about as much)
FIRST_BATCH = 2000


@dataclass
class AggregateReport:
    batches: int = 0
    events_counted: int = 0
    pairs_updated: int = 0
    remaining: int = 0  # stored events left uncounted for the next run
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LeaseTimeout(RuntimeError):
    pass


class LeaseLost(RuntimeError):
    """This run can no longer be sure it holds the lease: it must not write any more."""


# the lease has expired by the server's clock (dates compared as epoch milliseconds)
_EXPIRED = {"$expr": {"$lt": [{"$toLong": "$expires"}, {"$toLong": "$$NOW"}]}}
_UNEXPIRED = {"$expr": {"$gte": [{"$toLong": "$expires"}, {"$toLong": "$$NOW"}]}}


def _clock() -> float:
    """Seconds on a clock that also runs while the machine sleeps (monotonic does not, on Linux)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class Lease:
    """The aggregation lease: acquired once, renewed by a heartbeat thread, checked before writes."""

    def __init__(self, colls: Collections, owner: str, seconds: float) -> None:
        self.colls, self.owner, self.seconds = colls, owner, float(seconds)
        self.interval = self.seconds / 3  # two renewals in a row may fail before the holder stops
        self.margin = self.seconds / 5  # for a checked write to reach the server before the expiry
        self.token: int | None = None  # fencing token: larger at every acquisition
        self._valid_until = 0.0  # _clock() before which the lease is surely still ours
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _mine(self) -> dict[str, Any]:
        return {"_id": LEASE, "owner": self.owner, "token": self.token}

    def _expiry(self) -> dict[str, Any]:
        return {"$set": {"expires": {"$add": ["$$NOW", int(self.seconds * 1000)]}}}

    def acquire(self, wait_s: float) -> None:
        """Take the lease once it is free or expired; wait at most `wait_s`; start the heartbeat."""
        deadline = time.monotonic() + wait_s
        while True:
            sent = _clock()
            try:
                doc = self.colls.leases.find_one_and_update(
                    {"_id": LEASE, "$or": [_EXPIRED, {"owner": self.owner}]},
                    [
                        {"$set": {"owner": self.owner, "token": {"$add": [{"$ifNull": ["$token", 0]}, 1]}}},
                        self._expiry(),
                    ],
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                break
            except DuplicateKeyError:  # held by another run: the upsert collided with its document
                if time.monotonic() > deadline:
                    raise LeaseTimeout("another aggregation holds the lease") from None
                time.sleep(0.5)
        assert doc is not None  # an upsert returning the document AFTER it always has one
        self.token, self._valid_until = doc["token"], sent + self.seconds - self.margin
        self._thread = threading.Thread(target=self._heartbeat, name="aggregate-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            sent = _clock()
            if self._lost or sent >= self._valid_until:
                self._lose("not renewed in time")
                return
            try:
                with pymongo.timeout(max(0.5, min(self.interval, self._valid_until - sent))):
                    doc = self.colls.leases.find_one_and_update(self._mine, [self._expiry()])
            except PyMongoError as e:  # MongoDB unreachable, say: retry until the lease lapses
                log.warning("aggregation lease not renewed (%s); retrying", e)
                wait = min(1.0, self.interval)
                continue
            if doc is None:
                self._lose("taken over by another aggregation")
                return
            self._valid_until, wait = sent + self.seconds - self.margin, self.interval

    def _lose(self, why: str) -> None:
        if not self._lost:
            self._lost = why
            log.error("aggregation lease lost: %s", why)

    def check(self) -> None:
        """Raise LeaseLost unless the lease is surely still held (before every write)."""
        if not self._lost and _clock() >= self._valid_until:
            self._lose("not renewed in time")
        if self._lost:
            raise LeaseLost(f"aggregation lease lost ({self._lost}); stopping before further writes")

    def confirm(self) -> None:
        """check(), and the server agrees: the lease is this holder's and unexpired."""
        self.check()
        with pymongo.timeout(max(0.5, self._valid_until - _clock())):
            held = self.colls.leases.find_one({**self._mine, **_UNEXPIRED}, {"_id": 1})
        if held is None:
            self._lose("expired or taken over, says the server")
        self.check()

    def release(self) -> None:
        """Stop the heartbeat and free the lease (if that fails, it expires within `seconds`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        if self.token is None:
            return
        try:
            with pymongo.timeout(5):
                self.colls.leases.delete_one(self._mine)
        except PyMongoError as e:
            log.warning("aggregation lease not released (it expires within %.0f s): %s", self.seconds, e)


def _set_batch(colls: Collections, batch_id: str, update: dict[str, Any], lease: Lease | None) -> None:
    """Change a batch document, only while it carries this holder's token."""
    if lease is None:
        colls.agg_batches.update_one({"_id": batch_id}, update)
        return
    lease.check()
    if colls.agg_batches.update_one({"_id": batch_id, "token": lease.token}, update).matched_count != 1:
        raise LeaseLost(f"batch {batch_id} was taken over by a newer aggregation")


def _take(colls: Collections, batch: dict[str, Any], lease: Lease) -> None:
    """Stamp an unfinished batch with this holder's token (never one a newer holder stamped)."""
    lease.check()
    taken = colls.agg_batches.update_one(
        {"_id": batch["_id"], "state": batch["state"], "$or": [{"token": None}, {"token": {"$lt": lease.token}}]},
        {"$set": {"token": lease.token}},
    )
    if taken.matched_count != 1:
        raise LeaseLost(f"batch {batch['_id']} changed under this aggregation")


def _fence(colls: Collections, batch_id: str, lease: Lease | None) -> None:
    """Right before a write to the events or the counts for `batch_id`: the server confirms
    that the lease and the batch are still this holder's."""
    if lease is None:
        return
    lease.confirm()
    if colls.agg_batches.find_one({"_id": batch_id, "token": lease.token}, {"_id": 1}) is None:
        raise LeaseLost(f"batch {batch_id} was taken over by a newer aggregation")
    lease.check()


class Merged(NamedTuple):
    events: int  # the batch's events, counted into their pairs
    pairs: int  # the pairs they fall in


def apply(colls: Collections, batch_id: str) -> Merged:
    """Add one batch's counts to the pair documents; idempotent per (pair, batch).

    The server groups the batch's events per pair; each pair document then changes in one
    single-document write, which a reader sees whole, before or after. (`$merge` would
    save the round trip, but SecantusDB carries out its `whenMatched` pipeline as a delete
    and an insert: a reader could find the pair missing, and a crash between the two would
    lose its count.) A pair seen for the first time is inserted with its count and the
    batch in `Applied`: on SecantusDB an insert costs a third of an upsert, and refusing a
    duplicate a tenth, so every pair is offered as an insert first. The pairs whose unique
    index refuses it exist already and get an upsert that matches only if the batch is not
    among those the pair applied; for a pair that has, the insert the upsert falls back to
    collides again, and that duplicate-key error is the "already counted" answer.

    The writes do not wait for the journal, one flush per pair (a third slower on
    SecantusDB): the batch counts as applied only once `finish`'s journaled write marks it,
    and that write flushes the journal, which is written in order, through them. Writes a
    crash took away leave the batch unmarked, so the next run applies it again."""
    pairs = [
        ({"UserId": p["_id"]["u"], "EventName": p["_id"]["e"]}, p["n"])
        for p in colls.events.aggregate(
            [
                {"$match": {"AggBatch": batch_id}},
                {"$group": {"_id": {"u": "$UserId", "e": "$EventName"}, "n": {"$sum": 1}}},
            ]
        )
    ]
    unjournaled = WriteConcern(**{**colls.counts.write_concern.document, "j": False})
    counts = colls.counts.with_options(write_concern=unjournaled)
    now = datetime.now(UTC)
    for i in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[i : i + _PAIR_CHUNK]
        new = [{**pair, "EventCount": n, "Applied": [batch_id], "UpdatedAt": now} for pair, n in chunk]
        ops = [
            UpdateOne({**pair, "Applied": {"$ne": batch_id}}, _add(batch_id, n), upsert=True)
            for pair, n in (chunk[j] for j in _refused(counts, new))
        ]
        if ops:
            try:
                counts.bulk_write(ops, ordered=False)
            except BulkWriteError as e:
                _only_duplicates(e)
    return Merged(sum(n for _, n in pairs), len(pairs))


def _refused(counts: Collection, docs: list[dict[str, Any]]) -> list[int]:
    """Insert `docs`; the positions of those a duplicate key refused."""
    try:
        counts.insert_many(docs, ordered=False)
    except BulkWriteError as e:
        _only_duplicates(e)
        return [w["index"] for w in e.details["writeErrors"]]
    return []


def _only_duplicates(e: BulkWriteError) -> None:
    """Re-raise `e` unless each of its errors is a duplicate key."""
    if e.details.get("writeConcernErrors") or any(
        w.get("code") != DUPLICATE_KEY for w in e.details.get("writeErrors", [])
    ):
        raise e


def _add(batch_id: str, n: int) -> dict[str, Any]:
    """The update adding `n` events of `batch_id` to a pair (which has not applied it)."""
    return {
        "$inc": {"EventCount": n},
        "$push": {"Applied": {"$each": [batch_id], "$slice": -APPLIED_WINDOW}},
        "$currentDate": {"UpdatedAt": True},
    }


def finish(colls: Collections, batch: dict[str, Any], report: AggregateReport, lease: Lease | None = None) -> None:
    """Steps 2 and 3 for one batch (safe to repeat)."""
    if lease is not None and batch.get("token") != lease.token:  # left by an earlier run
        _take(colls, batch, lease)
    if batch["state"] == "claiming":  # crashed while claiming: nothing merged yet, so claim the rest
        _fence(colls, batch["_id"], lease)
        upto, size = batch.get("upto"), batch.get("limit") or 0
        if upto is not None or not size:  # the same range again, or every uncounted event
            _claim_some(colls, batch["_id"], 0, upto)
        elif (rest := size - colls.events.count_documents({"AggBatch": batch["_id"]})) > 0:
            _claim_some(colls, batch["_id"], rest)  # up to its size, with what the crashed run took
        _set_batch(colls, batch["_id"], {"$set": {"state": "claimed"}}, lease)
    _fence(colls, batch["_id"], lease)
    merged = apply(colls, batch["_id"])
    _set_batch(
        colls,
        batch["_id"],
        {"$set": {"state": "applied", "events": merged.events, "applied_at": datetime.now(UTC)}},
        lease,
    )
    report.batches += 1
    report.events_counted += merged.events
    report.pairs_updated += merged.pairs


def _claim_some(colls: Collections, batch_id: str, limit: int, upto: datetime | None = None) -> int:
    """Put uncounted events into the batch; how many it put. With `upto`: those stored
    (`StoredAt`) at or before it, in one update over the (AggBatch, StoredAt) index, which
    reads only the events it claims. Otherwise up to `limit` of them (0: all), found by a
    query that reads every uncounted event, and claimed by `_id` lists."""
    mark = {"$set": {"AggBatch": batch_id}}
    if upto is not None:  # the validator has nothing to say about a batch id: not asked
        return colls.events.update_many(
            {"AggBatch": None, "StoredAt": {"$lte": upto}}, mark, bypass_document_validation=True
        ).modified_count
    if not limit:
        return colls.events.update_many({"AggBatch": None}, mark, bypass_document_validation=True).modified_count
    ids = [d["_id"] for d in colls.events.find({"AggBatch": None}, {"_id": 1}).limit(limit)]
    claimed = 0
    for i in range(0, len(ids), IN_CHUNK):
        claimed += colls.events.update_many(
            {"_id": {"$in": ids[i : i + IN_CHUNK]}, "AggBatch": None}, mark, bypass_document_validation=True
        ).modified_count
    return claimed


def claim(colls: Collections, lease: Lease | None = None, limit: int = 0, upto: datetime | None = None) -> str:
    """Step 1: put uncounted events into a new batch: those stored at or before `upto`, or
    else at most `limit` (0: all); returns its id (the batch document says how many it `claimed`)."""
    batch_id = new_batch_id()
    if lease is not None:
        lease.check()
    colls.agg_batches.insert_one(
        {
            "_id": batch_id,
            "state": "claiming",
            "created": datetime.now(UTC),
            "token": lease.token if lease else None,
            "limit": limit,
            "upto": upto,
        }
    )
    _fence(colls, batch_id, lease)
    claimed = _claim_some(colls, batch_id, limit, upto)
    _set_batch(colls, batch_id, {"$set": {"state": "claimed", "claimed": claimed}}, lease)
    return batch_id


def uncounted(colls: Collections) -> tuple[list[datetime], int]:
    """When each uncounted event was stored, oldest first, and how many have no `StoredAt`:
    one read of the uncounted events, from which a run cuts its batches."""
    times, unstamped = [], 0
    for d in colls.events.find({"AggBatch": None}, {"_id": 0, "StoredAt": 1}, batch_size=50_000):
        if isinstance(d.get("StoredAt"), datetime):
            times.append(d["StoredAt"])
        else:
            unstamped += 1
    times.sort()
    return times, unstamped


def unfinished(colls: Collections) -> list[dict[str, Any]]:
    """Batches to apply, oldest first: those the drain closed, and those a run left unfinished."""
    return list(colls.agg_batches.find({"state": {"$in": ["claiming", CLAIMED]}}).sort("created", 1))


def update_event_counts(
    settings: Settings | None = None, wait_for_lease_s: float | None = None, budget: Budget | None = None
) -> AggregateReport:
    """Count stored events not counted yet into their (UserId, EventName) documents, within
    `budget` (by default `batch.aggregate_max_seconds` from now; waiting for the lease, at
    most `wait_for_lease_s` or the whole budget, counts in it)."""
    settings = settings or get_settings()
    cfg = settings.batch
    budget = budget or Budget(cfg.aggregate_max_seconds)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    client = mongo_client(settings.mongo)
    colls = ensure_collections(database(client, settings.mongo), cfg)
    report = AggregateReport()
    try:
        lease = Lease(colls, owner, cfg.lease_seconds)
        try:
            lease.acquire(budget.left() if wait_for_lease_s is None else wait_for_lease_s)
            if back := abandon_stale(colls, cfg.storing_abandoned_after_s):
                log.warning("%d events of drain batches never closed are uncounted again", back)
            cap, first = cfg.aggregate_batch_events, min(cfg.aggregate_batch_events, FIRST_BATCH)
            left = 0  # events in the batches this run leaves to the next
            for batch in unfinished(colls):  # oldest first: one a run left half-applied before any newer
                size = batch.get("claimed") or 0
                if left or (report.batches and not budget.fits(max(1, size))):
                    left += size
                    continue
                if batch["state"] == "claiming" or batch.get("token") is not None:
                    log.info("finishing batch %s left %s by an earlier run", batch["_id"], batch["state"])
                t0, counted = budget.clock(), report.events_counted
                finish(colls, batch, report, lease)
                budget.took(report.events_counted - counted, budget.clock() - t0)
            times, unstamped = uncounted(colls)  # what is left now: new events wait for the next run
            while (times or unstamped) and (size := budget.size(cap, first=first)):
                # the oldest `size` events, by when they were stored (a few more on a tie); events
                # without a StoredAt (written by something else than the drain) by `_id` lists
                upto = None if unstamped else times[min(size, len(times)) - 1]
                t0 = budget.clock()
                batch_id = claim(colls, lease, size, upto)
                finish(colls, {"_id": batch_id, "state": "claimed", "token": lease.token}, report, lease)
                claimed_doc = colls.agg_batches.find_one({"_id": batch_id}, {"claimed": 1})
                assert claimed_doc is not None  # `claim` has just written it
                claimed = claimed_doc["claimed"]
                budget.took(claimed, budget.clock() - t0)
                if upto is not None:
                    times = times[bisect.bisect_right(times, upto) :]
                else:  # which ones it took is not known: look again
                    times, unstamped = uncounted(colls) if claimed >= size else ([], 0)
            open_ids = storing(colls)  # batches a drain is still writing: stored, not countable yet
            in_open = colls.events.count_documents({"AggBatch": {"$in": open_ids}}) if open_ids else 0
            report.remaining = left + len(times) + unstamped + in_open
        finally:
            lease.release()
    finally:
        client.close()
    report.seconds = round(budget.elapsed(), 3)
    log.info("aggregate done: %s", report.as_dict())
    return report
