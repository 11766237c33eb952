"""Fault tests (issue 7): real servers stopped under load, garbage written straight into
the topics. Whatever goes wrong, nothing acknowledged is lost and nothing is counted twice.

- The broker stops while clients post: they get 503 with Retry-After (never a 2xx for a
  record the broker did not store), the API recovers when the broker is back, and every
  acknowledged EventId is in Kafka, once unless the client itself retried it.
- MongoDB stops during a DAG run (while the drain stores, or while the aggregation
  counts): the run fails; once MongoDB is back the next run completes and the counts are
  exact.
- MongoDB killed (-9) right after the drain committed a batch's offsets, again and again
  (issue 13): every record of every committed batch is there after the restart, because
  the drain's writes are journaled (`j: true`) before the commit.
- Bytes that are not records, in both topics: the drain dead-letters them with a reason
  and the streaming job quarantines them with a reason; both keep going, and every valid
  record around them is stored once.
- The edges of those promises: a request answered 503 is not published later; a lease left
  by an aggregation that died does not hold up the next run; a timestamp whose offset takes
  it past the calendar is a contract breaker (dead letter, quarantine, 422), not a crash.

The broker and MongoDB that get stopped are this module's own (free ports, own folder),
so the session's stack, and the tests after these, never see an outage.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import ValidationError

from conftest import ServerThread, job_settings, make_settings, read_from
from shopstream import locations
from shopstream.adapters.kafka import ensure_topics
from shopstream.adapters.mongo import collections, mongo_client
from shopstream.contracts import PurchaseRecord, UserEventRecord
from shopstream.settings import Settings, get_settings
from shopstream_api.examples import PURCHASE_EXAMPLE, USER_EVENT_EXAMPLE
from shopstream_api.main import create_app
from shopstream_batch.aggregate import LEASE, update_event_counts
from shopstream_batch.check import check_counts
from shopstream_batch.drain import drain_user_events
from shopstream_stack.kafka import KafkaBroker
from shopstream_stack.mongo import MongoServer
from test_batch_properties import record

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]  # each takes 10-90 s; this only stops a hang


# -- a broker and a MongoDB of this module's own, to stop and start ---------------------------
@pytest.fixture(scope="module")
def own():
    """Kafka and MongoDB on free ports in a folder of their own; the API answers 503 after 2 s."""
    run_dir = Path(tempfile.mkdtemp(prefix="shopstream-faults-"))
    run_dir.chmod(0o755)  # as the session's: servers that drop root must reach it
    cfg = make_settings(run_dir / "run")
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"publish_timeout_s": 2.0})})
    kafka, mongo = KafkaBroker(cfg), MongoServer(cfg)
    try:
        kafka.start()
        mongo.start()
        yield SimpleNamespace(settings=cfg, kafka=kafka, mongo=mongo)
    finally:
        mongo.stop()
        kafka.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def back_up(service) -> None:
    """Start a stopped server again (idempotent; waits until it answers a real request)."""
    service.start()
    assert service.healthy(), f"{service.name} did not come back"


def scoped(cfg: Settings, name: str, **batch) -> Settings:
    """A UserEvents topic, consumer group and database of this test's own."""
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    scoped_cfg = cfg.model_copy(
        update={
            "kafka": cfg.kafka.model_copy(update={"user_events_topic": f"UserEvents-{tag}"}),
            "mongo": cfg.mongo.model_copy(update={"database": f"faults_{tag}".replace("-", "_")}),
            "batch": cfg.batch.model_copy(update={"consumer_group": f"batch-{tag}", **batch}),
        }
    )
    ensure_topics(scoped_cfg.kafka)
    return scoped_cfg


def committed_total(cfg: Settings) -> int:
    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers, group_id=cfg.batch.consumer_group, enable_auto_commit=False
    )
    try:
        return sum(
            consumer.committed(TopicPartition(cfg.kafka.user_events_topic, p)) or 0 for p in range(cfg.kafka.partitions)
        )
    finally:
        consumer.close()


def produce(cfg: Settings, topic: str, records: list[tuple[bytes | None, bytes | None, int | None]]) -> list:
    """Send (key, value, partition) records with acks=all; returns their RecordMetadata, in order."""
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=k, value=v, partition=p) for k, v, p in records]
        producer.flush(60)
        return [f.get(30) for f in futures]
    finally:
        producer.close()


# == 1. the broker stops while the API is under load ===========================================
@dataclass
class Attempt:
    key: str
    t0: float
    t1: float
    status: int
    retry_after: str | None
    event_ids: list[str]


