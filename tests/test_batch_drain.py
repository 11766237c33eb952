"""Drain and DAG against the real broker and MongoDB-protocol server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shopstream.adapters.kafka import ensure_topics
from shopstream.adapters.mongo import mongo_client
from shopstream.settings import Settings, get_settings
from shopstream_api.examples import USER_EVENT_EXAMPLE
from shopstream_batch import drain as drain_module
from shopstream_batch.aggregate import update_event_counts
from shopstream_batch.budget import Budget
from shopstream_batch.check import check_counts
from shopstream_batch.drain import DrainReport, Message, drain_user_events, store
from shopstream_batch.store import ensure_collections
from shopstream_stack import commands
from test_batch_properties import record
from test_faults import wait_for

pytestmark = pytest.mark.services


@pytest.fixture
def isolated(stack, settings):
    """Settings with a topic, consumer group and database of this test's own."""
    tag = uuid.uuid4().hex[:8]
    cfg = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"user_events_topic": f"UserEvents-{tag}"}),
            "mongo": settings.mongo.model_copy(update={"database": f"drain_{tag}"}),
            "batch": settings.batch.model_copy(update={"consumer_group": f"batch-{tag}", "batch_size": 7}),
        }
    )
    ensure_topics(cfg.kafka)
    yield cfg
    client = mongo_client(cfg.mongo)
    client.drop_database(cfg.mongo.database)
    client.close()


def produce(cfg, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    for i, v in enumerate(values):
        producer.send(cfg.kafka.user_events_topic, key=f"k{i % 5}".encode(), value=v)
    producer.flush()
    producer.close()


def committed_total(cfg) -> int:
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, group_id=cfg.batch.consumer_group)
    total = sum(
        consumer.committed(TopicPartition(cfg.kafka.user_events_topic, p)) or 0 for p in range(cfg.kafka.partitions)
    )
    consumer.close()
    return total


def db(cfg):
    return mongo_client(cfg.mongo)[cfg.mongo.database]


def test_drain_stores_dedupes_dead_letters_and_commits(isolated):
    cfg = isolated
    good = [record(f"d{i}", f"u{i % 4}", "PageVisited") for i in range(40)]
    bad = [b"{oops", json.dumps({"EventId": "z", "UserId": "u1"}).encode()]
    produce(cfg, good + good[:5] + bad)  # 5 duplicates: a client retry with the same key
    report = drain_user_events(cfg)
    assert (report.stored, report.duplicates, report.dead_lettered, report.remaining) == (40, 5, 2, 0)
    assert committed_total(cfg) == 47
    dead = {d["Reason"].split(":")[0] for d in db(cfg)[cfg.batch.dead_letter_collection].find()}
    assert dead == {"invalid JSON", "breaks the contract"}
    letter = db(cfg)[cfg.batch.dead_letter_collection].find_one({"Value": b"{oops"})
    assert letter["Topic"] == cfg.kafka.user_events_topic and letter["Offset"] >= 0
    again = drain_user_events(cfg)  # nothing new waits
    assert (again.stored, again.duplicates, again.batches) == (0, 0, 0)


