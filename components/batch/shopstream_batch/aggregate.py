"""Task 2: EventCount per (UserId, EventName), exact under retries and overlapping runs.

Only events not counted yet are read, so the cost follows the run's new events,
not the history. Each run, holding a lease so aggregations never interleave:

1. claims the uncounted events into a new aggregation batch (`AggBatch` = batch id);
2. `$merge`s the batch's per-pair counts into the counts collection, where a pair
   document remembers the last batches applied to it, so re-applying a batch
   (a retry after a crash between steps 2 and 3) changes nothing;
3. marks the batch applied.

A batch left unfinished by a crashed run is finished first by the next one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from shopstream.adapters.mongo import database, mongo_client
from shopstream.settings import Settings, get_settings

from .store import Collections, ensure_collections

log = logging.getLogger(__name__)

LEASE = "aggregate-event-counts"
APPLIED_WINDOW = 200  # batches remembered per pair; a retry comes long before 200 more runs


@dataclass
class AggregateReport:
    batches: int = 0
    events_counted: int = 0
    pairs_updated: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LeaseTimeout(RuntimeError):
    pass


def _acquire(colls: Collections, owner: str, seconds: float, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        now = datetime.now(UTC)
        try:
            colls.leases.find_one_and_update(
                {"_id": LEASE, "$or": [{"expires": {"$lt": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "expires": now + timedelta(seconds=seconds)}},
                upsert=True, return_document=ReturnDocument.AFTER,
            )
            return
        except DuplicateKeyError:  # held by another run: the upsert collided with its document
            if time.monotonic() > deadline:
                raise LeaseTimeout("another aggregation holds the lease") from None
            time.sleep(0.5)


def _release(colls: Collections, owner: str) -> None:
    colls.leases.delete_one({"_id": LEASE, "owner": owner})


def apply(colls: Collections, batch_id: str) -> int:
    """Merge one batch's counts into the pair documents; idempotent per (pair, batch)."""
    new = {"$add": ["$EventCount", "$$n"]}
    seen = {"$in": ["$$b", "$Applied"]}
    colls.events.aggregate([
        {"$match": {"AggBatch": batch_id}},
        {"$group": {"_id": {"u": "$UserId", "e": "$EventName"}, "n": {"$sum": 1}}},
        {"$project": {"_id": 0, "UserId": "$_id.u", "EventName": "$_id.e", "EventCount": "$n",
                      "Applied": [batch_id], "UpdatedAt": "$$NOW"}},
        {"$merge": {
            "into": colls.counts.name,
            "on": ["UserId", "EventName"],
            "let": {"n": "$EventCount", "b": batch_id},
            "whenMatched": [{"$set": {
                "EventCount": {"$cond": [seen, "$EventCount", new]},
                "Applied": {"$cond": [seen, "$Applied",
                                      {"$slice": [{"$concatArrays": ["$Applied", ["$$b"]]}, -APPLIED_WINDOW]}]},
                "UpdatedAt": "$$NOW",
            }}],
            "whenNotMatched": "insert",
        }},
    ])
    return colls.events.count_documents({"AggBatch": batch_id})


def finish(colls: Collections, batch: dict[str, Any], report: AggregateReport) -> None:
    """Steps 2 and 3 for one batch (safe to repeat)."""
    if batch["state"] == "claiming":  # crashed while claiming: nothing merged yet, so claim the rest
        colls.events.update_many({"AggBatch": None}, {"$set": {"AggBatch": batch["_id"]}})
        colls.agg_batches.update_one({"_id": batch["_id"]}, {"$set": {"state": "claimed"}})
    counted = apply(colls, batch["_id"])
    colls.agg_batches.update_one({"_id": batch["_id"]},
                                 {"$set": {"state": "applied", "events": counted, "applied_at": datetime.now(UTC)}})
    report.batches += 1
    report.events_counted += counted
    report.pairs_updated += colls.counts.count_documents({"Applied": batch["_id"]})


def claim(colls: Collections) -> str:
    """Step 1: put every uncounted event into a new batch; returns its id."""
    batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    colls.agg_batches.insert_one({"_id": batch_id, "state": "claiming", "created": datetime.now(UTC)})
    claimed = colls.events.update_many({"AggBatch": None}, {"$set": {"AggBatch": batch_id}}).modified_count
    colls.agg_batches.update_one({"_id": batch_id}, {"$set": {"state": "claimed", "claimed": claimed}})
    return batch_id


def unfinished(colls: Collections) -> list[dict[str, Any]]:
    return list(colls.agg_batches.find({"state": {"$ne": "applied"}}).sort("created", 1))


def update_event_counts(settings: Settings | None = None, wait_for_lease_s: float = 300) -> AggregateReport:
    """Count every stored event not counted yet into its (UserId, EventName) document."""
    settings = settings or get_settings()
    t0 = time.monotonic()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    client = mongo_client(settings.mongo)
    colls = ensure_collections(database(client, settings.mongo), settings.batch)
    report = AggregateReport()
    try:
        _acquire(colls, owner, settings.batch.lease_seconds, wait_for_lease_s)
        try:
            for batch in unfinished(colls):
                log.info("finishing batch %s left %s by an earlier run", batch["_id"], batch["state"])
                finish(colls, batch, report)
            batch_id = claim(colls)
            finish(colls, {"_id": batch_id, "state": "claimed"}, report)
        finally:
            _release(colls, owner)
    finally:
        client.close()
    report.seconds = round(time.monotonic() - t0, 3)
    log.info("aggregate done: %s", report.as_dict())
    return report