class Client(threading.Thread):
    """A shop client posting without pause, alternately one event and 1-3 purchases.

    On 503 it waits Retry-After and sends the same request again: with `keyed`, under the
    same Idempotency-Key (so a copy carries the same EventId); without, as a new request.
    Each request is retried until it is acknowledged; after `stop`, it finishes the one it
    is on, and gives up only at `give_up`.
    """

    def __init__(self, name: str, keyed: bool) -> None:
        super().__init__(daemon=True, name=name)
        self.name_, self.keyed, self.url = name, keyed, ""
        self.stop, self.give_up = threading.Event(), threading.Event()
        self.attempts: list[Attempt] = []
        self.acked: dict[str, list[str]] = {}  # request -> its EventIds
        self.unexpected: list[str] = []
        self.unfinished: list[str] = []

    def request(self, i: int) -> tuple[str, str, object]:
        user = f"{self.name_}-u{i % 5}"
        if i % 2 == 0:
            return "PUT", "/SendEvent", {**USER_EVENT_EXAMPLE, "UserId": user, "SessionId": f"s-{self.name_}-{i}"}
        return (
            "POST",
            "/PurchasedItems",
            [{**PURCHASE_EXAMPLE, "UserId": user, "OrderId": f"o-{self.name_}-{i}-{n}"} for n in range(1 + i % 3)],
        )

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            i = 0
            while not self.stop.is_set():
                method, path, body = self.request(i)
                request_id = f"{self.name_}-{i}"
                headers = {"Idempotency-Key": request_id} if self.keyed else {}
                while True:
                    t0 = time.monotonic()
                    try:
                        r = http.request(method, path, json=body, headers=headers)
                    except httpx.HTTPError as e:  # the API itself must stay up
                        self.unexpected.append(f"{request_id}: {e!r}")
                        return
                    t1 = time.monotonic()
                    ids = (
                        ([r.json()["EventId"]] if path == "/SendEvent" else r.json()["EventIds"])
                        if r.status_code == 200
                        else []
                    )
                    self.attempts.append(Attempt(request_id, t0, t1, r.status_code, r.headers.get("Retry-After"), ids))
                    if r.status_code == 200:
                        self.acked[request_id] = ids
                        break
                    if r.status_code != 503:
                        self.unexpected.append(f"{request_id}: {r.status_code} {r.text[:200]}")
                        return
                    if self.give_up.is_set():
                        self.unfinished.append(request_id)
                        return
                    time.sleep(float(r.headers.get("Retry-After") or 1))
                i += 1