def read_all(cfg, n: int) -> list[Message]:
    """The topic's first `n` records, however long the broker takes to hand them over."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, enable_auto_commit=False)
    tps = [TopicPartition(cfg.kafka.user_events_topic, p) for p in range(cfg.kafka.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    seen: list[Message] = []
    try:
        wait_for(
            f"{n} records",
            lambda: (
                seen.extend(
                    Message(m.topic, m.partition, m.offset, m.key, m.value)
                    for records in consumer.poll(timeout_ms=500).values()
                    for m in records
                )
                or len(seen) >= n
            ),
            120,
        )
    finally:
        consumer.close()
    return seen


def test_insert_without_commit_is_redelivered_and_stored_once(isolated):
    cfg = isolated
    produce(cfg, [record(f"r{i}", "u1", "AddedBasket") for i in range(12)])
    # a run that stored the records and died before committing its offsets:
    seen = read_all(cfg, 12)
    colls = ensure_collections(db(cfg), cfg.batch)
    store(colls, seen, DrainReport())
    report = drain_user_events(cfg)  # the next run gets them again
    assert (report.stored, report.duplicates) == (0, 12)
    assert colls.events.count_documents({}) == 12
    update_event_counts(cfg)
    assert colls.counts.find_one({"UserId": "u1", "EventName": "AddedBasket"})["EventCount"] == 12


class SlowStore:
    """The drain's `store`, with a clock of the test's own that only stored records move on,
    by `cost` seconds each: a MongoDB exactly as slow as the test says, on a busy machine or an
    idle one. Notes whether each batch of the current run ended past the run's deadline."""

    def __init__(self, cost: float) -> None:
        self.cost, self.offset = cost, 0.0
        self.budget: Budget | None = None
        self.late: list[bool] = []

    def clock(self) -> float:
        return self.offset

    def run_budget(self, seconds: float) -> Budget:
        self.budget, self.late = Budget(seconds, self.clock), []
        return self.budget

    def __call__(self, colls, messages, report, member=0) -> str:
        batch_id = store(colls, messages, report, member)
        self.offset += self.cost * len(messages)
        self.late.append(self.clock() > self.budget.deadline)
        return batch_id


def test_a_large_backlog_is_drained_run_by_run_each_within_its_budget(isolated, monkeypatch):
    """A run takes on only what fits in its budget, at the rate it measures, and says what it
    left; runs after it take the rest, and every record is stored once. The store is made slow
    on a clock of the test's own (50 ms a record: 150 s for the backlog, 20 s a run), so this
    holds on any machine, however busy, without a single timing."""
    budget_s, n = 20.0, 3000
    cfg = isolated.model_copy(update={"batch": isolated.batch.model_copy(update={"batch_size": 100})})
    produce(cfg, [record(f"b{i}", f"u{i % 9}", "PageVisited") for i in range(n)])
    slow = SlowStore(cost=0.05)
    monkeypatch.setattr(drain_module, "store", slow)
    runs: list[DrainReport] = []
    while not runs or not runs[-1].done:
        assert len(runs) < 60, [r.as_dict() for r in runs]
        runs.append(drain_user_events(cfg, budget=slow.run_budget(budget_s)))
        last = runs[-1]
        # what it left is counted: never "nothing remains" for a run that did not get to it
        assert last.remaining_known and sum(r.stored for r in runs) + last.remaining == n, last
        assert not any(slow.late[1:]), f"a batch after the first ended past the run's deadline: {slow.late}"
    assert runs[0].remaining > 0 and len(runs) > 1
    assert sum(r.stored for r in runs) == n and sum(r.duplicates for r in runs) == 0
    assert committed_total(cfg) == n and db(cfg)[cfg.batch.events_collection].count_documents({}) == n


def test_a_drain_that_gets_no_partitions_reports_every_waiting_record(isolated):
    """A budget spent before the group assigned anything (here: none at all) leaves every
    record waiting, and the report says so, partition by partition."""
    cfg = isolated
    produce(cfg, [record(f"n{i}", "u1", "PageVisited") for i in range(30)])
    report = drain_user_events(cfg, budget=Budget(0))
    assert (report.stored, report.remaining, report.remaining_known, report.done) == (0, 30, True, False), report
    assert report.unassigned == list(range(cfg.kafka.partitions))
    after = drain_user_events(cfg)
    assert (after.stored, after.remaining, after.unassigned, after.done) == (30, 0, [], True), after


