"""Property tests: drain + aggregate against the real MongoDB-protocol server, compared with a model.

Hypothesis draws sequences of operations: deliveries of message batches (with
duplicate records, redelivered batches — an insert whose offset commit never
happened — and bad records), aggregation runs, runs whose time budget runs out
after a few batches, runs that crash after claiming or after merging, two runs
overlapping, drains that die before closing the batch their events went in (before or
after an aggregation abandons it), a frozen drain that inserts into a batch abandoned under
it, and events stored uncounted (by something else than the drain). After every sequence,
a new drain run's start and aggregation runs until nothing is left uncounted, the counts
must equal the number of distinct stored events per (UserId, EventName).
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shopstream.adapters.mongo import mongo_client
from shopstream_batch.aggregate import AggregateReport, apply, claim, finish, uncounted, update_event_counts
from shopstream_batch.batches import abandon_left_open, close_batch, not_counted, open_batch
from shopstream_batch.budget import Budget
from shopstream_batch.drain import DrainReport, Message, split, store
from shopstream_batch.store import ensure_collections, insert_new

pytestmark = pytest.mark.services

USERS = ["u1", "u2", "u3"]
NAMES = ["PageVisited", "AddedBasket", "CheckedProductReviews"]


def record(event_id: str, user: str, name: str) -> bytes:
    return json.dumps(
        {
            "EventId": event_id,
            "UserId": user,
            "SessionId": "s1",
            "EventName": name,
            "TimeStamp": "2026-11-22T10:00:00Z",
            "IngestedAt": "2026-11-22T10:00:01Z",
            "Attributes": {"ProductId": "p1", "Price": 10.0, "Discount": 1.0},
        }
    ).encode()


# a small pool, so the same EventId is drawn again and again (client retries, redeliveries)
POOL = [(f"e{i}", USERS[i % 3], NAMES[(i // 3) % 3]) for i in range(24)]
BAD = [b"{not json", b"", json.dumps({"EventId": "x", "UserId": "u1"}).encode()]

messages = st.lists(
    st.one_of(st.sampled_from(POOL).map(lambda e: ("ok", e)), st.sampled_from(BAD).map(lambda b: ("bad", b))),
    min_size=1,
    max_size=12,
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), messages),
        st.tuples(st.just("deliver_uncounted"), messages),
        st.tuples(st.just("drain_dies_storing"), messages),
        st.tuples(st.just("drain_dies_abandoned"), messages),
        st.tuples(st.just("frozen_drain"), messages),
        st.tuples(st.just("slow_drain"), messages),
        st.just(("redeliver",)),
        st.just(("aggregate",)),
        st.tuples(st.just("aggregate_until"), st.integers(min_value=1, max_value=40)),
        st.tuples(st.just("crash_after_claim"), st.sampled_from(["range", "ids"])),
        st.tuples(st.just("crash_after_merge"), st.sampled_from(["range", "ids"])),
        st.just(("crash_while_claiming",)),
        st.just(("overlap",)),
    ),
    min_size=1,
    max_size=16,
)


@pytest.fixture(scope="module")
def mongo(stack, settings):
    client = mongo_client(settings.mongo)
    yield client
    client.close()


def claim_args(colls, how: str, size: int) -> dict:
    """A batch of the `size` oldest uncounted events as a run cuts it (by when they were
    stored), or `size` of them by `_id` lists (events without a StoredAt)."""
    times, _ = uncounted(colls)
    if how == "range" and times:
        return {"limit": size, "upto": times[min(size, len(times)) - 1]}
    return {"limit": size}


def crash_while_claiming(colls, size: int) -> None:
    """What a run that died in the middle of its claim leaves: the batch document, and part
    of the batch's events claimed."""
    args = claim_args(colls, "range", size)
    if "upto" not in args:
        return
    batch_id = f"crashed-{uuid.uuid4().hex[:8]}"
    colls.agg_batches.insert_one(
        {"_id": batch_id, "state": "claiming", "created": datetime.now(UTC), "token": None, **args}
    )
    some = [d["_id"] for d in colls.events.find({"AggBatch": None, "StoredAt": {"$lte": args["upto"]}}).limit(2)]
    colls.events.update_many({"_id": {"$in": some}}, {"$set": {"AggBatch": batch_id}})


