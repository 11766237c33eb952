"""The aggregation's cost follows the new events, not the history (issue: batch layer).

Same new batch (10k events, stored as the drain stores them) counted on top of 10k and of
1M already-counted events.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime
from functools import partial

from bson.decimal128 import Decimal128
from rich.progress import Progress

from shopstream.adapters.mongo import mongo_client
from shopstream.settings import Settings
from shopstream_batch.aggregate import update_event_counts
from shopstream_batch.batches import close_batch, open_batch
from shopstream_batch.store import Collections, ensure_collections

from .harness import Figure, median_seconds

NAMES = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
USERS = 2000


def _events(n: int, prefix: str, batch: str | None = None) -> list[dict]:
    now = datetime.now(UTC)
    return [
        {
            "_id": f"{prefix}-{i}",
            "UserId": f"user-{i % USERS}",
            "SessionId": f"s-{i // 7}",
            "EventName": NAMES[i % 3],
            "TimeStamp": now,
            "IngestedAt": now,
            "Attributes": {"ProductId": f"sku-{i % 300}", "Price": Decimal128("9.99"), "Discount": Decimal128("0.00")},
            "KafkaPartition": i % 3,
            "KafkaOffset": i,
            "StoredAt": now,
            "AggBatch": batch,
        }
        for i in range(n)
    ]


HISTORY = "history"


def _new_batch(colls: Collections, n: int) -> None:
    """The new events the aggregation counts, under a new prefix each time, stored as the
    drain stores them: in an aggregation batch it opens before the insert and closes after."""
    batch_id = open_batch(colls)
    colls.events.insert_many(_events(n, f"n-{uuid.uuid4().hex[:8]}", batch_id), ordered=False)
    close_batch(colls, batch_id, n)


def _fill(colls, n: int, progress: Progress, label: str) -> None:
    """n events already counted: in an applied batch, with their per-pair counts, written
    directly (counting 1M events through the aggregation first would take most of an hour
    on the embedded server, and is not what is measured)."""
    task = progress.add_task(label, total=n)
    counts: Counter = Counter()
    for start in range(0, n, 20_000):
        docs = _events(min(20_000, n - start), f"h{start}-{uuid.uuid4().hex[:6]}")
        for d in docs:
            d["AggBatch"] = HISTORY
            counts[(d["UserId"], d["EventName"])] += 1
        colls.events.insert_many(docs, ordered=False)
        progress.advance(task, len(docs))
    now = datetime.now(UTC)
    colls.agg_batches.insert_one({"_id": HISTORY, "state": "applied", "created": now, "events": n})
    colls.counts.insert_many(
        [
            {"UserId": u, "EventName": e, "EventCount": c, "Applied": [HISTORY], "UpdatedAt": now}
            for (u, e), c in counts.items()
        ]
    )


def run(
    settings: Settings, new_events: int = 10_000, histories: tuple[int, ...] = (10_000, 1_000_000), repeats: int = 3
) -> list[Figure]:
    client = mongo_client(settings.mongo)
    medians: dict[int, float] = {}
    samples: dict[int, list[float]] = {}
    with Progress() as progress:
        for history in histories:
            cfg = settings.model_copy(
                update={"mongo": settings.mongo.model_copy(update={"database": f"bench_agg_{history}"})}
            )
            colls = ensure_collections(client[cfg.mongo.database], cfg.batch)
            _fill(colls, history, progress, f"history of {history:,} events")
            medians[history], samples[history] = median_seconds(
                partial(update_event_counts, cfg), repeats, setup=partial(_new_batch, colls, new_events)
            )
            client.drop_database(cfg.mongo.database)
    client.close()
    small, large = histories
    ratio = medians[large] / medians[small]
    return [
        Figure(
            f"aggregate {new_events:,} new events, history {small:,}",
            medians[small],
            "s",
            samples=samples[small],
        ),
        Figure(
            f"aggregate {new_events:,} new events, history {large:,}",
            medians[large],
            "s",
            limit_name=f"same with history {small:,}",
            limit_value=medians[small],
            target="< 1.5x apart",
            met=ratio < 1.5,
            samples=samples[large],
        ),
    ]