def test_partitions_another_member_holds_are_counted_as_remaining(isolated):
    """Another consumer of the group (a dynamic member) holds some partitions: the drain
    stores what it was given and counts the rest, from the group's committed offsets. The
    drain, a static member, ends without a LeaveGroup, so no rebalance is under way when
    the other consumer leaves, and the drain's next run takes its place with every
    partition and stores the rest: every record once."""
    cfg = isolated
    topic, parts = cfg.kafka.user_events_topic, cfg.kafka.partitions
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    for i in range(20 * parts):
        producer.send(topic, value=record(f"h{i}", "u1", "AddedBasket"), partition=i % parts)
    producer.flush()
    producer.close()
    held: set[int] = set()
    stop = threading.Event()

    def member() -> None:  # joins the group and polls, but never commits
        rival = KafkaConsumer(
            topic,
            bootstrap_servers=cfg.kafka.bootstrap_servers,
            group_id=cfg.batch.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        try:
            while not stop.is_set():
                rival.poll(timeout_ms=200)
                held.clear()
                held.update(tp.partition for tp in rival.assignment())
        finally:
            rival.close()

    thread = threading.Thread(target=member, daemon=True)
    thread.start()
    try:
        wait_for("the other member to hold every partition", lambda: len(held) == parts, 120)
        report = drain_user_events(
            cfg.model_copy(update={"batch": cfg.batch.model_copy(update={"max_seconds": 120.0})})
        )
    finally:
        stop.set()
        thread.join(60)
    # what the run left, on its partitions and the other member's, is all that is not committed
    # (a rebalance of the rival's own, which kafka-python can start twice in a row on the
    # embedded broker, may fail a commit and end the run early: its batch comes back below)
    committed = committed_total(cfg)
    assert report.unassigned and not report.done, report
    assert report.remaining == 20 * parts - committed and report.remaining_known, (committed, report)
    assert committed <= report.stored <= 20 * (parts - len(report.unassigned)), (committed, report)
    rest = drain_user_events(cfg)
    assert rest.unassigned == [] and rest.done, rest
    # every record stored once; what was stored but not committed is seen again, as duplicates
    assert report.stored + rest.stored == 20 * parts and rest.duplicates == report.stored - committed, rest
    assert committed_total(cfg) == 20 * parts


BACKLOG = 1000  # records waiting for the slow drains below
SLOW_DRAIN = """
import json, sys, time
from shopstream_batch import drain

stored = drain.store

def store_then_stall(colls, batch, report, member):  # each batch stored, then a stall before its commit
    batch_id = stored(colls, batch, report, member)
    print("stored", len(batch), flush=True)
    time.sleep(float(sys.argv[1]))
    return batch_id

drain.store = store_then_stall
print("report", json.dumps(drain.drain_user_events().as_dict()), flush=True)
"""


def slow_drain_started(isolated, stall_s: float) -> tuple[Settings, subprocess.Popen, int]:
    """BACKLOG records waiting, and a drain in a process of its own whose batches each stall
    `stall_s` before their commit, once it has stored its first: (settings, process, that
    batch's size)."""
    cfg = isolated.model_copy(update={"batch": isolated.batch.model_copy(update={"batch_size": 100})})
    produce(cfg, [record(f"s{i}", f"u{i % 7}", "PageVisited") for i in range(BACKLOG)])
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_DRAIN, str(stall_s)],
        env={**os.environ, **cfg.to_env()},
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("stored"):
        proc.kill()
        raise AssertionError(f"the slow drain stopped before storing a batch (exit {proc.wait(60)})")
    return cfg, proc, int(line.split()[1])


def drained(cfg, first: DrainReport) -> list[DrainReport]:
    """`first` and the runs after it, until one reports nothing left."""
    runs = [first]
    while not runs[-1].done:
        assert len(runs) < 20, [r.as_dict() for r in runs]
        runs.append(drain_user_events(cfg))
    return runs


def test_a_drain_killed_with_kill_9_holds_up_no_later_run(isolated):
    """A drain killed mid-run (no LeaveGroup, its batch stored but not committed): the next
    run of the same member takes its place in the group at once, with every partition, and
    the runs after it store every record once (the killed run's batch comes back as counted
    duplicates). A dynamic member would stay in the group, and on a broker that never
    expires members no later run would get a partition."""
    cfg, killed, first_stored = slow_drain_started(isolated, 600)
    killed.kill()
    killed.wait(60)
    first = drain_user_events(cfg)
    assert first.unassigned == [] and first.stored > 0, first
    runs = drained(cfg, first)
    assert first_stored + sum(r.stored for r in runs) == BACKLOG, [r.as_dict() for r in runs]
    assert sum(r.duplicates for r in runs) == first_stored, [r.as_dict() for r in runs]
    assert committed_total(cfg) == BACKLOG
    assert db(cfg)[cfg.batch.events_collection].count_documents({}) == BACKLOG