def ticking():
    """A clock that moves on by one second each time it is read: a budget of n seconds runs
    out after n readings, wherever the run is then (between two batches, as a real one)."""
    now = itertools.count()
    return lambda: float(next(now))


@hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(ops=operations)
def test_counts_equal_distinct_stored_events_after_any_sequence(mongo, settings, ops):
    cfg = settings.model_copy(
        update={  # batches of 5 events: a run counts a backlog batch after batch
            "mongo": settings.mongo.model_copy(update={"database": f"prop_{uuid.uuid4().hex[:10]}"}),
            "batch": settings.batch.model_copy(update={"aggregate_batch_events": 5}),
        }
    )
    # an aggregation that takes any batch still being stored for a dead drain's
    abandoning = cfg.model_copy(
        update={"batch": cfg.batch.model_copy(update={"max_seconds": 1e-3, "overrun_seconds": 1e-3})}
    )
    colls = ensure_collections(mongo[cfg.mongo.database], cfg.batch)
    stored: set[tuple[str, str, str]] = set()  # the model: distinct valid events stored
    offset, last_batch = 0, None

    def new_messages(drawn) -> list[Message]:
        nonlocal offset
        batch = []
        for kind, item in drawn:
            value = record(*item) if kind == "ok" else item
            batch.append(Message("UserEvents", 0, offset, b"k", value))
            offset += 1
            if kind == "ok":
                stored.add(item)
        return batch

    def insert_into(batch_id: str | None, drawn) -> int:
        """A drain's insert into `batch_id` (None: uncounted), without its batch's opening or closing."""
        docs, _ = split(new_messages(drawn), batch_id)
        return insert_new(colls.events, docs)[0]

    try:
        for op in ops:
            if op[0] in ("deliver", "redeliver"):
                if op[0] == "redeliver":
                    if last_batch is None:
                        continue
                    batch = last_batch  # the same Kafka records again: the earlier commit never happened
                else:
                    batch = last_batch = new_messages(op[1])
                store(colls, batch, DrainReport())
            elif op[0] == "deliver_uncounted":
                insert_into(None, op[1])
            elif op[0] == "drain_dies_storing":  # killed between its insert and its batch's closing
                insert_into(open_batch(colls), op[1])
            elif op[0] == "drain_dies_abandoned":  # frozen long enough to be abandoned, then killed after inserting
                batch_id = open_batch(colls)
                update_event_counts(abandoning)
                insert_into(batch_id, op[1])
            elif op[0] == "frozen_drain":  # its batch abandoned under it: it finds out when it closes it
                batch_id = open_batch(colls)
                update_event_counts(abandoning)
                assert not close_batch(colls, batch_id, insert_into(batch_id, op[1]))
            elif op[0] == "slow_drain":  # an aggregation runs while it stores: its batch is left to it
                batch_id = open_batch(colls)
                update_event_counts(cfg)
                assert close_batch(colls, batch_id, insert_into(batch_id, op[1]))
            elif op[0] == "aggregate":
                update_event_counts(cfg)
            elif op[0] == "aggregate_until":  # a run whose budget runs out after `ticks` looks at the clock
                update_event_counts(cfg, budget=Budget(op[1], ticking()))
            elif op[0] == "crash_after_claim":
                claim(colls, **claim_args(colls, op[1], cfg.batch.aggregate_batch_events))
            elif op[0] == "crash_after_merge":  # merged, never marked applied
                apply(colls, claim(colls, **claim_args(colls, op[1], cfg.batch.aggregate_batch_events)))
            elif op[0] == "crash_while_claiming":
                crash_while_claiming(colls, cfg.batch.aggregate_batch_events)
            elif op[0] == "overlap":
                threads = [threading.Thread(target=update_event_counts, args=(cfg,)) for _ in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        abandon_left_open(colls, 0)  # the next drain run: what earlier runs left open is theirs no more
        runs = [update_event_counts(cfg)]
        while runs[-1].remaining:  # a run takes what fits in its budget; the next ones the rest
            assert len(runs) < 20, [r.as_dict() for r in runs]
            runs.append(update_event_counts(cfg))
        expected = Counter((user, name) for _, user, name in stored)
        got = {(d["UserId"], d["EventName"]): d["EventCount"] for d in colls.counts.find()}
        assert got == dict(expected)
        assert colls.events.count_documents({}) == len(stored)
        assert not_counted(colls) == 0
    finally:
        mongo.drop_database(cfg.mongo.database)


def test_one_run_counts_many_small_drain_batches_that_fit_its_budget(mongo, settings):
    """Small drain batches (a trickle of events) are judged by their own size: a run whose
    first batch held 2 events must not think a batch of 2 more needs as long as a claim of
    thousands, and leave every other batch to the next runs."""
    cfg = settings.model_copy(update={"mongo": settings.mongo.model_copy(update={"database": "trickle"})})
    colls = ensure_collections(mongo[cfg.mongo.database], cfg.batch)
    for b in range(5):
        messages = [record(f"k{b}-{i}", USERS[i], "PageVisited") for i in range(2)]
        store(colls, [Message("UserEvents", 0, b * 2 + i, b"k", m) for i, m in enumerate(messages)], DrainReport())
    report = update_event_counts(cfg, budget=Budget(60, ticking()))  # every step takes 1 s by this clock
    assert (report.batches, report.events_counted, report.remaining) == (5, 10, 0), report.as_dict()
    mongo.drop_database(cfg.mongo.database)


def test_a_batch_applied_twice_is_counted_once(mongo, settings):
    cfg = settings.model_copy(update={"mongo": settings.mongo.model_copy(update={"database": "twice"})})
    colls = ensure_collections(mongo[cfg.mongo.database], cfg.batch)
    batch_id = store(
        colls,
        [Message("UserEvents", 0, i, b"k", record(f"t{i}", "u1", "PageVisited")) for i in range(5)],
        DrainReport(),
    )
    apply(colls, batch_id)
    report = AggregateReport()
    finish(colls, {"_id": batch_id, "state": "claimed"}, report)  # the retry
    assert colls.counts.find_one({"UserId": "u1"})["EventCount"] == 5
    mongo.drop_database(cfg.mongo.database)


def test_a_reader_sees_every_pair_whole_while_batches_are_applied(mongo, settings):
    """The audit and the dashboard read the counts while the aggregation runs: each pair
    document must be there, with a count that only grows, at every read."""
    import threading

    cfg = settings.model_copy(update={"mongo": settings.mongo.model_copy(update={"database": "whole"})})
    colls = ensure_collections(mongo[cfg.mongo.database], cfg.batch)
    users, rounds = [f"u{i}" for i in range(40)], 12

    def deliver(r: int) -> str:
        messages = [record(f"r{r}-{u}", u, "PageVisited") for u in users]
        return store(
            colls, [Message("UserEvents", 0, r * 100 + i, b"k", m) for i, m in enumerate(messages)], DrainReport()
        )

    apply(colls, deliver(0))
    done, seen, reads = threading.Event(), {u: 1 for u in users}, 0

    def aggregate() -> None:
        try:
            for r in range(1, rounds):
                apply(colls, deliver(r))
        finally:
            done.set()

    writer = threading.Thread(target=aggregate)
    writer.start()
    try:
        while not done.is_set() or reads == 0:
            counts = {d["UserId"]: d["EventCount"] for d in colls.counts.find({}, {"UserId": 1, "EventCount": 1})}
            reads += 1
            assert sorted(counts) == sorted(users), f"read {reads}: pairs missing: {set(users) - set(counts)}"
            for u, n in counts.items():
                assert n >= seen[u], f"read {reads}: {u} went from {seen[u]} to {n}"
                seen[u] = n
    finally:
        writer.join()
    assert {d["UserId"]: d["EventCount"] for d in colls.counts.find()} == {u: rounds for u in users}
    mongo.drop_database(cfg.mongo.database)
