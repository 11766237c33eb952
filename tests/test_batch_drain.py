"""Drain and DAG against the real broker and MongoDB-protocol server."""

from __future__ import annotations

import json
import uuid
from collections import Counter

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shopstream.adapters.kafka import ensure_topics
from shopstream.adapters.mongo import mongo_client
from shopstream.settings import get_settings
from shopstream_api.examples import USER_EVENT_EXAMPLE
from shopstream_batch.aggregate import update_event_counts
from shopstream_batch.check import check_counts
from shopstream_batch.drain import DrainReport, Message, drain_user_events, store
from shopstream_batch.store import ensure_collections
from test_batch_properties import record

pytestmark = pytest.mark.services


@pytest.fixture
def isolated(stack, settings):
    """Settings with a topic, consumer group and database of this test's own."""
    tag = uuid.uuid4().hex[:8]
    cfg = settings.model_copy(update={
        "kafka": settings.kafka.model_copy(update={"user_events_topic": f"UserEvents-{tag}"}),
        "mongo": settings.mongo.model_copy(update={"database": f"drain_{tag}"}),
        "batch": settings.batch.model_copy(update={"consumer_group": f"batch-{tag}", "batch_size": 7}),
    })
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
    total = sum(consumer.committed(TopicPartition(cfg.kafka.user_events_topic, p)) or 0
                for p in range(cfg.kafka.partitions))
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


def test_insert_without_commit_is_redelivered_and_stored_once(isolated):
    cfg = isolated
    produce(cfg, [record(f"r{i}", "u1", "AddedBasket") for i in range(12)])
    # a run that stored the records and died before committing its offsets:
    consumer = KafkaConsumer(cfg.kafka.user_events_topic, bootstrap_servers=cfg.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    seen = [Message(m.topic, m.partition, m.offset, m.key, m.value) for m in consumer]
    consumer.close()
    colls = ensure_collections(db(cfg), cfg.batch)
    store(colls, seen, DrainReport())
    report = drain_user_events(cfg)  # the next run gets them again
    assert (report.stored, report.duplicates) == (0, 12)
    assert colls.events.count_documents({}) == 12
    update_event_counts(cfg)
    assert colls.counts.find_one({"UserId": "u1", "EventName": "AddedBasket"})["EventCount"] == 12


def test_a_large_backlog_is_drained_in_bounded_time_per_run(isolated):
    cfg = isolated.model_copy(update={"batch": isolated.batch.model_copy(update={"max_seconds": 0.5,
                                                                                "batch_size": 50})})
    produce(cfg, [record(f"b{i}", f"u{i % 9}", "PageVisited") for i in range(3000)])
    first = drain_user_events(cfg)
    assert first.remaining > 0 and first.stored + first.remaining == 3000
    assert first.seconds < 10
    runs = [first]
    while runs[-1].remaining and len(runs) < 100:
        runs.append(drain_user_events(cfg))
    assert runs[-1].remaining == 0
    assert sum(r.stored for r in runs) == 3000 and sum(r.duplicates for r in runs) == 0


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
            assert httpx.put(f"{api.url}/SendEvent", json={**USER_EVENT_EXAMPLE, "UserId": users[0]},
                             headers={"Idempotency-Key": f"retry-{users[0]}"}).status_code == 200
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
    # and `invoke batch-check`'s independent recount agrees, and notices a count that is off
    result = check_counts(cfg)
    assert result.ok and result.lag == 0 and result.uncounted == 0 and result.distinct_events == 31, result
    pair = {"UserId": users[0], "EventName": "PageVisited"}
    counts.update_one(pair, {"$inc": {"EventCount": 1}})
    broken = check_counts(cfg)
    assert not broken.ok and broken.mismatches == {f"{users[0]}/PageVisited": (got[(users[0], "PageVisited")],
                                                                              got[(users[0], "PageVisited")] + 1)}
