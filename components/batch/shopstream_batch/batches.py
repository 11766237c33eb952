"""Aggregation batches the drain opens: its stored events are counted without a claim.

Each drain batch stores its new events already labelled with a batch of their own
(`AggBatch`), so the aggregation counts them as they are instead of rewriting every event
into a batch of its own (on SecantusDB that claim was about 60% of the aggregation's time).
A batch document goes through these states:

- `storing`: opened by the drain before its insert; the aggregation leaves it alone;
- `claimed`: closed by the drain once its insert has returned, so no event joins it any
  more; the aggregation applies it as one of its own (`aggregate.finish`);
- `applied`: counted;
- `abandoned`: its drain is gone. A new run of the same drain member abandons what an earlier
  run of it left open when it starts (a member's runs never overlap for long: the newer fences
  the older in the consumer group), and the aggregation abandons a batch still `storing`
  long after any drain that opened it must have ended
  (`BatchSettings.storing_abandoned_after_s`, for a member that never runs again). The
  aggregation gives an abandoned batch's events back to the uncounted (`AggBatch` null),
  and its own claims count them.

A drain and the aggregation change a `storing` batch only from that state, so exactly one of
them decides its fate. A drain that finds its batch abandoned when it comes to close it
gives its events back itself. Events a frozen drain inserts into a batch after it was
abandoned are given back by every later aggregation run, which looks at each abandoned batch
again. So no event ends in a batch that is never applied, and none is counted twice,
whatever the timing: who abandons a batch, and when, only sets how soon a dead drain's
events are counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from shopstream.adapters.mongo import Collections

STORING, CLAIMED, APPLIED, ABANDONED = "storing", "claimed", "applied", "abandoned"
# ids per `$in`: the embedded server's cost grows with the square of the list's length
# (10k ids: 128 s; 100 ids at a time: 6 s, at any history size)
IN_CHUNK = 100


def new_batch_id() -> str:
    """Sortable by when it was made, unique without coordination."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def open_batch(colls: Collections, member: int = 0) -> str:
    """A new `storing` batch for the events drain member `member` is about to insert."""
    batch_id = new_batch_id()
    colls.agg_batches.insert_one(
        {"_id": batch_id, "state": STORING, "created": datetime.now(UTC), "token": None, "member": member}
    )
    return batch_id


def abandon_left_open(colls: Collections, member: int) -> int:
    """A new run of drain member `member` starts: what earlier runs of it left `storing`
    belongs to a run that is gone, or is being fenced; how many batches."""
    return colls.agg_batches.update_many({"state": STORING, "member": member}, _abandon()).modified_count


def close_batch(colls: Collections, batch_id: str, stored: int) -> bool:
    """The drain's insert has returned: the batch is final. False if the aggregation
    abandoned it meanwhile, in which case its events have been given back to the uncounted."""
    done = {"state": APPLIED, "events": 0} if not stored else {"state": CLAIMED, "claimed": stored}
    closed = colls.agg_batches.update_one({"_id": batch_id, "state": STORING}, {"$set": done}).modified_count == 1
    if not closed:
        give_back(colls, [batch_id])
    return closed


def _abandon() -> dict:
    return {"$set": {"state": ABANDONED, "abandoned_at": datetime.now(UTC)}}


def give_back(colls: Collections, batch_ids: Iterable[str]) -> int:
    """Events of these (abandoned) batches become uncounted again; how many."""
    ids, moved = list(batch_ids), 0
    for i in range(0, len(ids), IN_CHUNK):
        moved += colls.events.update_many(
            {"AggBatch": {"$in": ids[i : i + IN_CHUNK]}}, {"$set": {"AggBatch": None}}, bypass_document_validation=True
        ).modified_count
    return moved


def abandon_stale(colls: Collections, older_than_s: float) -> int:
    """Abandon `storing` batches opened more than `older_than_s` ago, and give back the
    events of every abandoned batch (late inserts included); how many events came back."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    colls.agg_batches.update_many({"state": STORING, "created": {"$lt": cutoff}}, _abandon())
    return give_back(colls, (d["_id"] for d in colls.agg_batches.find({"state": ABANDONED}, {"_id": 1})))


def storing(colls: Collections) -> list[str]:
    """Batches a drain is still writing (or that a dead drain left, until abandoned)."""
    return [d["_id"] for d in colls.agg_batches.find({"state": STORING}, {"_id": 1})]


def not_counted(colls: Collections) -> int:
    """Stored events not counted yet: uncounted, or in a batch not applied."""
    ids = [None, *(d["_id"] for d in colls.agg_batches.find({"state": {"$ne": APPLIED}}, {"_id": 1}))]
    return sum(
        colls.events.count_documents({"AggBatch": {"$in": ids[i : i + IN_CHUNK]}}) for i in range(0, len(ids), IN_CHUNK)
    )