def wait_for(what: str, check, timeout_s: float, explain=None) -> float:
    """Poll `check` until true; on timeout fail, saying `what` and, if given, what `explain()` finds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {explain()}" if explain else ""))
        time.sleep(0.05)
    return time.monotonic()


def test_broker_stopped_under_load_gives_503_then_every_acknowledged_record_is_in_kafka(own):
    cfg, broker = own.settings, own.kafka
    clients = [Client(f"c{n}", keyed=n % 2 == 0) for n in range(4)]
    with ServerThread(create_app(cfg)) as api:
        for c in clients:
            c.url = api.url
            c.start()
        try:
            all_attempts = lambda: [a for c in clients for a in c.attempts]  # noqa: E731
            wait_for("load to flow", lambda: sum(a.status == 200 for a in all_attempts()) >= 60, 30)
            stopping = time.monotonic()
            broker.stop()  # SIGTERM, as an orchestrator stops it; the API is mid-load
            down = time.monotonic()
            # long enough for requests to start and end while the broker is surely away
            wait_for(
                "503s while the broker is down",
                lambda: sum(a.status == 503 and a.t0 > down for a in all_attempts()) >= 8,
                60,
            )
            time.sleep(1)
            restarting = time.monotonic()
            broker.start()
            up = time.monotonic()
            recovered = wait_for(
                "a 2xx after the broker is back", lambda: any(a.status == 200 and a.t0 > up for a in all_attempts()), 60
            )
            time.sleep(2)  # the load goes on a little after the recovery
        finally:
            for c in clients:
                c.stop.set()
            deadline = time.monotonic() + 45
            for c in clients:
                c.join(max(0.1, deadline - time.monotonic()))
            for c in clients:
                c.give_up.set()
                c.join(10)
            back_up(broker)
        assert httpx.get(f"{api.url}/readyz", timeout=10).status_code == 200

    attempts = [a for c in clients for a in c.attempts]
    assert not [u for c in clients for u in c.unexpected], [u for c in clients for u in c.unexpected]
    assert not any(c.is_alive() for c in clients)
    assert not [u for c in clients for u in c.unfinished], "requests never acknowledged after the recovery"
    # while the broker was away, from a request's start to its answer: 503, never a 2xx
    outage = [a for a in attempts if a.t0 > down and a.t1 < restarting]
    assert outage and {a.status for a in outage} == {503}, Counter(a.status for a in outage)
    assert {a.retry_after for a in attempts if a.status == 503} == {"1"}
    assert any(a.status == 200 and a.t1 < down for a in attempts)
    assert recovered - up < 30, f"the API took {recovered - up:.1f} s to recover"

    # What Kafka holds once the API's journal checks are through. The embedded broker snapshots
    # on SIGTERM but goes on acknowledging produce requests until it exits, and forgets those on
    # restart: the API reads every acknowledged record back and publishes the forgotten ones again.
    acked = {eid: (c.keyed, key) for c in clients for key, ids in c.acked.items() for eid in ids}
    stored: Counter[str] = Counter()

    def all_in_kafka() -> bool:
        stored.clear()
        for topic, model in (
            (cfg.kafka.user_events_topic, UserEventRecord),
            (cfg.kafka.purchases_topic, PurchaseRecord),
        ):
            for m in read_from(cfg, topic):
                rec = model.model_validate_json(m.value)
                assert m.key == rec.UserId.encode()
                stored[rec.EventId] += 1
        return set(acked) <= set(stored)

    deadline = time.monotonic() + 60
    while not all_in_kafka() and time.monotonic() < deadline:
        time.sleep(0.5)
    retried = {a.key for a in attempts if a.status == 503}
    assert len(acked) > 100
    during_stop = {eid for a in attempts if a.status == 200 and a.t1 > stopping and a.t0 < down for eid in a.event_ids}
    lost = sorted(set(acked) - set(stored))
    assert not lost, f"{len(lost)} acknowledged record(s) not in Kafka, e.g. {lost[:5]}"
    # nothing doubled: a record is in Kafka more than once only when its client sent it again
    # under the same Idempotency-Key (a retry after a 503; the stores keep one copy of an EventId)
    # (or when the broker forgot it and the API published it again)
    doubled = {
        eid: n
        for eid, n in stored.items()
        if n > 1 and not (eid in acked and acked[eid][1] in retried and acked[eid][0]) and eid not in during_stop
    }
    assert not doubled, f"records in Kafka more than once though sent once: {list(doubled.items())[:5]}"
    print(
        f"broker down {restarting - down:.1f} s, recovered {recovered - up:.1f} s after its restart; "
        f"{Counter(a.status for a in attempts)}, {len(acked)} acknowledged, {len(stored)} EventIds in Kafka, "
        f"{sum(n > 1 for n in stored.values())} of them twice (client retries, records published again); "
        f"{len(during_stop)} acknowledged while the broker was being stopped"
    )
    # the outage really was under load, and mid-request for some
    assert len(retried) >= 4 and len(outage) >= 8


def test_a_request_answered_503_while_the_broker_is_away_is_not_published_later(own):
    """The API documents 503 as "nothing to undo": a client that gives up, or retries
    without an Idempotency-Key, must not find the refused record published once the
    broker is back (a retry without a key would otherwise be a second event)."""
    cfg, broker = own.settings, own.kafka
    run = uuid.uuid4().hex[:8]
    with ServerThread(create_app(cfg)) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        assert http.put("/SendEvent", json={**USER_EVENT_EXAMPLE, "SessionId": f"before-{run}"}).status_code == 200
        broker.stop()
        try:
            refused = http.put("/SendEvent", json={**USER_EVENT_EXAMPLE, "SessionId": f"refused-{run}"})
            assert refused.status_code == 503, refused.text
            refused_p = http.post("/PurchasedItems", json=[{**PURCHASE_EXAMPLE, "OrderId": f"refused-{run}"}])
            assert refused_p.status_code == 503, refused_p.text
        finally:
            back_up(broker)
        deadline = time.monotonic() + 30
        while http.put("/SendEvent", json={**USER_EVENT_EXAMPLE, "SessionId": f"after-{run}"}).status_code != 200:
            assert time.monotonic() < deadline, "the API did not recover"
            time.sleep(0.5)
        time.sleep(3)  # time for anything the producer still held to arrive
    sessions = {json.loads(m.value)["SessionId"] for m in read_from(cfg, cfg.kafka.user_events_topic)}
    orders = {json.loads(m.value)["OrderId"] for m in read_from(cfg, cfg.kafka.purchases_topic)}
    assert {f"before-{run}", f"after-{run}"} <= sessions
    assert f"refused-{run}" not in sessions, "a SendEvent answered 503 was published after the broker came back"
    assert f"refused-{run}" not in orders, "a purchase answered 503 was published after the broker came back"


# == 2. MongoDB stops during a DAG run ==========================================================
def run_dag(cfg: Settings, monkeypatch) -> tuple[str, dict[str, tuple[str, int]]]:
    """One run of the real DAG through `dag.test()`, its tasks reading `cfg` from the
    SHOPSTREAM_* environment as under the scheduler. Only the retry delay is shortened
    (the DAG's 2 retries are kept); returns the run's state and {task: (state, tries)}."""
    from airflow.dag_processing.dagbag import DagBag

    for key, value in cfg.to_env().items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        bag = DagBag()
        assert not bag.import_errors, bag.import_errors
        dag = bag.get_dag("user_events_batch")
        assert all(t.retries == 2 for t in dag.tasks)
        for t in dag.tasks:
            t.retry_delay = timedelta(seconds=1)
        run = dag.test()
        tasks = {ti.task_id: (str(ti.state), ti.try_number) for ti in run.get_task_instances()}
        return str(run.state), tasks
    finally:
        get_settings.cache_clear()


class StopWhen(threading.Thread):
    """Stops a server the moment `condition()` (polled every 20 ms) is true."""

    def __init__(self, service, condition, timeout_s: float = 90) -> None:
        super().__init__(daemon=True)
        self.service, self.condition, self.timeout_s = service, condition, timeout_s
        self.fired: float | None = None
        self.cancel = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.cancel.is_set() and time.monotonic() < deadline:
            try:
                hit = self.condition()
            except Exception:  # noqa: BLE001 - not there yet (collection missing, ...)
                hit = False
            if hit:
                self.fired = time.monotonic()
                self.service.stop()
                return
            time.sleep(0.02)


def run_dag_stopping_mongo(own, cfg: Settings, monkeypatch, when) -> tuple[str, dict]:
    """One DAG run during which MongoDB is stopped as soon as `when(database)` holds; MongoDB
    is back up when this returns."""
    watcher = mongo_client(cfg.mongo, timeout_ms=1000)
    stopper = StopWhen(own.mongo, lambda: when(watcher[cfg.mongo.database]))
    stopper.start()
    try:
        state, tasks = run_dag(cfg, monkeypatch)
    finally:
        stopper.cancel.set()
        stopper.join(30)
        watcher.close()
        back_up(own.mongo)
    assert stopper.fired, "MongoDB was not stopped during the run"
    return state, tasks


# a batch an aggregation run has taken and not applied yet (a drain closes its batches
# without a token; the run stamps its own on each it works on)
AGGREGATION_AT_WORK = {"state": {"$in": ["claiming", "claimed"]}, "token": {"$ne": None}}


def events(prefix: str, n: int, users: int = 13) -> list[tuple[str, str, str]]:
    names = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
    return [(f"{prefix}-{i}", f"{prefix}-u{i % users}", names[(i // users) % 3]) for i in range(n)]


def send_events(cfg: Settings, evs: list[tuple[str, str, str]]) -> None:
    produce(cfg, cfg.kafka.user_events_topic, [(u.encode(), record(e, u, n), None) for e, u, n in evs])


def assert_counts_exact(cfg: Settings, evs: list[tuple[str, str, str]]) -> None:
    """Sum of EventCount == distinct events in the topic, pair by pair, by our own count and
    by `shopstream_batch.check`'s independent recount of the topic."""
    distinct = {e: (u, n) for e, u, n in evs}
    expected = Counter(distinct.values())
    client = mongo_client(cfg.mongo)
    try:
        colls = collections(client[cfg.mongo.database], cfg.batch)
        got = {(d["UserId"], d["EventName"]): d["EventCount"] for d in colls.counts.find()}
        stored = colls.events.count_documents({})
    finally:
        client.close()
    assert stored == len(distinct)
    assert got == dict(expected), {
        k: (expected.get(k), got.get(k)) for k in set(got) | set(expected) if expected.get(k) != got.get(k)
    }
    result = check_counts(cfg)
    assert result.ok and result.lag == 0 and result.uncounted == 0, result
    assert result.distinct_events == result.stored_events == result.counted_events == len(distinct), result


def stored_count(cfg: Settings) -> int:
    client = mongo_client(cfg.mongo)
    try:
        return client[cfg.mongo.database][cfg.batch.events_collection].count_documents({})
    finally:
        client.close()


def with_postgres(own, settings: Settings) -> Settings:
    """The module's own Kafka and MongoDB, and the session's PostgreSQL: the DAG's dimensions task's."""
    return own.settings.model_copy(update={"postgres": settings.postgres})


def test_mongo_stopped_mid_drain_fails_the_run_and_the_next_run_counts_exactly(
    own, stack, settings, airflow_db, monkeypatch
):
    cfg = scoped(with_postgres(own, settings), "drain", batch_size=100)
    first = events("d", 5000)
    send_events(cfg, first + first[:300])  # 300 copies: clients retrying with the same Idempotency-Key
    state, tasks = run_dag_stopping_mongo(
        own, cfg, monkeypatch, lambda db: db[cfg.batch.events_collection].count_documents({}) >= 1000
    )
    assert state == "failed", tasks
    assert tasks["drain"] == ("failed", 3), tasks  # the DAG's 2 retries, all while MongoDB was down
    assert tasks["aggregate"][0] == "upstream_failed", tasks
    assert tasks["sessions"][0] == "upstream_failed", tasks
    assert tasks["dimensions"] == ("success", 1), tasks  # beside them, not after: MongoDB is none of its business
    # the drain was cut off mid-way, and committed no offset past what MongoDB had stored
    committed = committed_total(cfg)
    assert 0 < committed < 5300, committed
    survived = stored_count(cfg)
    assert survived >= committed - 300  # what was committed survived the stop (copies aside)
    print(f"drain cut off after {committed} of 5300 records committed, {survived} events stored")

    later = events("d2", 400)  # traffic goes on while MongoDB was away
    send_events(cfg, later)
    state, tasks = run_dag(cfg, monkeypatch)
    assert state == "success", tasks
    assert tasks == {
        "drain": ("success", 1),
        "aggregate": ("success", 1),
        "sessions": ("success", 1),
        "dimensions": ("success", 1),
    }
    assert_counts_exact(cfg, first + later)


def test_mongo_stopped_mid_aggregation_fails_the_run_and_the_next_run_counts_exactly(
    own, stack, settings, airflow_db, monkeypatch
):
    # the lease the cut-off run cannot release expires within the default 30 s (see
    # test_a_lease_left_by_a_dead_aggregation_does_not_block_the_next_run)
    cfg = scoped(with_postgres(own, settings), "agg")
    first = events("a", 6000)
    send_events(cfg, first)
    state, tasks = run_dag_stopping_mongo(
        own,
        cfg,
        monkeypatch,
        lambda db: db[f"{cfg.batch.counts_collection}_batches"].find_one(AGGREGATION_AT_WORK) is not None,
    )
    assert state == "failed", tasks
    assert tasks["drain"] == ("success", 1), tasks
    assert tasks["aggregate"] == ("failed", 3), tasks
    assert tasks["sessions"][0] == "upstream_failed", tasks
    assert committed_total(cfg) == 6000
    client = mongo_client(cfg.mongo)
    try:
        colls = collections(client[cfg.mongo.database], cfg.batch)
        left = [b["state"] for b in colls.agg_batches.find({"state": {"$ne": "applied"}})]
        counted = sum(d["EventCount"] for d in colls.counts.find())
    finally:
        client.close()
    assert left or counted == 6000, "the aggregation neither finished nor left its batch to finish"
    print(f"aggregation cut off: batches left {left}, {counted} of 6000 events counted")

    later = events("a2", 500)
    send_events(cfg, later)
    state, tasks = run_dag(cfg, monkeypatch)
    assert state == "success", tasks
    assert tasks == {
        "drain": ("success", 1),
        "aggregate": ("success", 1),
        "sessions": ("success", 1),
        "dimensions": ("success", 1),
    }
    assert_counts_exact(cfg, first + later)


def test_a_lease_left_by_a_dead_aggregation_does_not_block_the_next_run(own):
    """With the default settings, an aggregation cut off by a MongoDB outage leaves its lease
    behind; the next scheduled run (every 2 minutes) must not have to wait it out."""
    cfg = scoped(own.settings, "lease")
    send_events(cfg, events("l", 3000))
    drain_user_events(cfg)
    watcher = mongo_client(cfg.mongo, timeout_ms=1000)
    batches = watcher[cfg.mongo.database][f"{cfg.batch.counts_collection}_batches"]
    stopper = StopWhen(own.mongo, lambda: batches.find_one(AGGREGATION_AT_WORK) is not None)
    stopper.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever pymongo raises when the server is gone
            update_event_counts(cfg, wait_for_lease_s=5)
        stopper.join(30)
        assert stopper.fired
    finally:
        stopper.cancel.set()
        watcher.close()
        back_up(own.mongo)
    client = mongo_client(cfg.mongo)
    try:
        lease = collections(client[cfg.mongo.database], cfg.batch).leases.find_one({"_id": LEASE})
    finally:
        client.close()
    held_for = (lease["expires"] - datetime.now(UTC)).total_seconds() if lease else 0
    assert held_for < 120, f"a dead run's lease blocks every aggregation for another {held_for:.0f} s"
    report = update_event_counts(cfg, wait_for_lease_s=120)
    assert report.batches >= 1
    assert check_counts(cfg).ok


# -- MongoDB killed (-9) right after the drain committed a batch --------------------------------
KILLS = 8


def stored_coordinates(cfg: Settings) -> set[tuple[int, int]]:
    """(partition, offset) of every record MongoDB holds: events and dead letters."""
    client = mongo_client(cfg.mongo)
    try:
        colls = collections(client[cfg.mongo.database], cfg.batch)
        events = {
            (d["KafkaPartition"], d["KafkaOffset"])
            for d in colls.events.find({}, {"KafkaPartition": 1, "KafkaOffset": 1})
        }
        letters = {(d["Partition"], d["Offset"]) for d in colls.dead_letters.find({}, {"Partition": 1, "Offset": 1})}
    finally:
        client.close()
    return events | letters


def kill_9(service) -> None:
    """SIGKILL, as a crash or the OOM killer: the server gets no chance to flush anything.
    The stack's supervisor starts it again by itself."""
    pid = service.procs()[0].pid()
    assert pid is not None, f"{service.name} is not running"
    os.kill(pid, signal.SIGKILL)
    wait_for(f"{service.name}'s pid {pid} to be gone", lambda: not psutil.pid_exists(pid), 30)


def test_every_record_of_a_committed_batch_survives_kill_9_of_mongodb(own, monkeypatch):
    """The drain commits a batch's offsets only once MongoDB has it in its journal (`j: true`),
    so MongoDB killed -9 right after a commit, and restarted, still holds every record of every
    committed batch, events and dead letters: Kafka will not deliver those again."""
    cfg = scoped(own.settings, "kill9", batch_size=100, max_seconds=600.0)
    values = [b"{not json" if i % 10 == 9 else record(f"k9-{i}", f"k9-u{i % 7}", "PageVisited") for i in range(2000)]
    metas = produce(
        cfg, cfg.kafka.user_events_topic, [(b"k9", v, i % cfg.kafka.partitions) for i, v in enumerate(values)]
    )
    sent = {(m.partition, m.offset) for m in metas}
    committed: dict[int, int] = {}  # partition -> next offset, as committed so far
    rounds: list[tuple[int, int, list[tuple[int, int]]]] = []  # (records committed, how many lost, some)
    commit = KafkaConsumer.commit

    def commit_then_kill(consumer, offsets=None):
        commit(consumer, offsets)
        committed.update({tp.partition: meta.offset for tp, meta in (offsets or {}).items()})
        if len(rounds) >= KILLS:
            return
        kill_9(own.mongo)  # the batch's offsets are in Kafka: MongoDB now has it, or it is lost
        back_up(own.mongo)
        due = {c for c in sent if c[1] < committed.get(c[0], 0)}
        missing = due - stored_coordinates(cfg)
        rounds.append((len(due), len(missing), sorted(missing)[:5]))

    with monkeypatch.context() as patched:
        patched.setattr(KafkaConsumer, "commit", commit_then_kill)
        report = drain_user_events(cfg)  # the drain's client reconnects by itself after each restart
    try:
        assert len(rounds) == KILLS, rounds
        lost = [r for r in rounds if r[1]]
        assert not lost, f"records of committed batches gone after kill -9 (committed, lost, e.g.): {lost}"
        assert report.remaining == 0 and committed_total(cfg) == len(values), report
        assert stored_coordinates(cfg) == sent  # every record, stored or dead-lettered
        assert (report.stored, report.dead_lettered) == (1800, 200), report
        print(
            f"{KILLS} kill -9 rounds, after {[r[0] for r in rounds]} committed records: none lost; "
            f"drain {report.as_dict()}"
        )
    finally:
        client = mongo_client(cfg.mongo)
        client.drop_database(cfg.mongo.database)
        client.close()


# == 3. garbage written straight into both topics ==============================================
def valid_event(eid: str, user: str) -> bytes:
    return record(eid, user, "AddedBasket")


def valid_purchase(eid: str, user: str) -> bytes:
    return json.dumps(
        {
            **PURCHASE_EXAMPLE,
            "UserId": user,
            "OrderId": f"o-{eid}",
            "EventId": eid,
            "IngestedAt": "2026-11-22T10:21:31.5Z",
        }
    ).encode()


def garbage(other_topic_record: bytes, valid: bytes, seed: int) -> list[bytes | None]:
    """Values that are not records of the topic: not JSON, not UTF-8, empty, JSON of the wrong
    shape, nested too deep, cut short, with a tail, two at once, the other topic's record,
    a record with an extra field, NaN, random bytes."""
    rnd = random.Random(seed)
    parsed = json.loads(valid)
    return [
        b"{not json",
        b"\xff\xfe\x00 not UTF-8",
        b"",
        None,
        b"null",
        b"42",
        b'"a string"',
        b"[]",
        b"{}",
        b"[" * 5000,
        b"\x00" * 64,
        valid[: len(valid) // 2],
        valid + b"xyz",
        valid + valid,
        other_topic_record,
        json.dumps({**parsed, "Coupon": "FREE"}).encode(),
        json.dumps({**parsed, "EventId": "has spaces"}).encode(),
        json.dumps(parsed).replace('"UserId": "', '"UserId": NaN, "X": "').encode(),
        rnd.randbytes(300),
    ]


GARBAGE_KINDS = len(garbage(b"{}", b"{}", 0))


def interleave(valid: list[bytes], bad: list[bytes | None], partitions: int) -> list[tuple[bytes | None, int, bool]]:
    """(value, partition, is_valid): every garbage record between valid ones, in every partition."""
    out, v = [], iter(valid)
    for i, b in enumerate(bad):
        p = i % partitions
        out += [(next(v), p, True), (b, p, False), (next(v), p, True)]
    out += [(x, i % partitions, True) for i, x in enumerate(v)]
    return out


def test_garbage_in_user_events_is_dead_lettered_with_the_reason_and_the_drain_keeps_going(stack, settings):
    cfg = scoped(settings, "garbage", batch_size=4)  # batches end between and inside the garbage
    topic = cfg.kafka.user_events_topic
    sent: dict[tuple[int, int], tuple[bytes | None, bool]] = {}
    valid_ids: set[str] = set()

    def send_round(n: int) -> None:
        ids = [f"g{n}-{i}" for i in range(50)]
        valid_ids.update(ids)
        plan = interleave(
            [valid_event(e, f"gu{i % 3}") for i, e in enumerate(ids)],
            garbage(valid_purchase("x", "gu0"), valid_event("z", "gu0"), n),
            cfg.kafka.partitions,
        )
        metas = produce(cfg, topic, [(b"gu", value, p) for value, p, _ in plan])
        sent.update({(m.partition, m.offset): (value, ok) for m, (value, _, ok) in zip(metas, plan, strict=True)})

    try:
        send_round(1)
        first = drain_user_events(cfg)
        assert (first.stored, first.dead_lettered, first.remaining) == (50, GARBAGE_KINDS, 0), first
        update_event_counts(cfg)
        send_round(2)  # the drain goes on past the garbage: the next run takes what came since
        second = drain_user_events(cfg)
        assert (second.stored, second.dead_lettered, second.remaining) == (50, GARBAGE_KINDS, 0), second
        update_event_counts(cfg)
        assert committed_total(cfg) == len(sent)

        client = mongo_client(cfg.mongo)
        colls = collections(client[cfg.mongo.database], cfg.batch)
        stored = {d["_id"]: (d["KafkaPartition"], d["KafkaOffset"]) for d in colls.events.find()}
        letters = {(d["Partition"], d["Offset"]): d for d in colls.dead_letters.find()}
        client.close()
        assert set(stored) == valid_ids
        assert all(sent[coords][1] for coords in stored.values())
        bad = {coords: value for coords, (value, ok) in sent.items() if not ok}
        assert set(letters) == set(bad)
        for coords, value in bad.items():
            letter = letters[coords]
            assert letter["Topic"] == topic and letter["Key"] == b"gu"
            assert (letter["Value"] or b"") == (value or b"")  # the bytes as they came, to replay or inspect
            assert letter["Reason"].startswith(("invalid JSON: ", "breaks the contract: ")), letter["Reason"]
        result = check_counts(cfg)
        assert result.ok and result.invalid == len(bad) and result.distinct_events == 100, result
    finally:
        client = mongo_client(cfg.mongo)
        client.drop_database(cfg.mongo.database)
        client.close()


def run_to_end(spark, st: Settings) -> None:
    """The streaming job's query over what the topic holds now; not left running."""
    from shopstream_streaming import job

    q = job.start(spark, st, available_now=True)
    try:
        assert q.awaitTermination(180), f"{q.name} did not finish"
        assert q.exception() is None, q.exception()
    finally:
        if q.isActive:
            q.stop()


def test_garbage_in_both_topics_is_set_aside_with_the_reason_and_both_pipelines_keep_going(stack, settings, spark):
    ue = scoped(settings, "both", batch_size=8)
    st = job_settings(settings, "faults-garbage", own_topic=True)
    topic = st.kafka.purchases_topic
    purchases_sent: dict[tuple[int, int], tuple[bytes | None, bool]] = {}
    purchase_ids: set[str] = set()
    events_valid: set[str] = set()
    events_bad = 0
    try:
        for n in (1, 2):  # a second round after the first was taken: both go on from where they were
            ids = [f"pg{n}-{uuid.uuid4().hex[:6]}-{i}" for i in range(40)]
            purchase_ids.update(ids)
            plan = interleave(
                [valid_purchase(e, f"pgu{i % 4}") for i, e in enumerate(ids)],
                garbage(valid_event("x", "pgu0"), valid_purchase("z", "pgu0"), n),
                settings.kafka.partitions,
            )
            metas = produce(settings, topic, [(b"pgu", v, p) for v, p, _ in plan])
            purchases_sent.update({(m.partition, m.offset): (v, ok) for m, (v, _, ok) in zip(metas, plan, strict=True)})

            eids = [f"eg{n}-{i}" for i in range(40)]
            events_valid.update(eids)
            eplan = interleave(
                [valid_event(e, f"egu{i % 4}") for i, e in enumerate(eids)],
                garbage(valid_purchase("x", "egu0"), valid_event("z", "egu0"), n),
                ue.kafka.partitions,
            )
            produce(ue, ue.kafka.user_events_topic, [(b"egu", v, p) for v, p, _ in eplan])
            events_bad += sum(not ok for *_, ok in eplan)

            report = drain_user_events(ue)
            assert (report.stored, report.dead_lettered, report.remaining) == (40, GARBAGE_KINDS, 0), report
            update_event_counts(ue)
            run_to_end(spark, st)

        result = check_counts(ue)
        assert result.ok and result.lag == 0 and result.invalid == events_bad, result
        assert result.distinct_events == result.counted_events == len(events_valid), result

        rows = spark.read.parquet(locations.output_url(st)).select("EventId", "KafkaPartition", "KafkaOffset").collect()
        assert sorted(r.EventId for r in rows) == sorted(purchase_ids)  # each valid purchase, once
        assert all(purchases_sent[(r.KafkaPartition, r.KafkaOffset)][1] for r in rows)
        quarantine = {
            (r.KafkaPartition, r.KafkaOffset): r for r in spark.read.parquet(locations.quarantine_url(st)).collect()
        }
        bad = {coords: value for coords, (value, ok) in purchases_sent.items() if not ok}
        assert set(quarantine) == set(bad)
        for coords, value in bad.items():
            row = quarantine[coords]
            assert row.Reason and row.KafkaTopic == topic and row.Key == b"pgu"
            assert (row.Value or b"") == (value or b"")
    finally:
        client = mongo_client(ue.mongo)
        client.drop_database(ue.mongo.database)
        client.close()


# -- a timestamp at the edge of the calendar: contract breakers, not crashes -------------------
# "0001-01-01T00:00:00+01:00" is a valid ISO 8601 instant, but in UTC it falls before year 1.
EDGE_TIMESTAMPS = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]


def test_a_timestamp_past_the_calendar_breaks_the_contract_and_does_not_crash_it():
    for ts in EDGE_TIMESTAMPS:
        value = json.dumps({**json.loads(record("edge", "u1", "PageVisited")), "TimeStamp": ts})
        with pytest.raises(ValidationError):
            UserEventRecord.model_validate_json(value)


def test_a_timestamp_past_the_calendar_is_dead_lettered_not_a_stuck_drain(stack, settings):
    cfg = scoped(settings, "edge-ts")
    values = [record("edge-ok-1", "u1", "PageVisited")]
    values += [
        json.dumps({**json.loads(record(f"edge-{i}", "u1", "PageVisited")), "TimeStamp": ts}).encode()
        for i, ts in enumerate(EDGE_TIMESTAMPS)
    ]
    values += [record("edge-ok-2", "u1", "PageVisited")]
    produce(cfg, cfg.kafka.user_events_topic, [(b"u1", v, 0) for v in values])
    try:
        report = drain_user_events(cfg)
        assert (report.stored, report.dead_lettered, report.remaining) == (2, 2, 0), report
    finally:
        client = mongo_client(cfg.mongo)
        client.drop_database(cfg.mongo.database)
        client.close()


def test_a_timestamp_past_the_calendar_is_quarantined_not_a_failed_stream(stack, settings, spark):
    st = job_settings(settings, "faults-edge-ts", own_topic=True)
    ok = valid_purchase(f"edge-{uuid.uuid4().hex[:8]}", "edge-u")
    bad = [json.dumps({**json.loads(ok), "TimeStamp": ts}).encode() for ts in EDGE_TIMESTAMPS]
    produce(settings, st.kafka.purchases_topic, [(b"edge-u", v, 0) for v in [*bad, ok]])
    run_to_end(spark, st)
    assert len(spark.read.parquet(locations.quarantine_url(st)).collect()) == len(bad)
    assert [r.EventId for r in spark.read.parquet(locations.output_url(st)).collect()] == [json.loads(ok)["EventId"]]


def test_the_api_answers_422_not_500_for_a_timestamp_past_the_calendar(api_server):
    for ts in EDGE_TIMESTAMPS:
        r = httpx.put(f"{api_server.url}/SendEvent", json={**USER_EVENT_EXAMPLE, "TimeStamp": ts}, timeout=30)
        assert r.status_code == 422, (ts, r.status_code, r.text[:200])
        r = httpx.post(f"{api_server.url}/PurchasedItems", json=[{**PURCHASE_EXAMPLE, "TimeStamp": ts}], timeout=30)
        assert r.status_code == 422, (ts, r.status_code, r.text[:200])