def test_dag_runs_through_airflow_and_counts_what_the_api_accepted(airflow_db, isolated, monkeypatch):
    """API -> Kafka -> DAG (dag.test) -> MongoDB, on a topic, group and database of its own."""
    from conftest import ServerThread
    from shopstream_api.main import create_app

    cfg = isolated.model_copy(update={"batch": isolated.batch.model_copy(update={"batch_size": 5000})})
    users = [f"dag-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    names = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
    with ServerThread(create_app(cfg)) as api:
        for i in range(30):
            body = {**USER_EVENT_EXAMPLE, "UserId": users[i % 3], "EventName": names[i % 2]}
            assert httpx.put(f"{api.url}/SendEvent", json=body).status_code == 200
        # a retry with the same Idempotency-Key is stored and counted once
        for _ in range(2):
            assert (
                httpx.put(
                    f"{api.url}/SendEvent",
                    json={**USER_EVENT_EXAMPLE, "UserId": users[0]},
                    headers={"Idempotency-Key": f"retry-{users[0]}"},
                ).status_code
                == 200
            )
    for key, value in cfg.to_env().items():  # what the scheduler hands its task processes
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag()
        assert not bag.import_errors, bag.import_errors
        run = bag.get_dag("user_events_batch").test()
        assert run.state == "success"
    finally:
        get_settings.cache_clear()
    expected = Counter((users[i % 3], names[i % 2]) for i in range(30))
    expected[(users[0], USER_EVENT_EXAMPLE["EventName"])] += 1
    counts = db(cfg)[cfg.batch.counts_collection]
    got = {(d["UserId"], d["EventName"]): d["EventCount"] for d in counts.find()}
    assert got == dict(expected)
    # the sessions task ran after the aggregation: every counted event is in its session
    sessions = list(db(cfg)[cfg.batch.sessions_collection].find())
    assert sum(d["Events"] for d in sessions) == 31
    assert {d["_id"] for d in sessions} == {USER_EVENT_EXAMPLE["SessionId"]}
    # and `invoke batch-check`'s independent recount agrees, and notices a count that is off
    result = check_counts(cfg)
    assert result.ok and result.lag == 0 and result.uncounted == 0 and result.distinct_events == 31, result
    assert commands.batch_check(cfg)  # as `invoke batch-check` runs it: `python -m shopstream_batch check`
    pair = {"UserId": users[0], "EventName": "PageVisited"}
    counts.update_one(pair, {"$inc": {"EventCount": 1}})
    broken = check_counts(cfg)
    assert not broken.ok and broken.mismatches == {
        f"{users[0]}/PageVisited": (got[(users[0], "PageVisited")], got[(users[0], "PageVisited")] + 1)
    }
    assert not commands.batch_check(cfg)


def test_a_second_run_of_the_same_member_fences_the_first_and_nothing_is_lost(isolated):
    """Two runs of drain member 0 at once (a manual drain beside the DAG's, say): the newer
    takes the member's place, the older stops at its next poll or commit and reports what it
    did, and every record is stored once; the older run's uncommitted batch comes back to
    the newer as counted duplicates."""
    cfg, older, _ = slow_drain_started(isolated, 1.0)
    try:
        newer = drain_user_events(cfg)
        out, _ = older.communicate(timeout=300)
    finally:
        older.kill()
    assert older.returncode == 0, out
    reports = [json.loads(row.split(" ", 1)[1]) for row in out.splitlines() if row.startswith("report ")]
    assert len(reports) == 1 and not reports[0]["done"], out
    runs = drained(cfg, newer)
    assert reports[0]["stored"] + sum(r.stored for r in runs) == BACKLOG, (reports[0], [r.as_dict() for r in runs])
    assert committed_total(cfg) == BACKLOG
    assert db(cfg)[cfg.batch.events_collection].count_documents({}) == BACKLOG
