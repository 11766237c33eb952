"""Offset rewinds (issue 13): when the broker loses records past a stage's committed offset
and new records take those offsets, the stage reads them, and says so.

- The walk back over the marks (`shopstream.marks.check`), pure: a property over random
  histories of commits, losses and new records (never a record skipped, never a needless
  rewind), and the edges one by one.
- The streaming source's offsets, without Spark or a broker: marks in the offset JSON,
  the resume point in the batch's end ("@from"), the same JSON when nothing changed.
- Against a broker of this module's own: it loses a tail deterministically (snapshot
  saved after a graceful stop, records written and consumed, the snapshot put back), then
  new records reuse the lost offsets, as many as were lost or more (the records at the
  committed position were replaced) or fewer (the position is past the end). The drain
  and the streaming job store every new record once, keep the earlier ones, and record
  the rewind with its numbers.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import broker_back as restart
from conftest import job_settings, own_broker, run_until_caught_up
from shopstream import locations
from shopstream.adapters.kafka import end_offsets, ensure_topics
from shopstream.adapters.mongo import collections, mongo_client
from shopstream.marks import KEEP, PAST_END, REPLACED, UNMARKED, Mark, check, fingerprint, remember
from shopstream.rewinds import Rewind, read_lines, rewinds, streaming_file
from shopstream.settings import Settings
from shopstream.streaming_status import offset_positions, purchases_read
from shopstream_api.examples import PURCHASE_EXAMPLE
from shopstream_batch.drain import drain_user_events
from shopstream_stack.kafka import KafkaBroker
from test_batch_properties import record


# == the walk back, pure ======================================================================
def lookup(log: list[bytes]):
    """fingerprint_at over a log whose record i has value log[i] and timestamp 1000 + i."""
    return lambda offset: fingerprint(log[offset], 1000 + offset) if 0 <= offset < len(log) else None


def marks_of(log: list[bytes], positions: list[int]) -> tuple[Mark, ...]:
    marks: tuple[Mark, ...] = ()
    for p in positions:
        marks = remember(marks, Mark.of(p, log[p - 1], 1000 + p - 1))
    return marks


@hsettings(max_examples=300, deadline=None)
@given(st.data())
def test_the_walk_back_never_skips_a_record_and_never_rewinds_without_a_loss(data):
    """A partition's history: commits at rising positions, then the broker keeps a prefix of
    length `kept` and new records follow. From the last commit, the stage must read again
    from the newest commit at or below the loss (none: the beginning), and only then."""
    n = data.draw(st.integers(1, 60), label="records")
    log = [f"old-{i}".encode() for i in range(n)]
    commits = sorted(data.draw(st.sets(st.integers(1, n), min_size=1, max_size=45), label="commits"))
    marks = marks_of(log, commits)
    position = commits[-1]
    kept = data.draw(st.integers(0, n), label="kept")
    new = data.draw(st.integers(0, 70), label="new records")
    after = log[:kept] + [f"new-{i}".encode() for i in range(new)]
    verdict = check(position, marks, 0, len(after), lookup(after))
    if kept >= position:  # nothing the stage read was lost
        assert (verdict.resume, verdict.reason) == (position, None)
        assert verdict.marks == marks
        return
    intact = [m.offset for m in marks if m.offset <= kept]  # the marks the stage still has
    assert verdict.resume == max(intact, default=0) <= kept  # so every new record is read
    assert verdict.reason == (PAST_END if position > len(after) else REPLACED)
    assert all(m.offset <= verdict.resume for m in verdict.marks)


def test_the_walk_back_at_its_edges():
    log = [f"r{i}".encode() for i in range(10)]
    at = lookup(log)
    marks = marks_of(log, [3, 6, 8])
    # all intact: the position holds
    assert check(8, marks, 0, 10, at).reason is None
    # marks past the position are of commits that never landed, or were rolled back: dropped
    v = check(6, marks, 0, 10, at)
    assert (v.resume, v.reason, [m.offset for m in v.marks]) == (6, None, [3, 6])
    # no marks: trust the position unless it is past the end (then from the beginning)
    assert (check(8, (), 2, 10, at).resume, check(8, (), 2, 10, at).reason) == (8, None)
    assert (check(12, (), 2, 10, at).resume, check(12, (), 2, 10, at).reason) == (2, PAST_END)
    # the record behind the newest mark was replaced: back to the newest one still intact
    other = [*log[:5], b"x5", b"x6", b"x7", b"x8", b"x9"]
    v = check(8, marks, 0, 10, lookup(other))
    assert (v.resume, v.reason, [m.offset for m in v.marks]) == (3, REPLACED, [3])
    # no mark intact: from the beginning
    assert check(8, marks, 0, 10, lookup([b"y"] * 10)).resume == 0
    # a mark at or before the log's start is taken as intact (retention deletes heads, crashes lose tails)
    v = check(8, marks, 4, 5, lambda o: None)
    assert (v.resume, v.reason) == (4, PAST_END)
    # the newest mark is below the position (its mark was lost): what lies between is unproven
    v = check(9, marks, 0, 10, at)
    assert (v.resume, v.reason) == (8, UNMARKED)
    # ... unless nothing lies between that the log still has
    assert check(5, marks_of(log, [2]), 5, 10, at).reason is None
    # a stage keeps the last KEEP marks; a new one replaces any at or past it
    many = marks_of(log * 10, list(range(1, 100)))
    assert len(many) == KEEP and many[-1].offset == 99
    assert [m.offset for m in remember(marks, Mark(7, 1, 2))] == [3, 6, 7]


# == the streaming source's offsets, without Spark or a broker =================================
class FakeTopic:
    """One partition of topic T, as the source sees it through `_bounds` and `_fingerprints`."""

    def __init__(self) -> None:
        self.log: list[bytes] = []
        self.lo = 0
        self.listed = True  # False: the broker's metadata lists no partition of T (a broker still starting)

    def append(self, *values: str) -> None:
        self.log += [v.encode() for v in values]

    def bounds(self):
        return {"T": {"0": (self.lo, len(self.log))} if self.listed else {}}

    def fingerprints(self, wanted):
        return {
            k: fingerprint(self.log[o], 1000 + o) if self.lo <= o < len(self.log) else None for k, o in wanted.items()
        }


def fake_reader(topic: FakeTopic, tmp_path: Path, **options):
    from shopstream_streaming.kafka_source import KafkaStreamReader

    reader = KafkaStreamReader(
        {
            "kafka.bootstrap.servers": "127.0.0.1:1",
            "subscribe": "T",
            "startingOffsets": "earliest",
            "shopstream.rewindsFile": str(tmp_path / "r.jsonl"),
            "shopstream.query": "purchases",
            **options,
        }
    )
    reader._bounds, reader._fingerprints = topic.bounds, topic.fingerprints
    return reader


def test_a_partition_the_broker_does_not_list_for_a_while_keeps_its_position_and_marks(tmp_path):
    from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

    topic = FakeTopic()
    reader = fake_reader(topic, tmp_path)
    topic.append("a", "b", "c")
    first = reader.latestOffset(reader.initialOffset(), ReadAllAvailable())
    topic.listed = False
    # the very same offset, so Spark plans no batch and reads nothing again
    for limit in (ReadAllAvailable(), ReadMaxRows(2)):
        assert json.dumps(reader.latestOffset(first, limit)) == json.dumps(first)
    topic.listed = True
    topic.append("d")
    second = reader.latestOffset(first, ReadAllAvailable())
    assert [(r.start, r.end) for t in reader.partitions(first, second) for r in t.ranges] == [(3, 4)]
    assert not (tmp_path / "r.jsonl").exists()  # not a rewind


@pytest.mark.parametrize("new", [4, 1], ids=["replaced", "past-the-end"])
def test_the_streaming_source_carries_marks_and_the_resume_point_in_its_offsets(tmp_path, new):
    from pyspark.sql.streaming.datasource import ReadAllAvailable

    from shopstream_streaming.kafka_source import FROM, MARKS, positions

    topic = FakeTopic()
    reader = fake_reader(topic, tmp_path)
    start = reader.initialOffset()
    assert start == {"T": {"0": 0}}  # nothing to mark at the beginning
    topic.append("a", "b", "c")
    first = reader.latestOffset(start, ReadAllAvailable())
    assert first == {"T": {"0": 3}, MARKS: {"T": {"0": [Mark.of(3, b"c", 1002).as_list()]}}}
    topic.append("d", "e")
    second = reader.latestOffset(first, ReadAllAvailable())
    assert positions(second) == offset_positions(json.dumps(second)) == {"T": {"0": 5}}
    assert [m[0] for m in second[MARKS]["T"]["0"]] == [3, 5]
    # nothing new: the very same offset, so Spark plans no batch
    assert json.dumps(reader.latestOffset(second, ReadAllAvailable())) == json.dumps(second)

    # the broker loses d and e; `new` records take offsets 3...
    topic.log = topic.log[:3]
    topic.append(*[f"n{i}" for i in range(new)])
    third = reader.latestOffset(second, ReadAllAvailable())
    assert third[FROM] == {"T": {"0": 3}} and positions(third) == {"T": {"0": 3 + new}}
    assert [(r.start, r.end) for t in reader.partitions(second, third) for r in t.ranges] == [(3, 3 + new)]
    assert [m[0] for m in third[MARKS]["T"]["0"]] == [3, 3 + new]
    (line,) = read_lines(tmp_path / "r.jsonl")
    assert (line.stage, line.topic, line.partition, line.committed, line.resumed_from, line.end, line.reason) == (
        "streaming",
        "T",
        0,
        5,
        3,
        3 + new,
        REPLACED if new >= 2 else PAST_END,
    )
    assert json.loads((tmp_path / "r.jsonl").read_text())["query"] == "purchases"
    # the next batch starts where the rewound one ended, and finds nothing wrong
    fourth = reader.latestOffset(third, ReadAllAvailable())
    assert FROM not in fourth and positions(fourth) == positions(third)
    assert reader.partitions(third, fourth) == []
    assert len(read_lines(tmp_path / "r.jsonl")) == 1


def test_the_streaming_source_still_refuses_offsets_deleted_by_retention(tmp_path):
    from pyspark.sql.streaming.datasource import ReadAllAvailable

    topic = FakeTopic()
    topic.append(*"abcdef")
    topic.lo = 4
    with pytest.raises(RuntimeError, match="deleted"):
        fake_reader(topic, tmp_path).latestOffset({"T": {"0": 2}}, ReadAllAvailable())
    skip = fake_reader(topic, tmp_path, failOnDataLoss="false").latestOffset({"T": {"0": 2}}, ReadAllAvailable())
    assert skip["T"] == {"0": 6}


def test_the_dashboard_summary_of_rewinds():
    from shopstream_dashboard.health import rewinds_summary  # /api/health's `rewinds`

    at = lambda s: datetime(2026, 11, 22, 10, 0, s, tzinfo=UTC)  # noqa: E731
    found = [Rewind("streaming", "P", 0, 9, 4, 6, at(s), PAST_END) for s in range(6)]
    found.insert(2, Rewind("drain", "U", 1, 11, 6, 14, at(30), REPLACED))
    got = rewinds_summary(found)
    assert got["count"] == 7 and got["by_stage"] == {"streaming": 6, "drain": 1}
    assert [r["at"] for r in got["latest"]] == [at(30), at(5), at(4), at(3), at(2)]
    assert rewinds_summary([]) == {"count": 0, "by_stage": {}, "latest": []}


# == against a broker of this module's own ===================================================
@pytest.fixture(scope="module")
def own(stack, settings):
    """A broker of this module's own, beside the session's MongoDB and S3; and a run folder
    of its own, so the streaming job's rewinds file is this module's."""
    with own_broker(settings, "shopstream-rewinds-") as own:
        yield own


@contextmanager
def lost_on_restart(broker: KafkaBroker, keep_commits: bool) -> Iterator[None]:
    """Whatever is written to the broker inside the `with` is lost when it ends: a crash
    that loses a tail, made deterministic. The snapshot of a graceful stop (SIGTERM writes
    it) is put back before the broker starts again. `keep_commits`: the consumer groups'
    offsets committed meanwhile survive (as when commits outlive a log, e.g. a real
    Kafka's unclean leader election); else they roll back with the log, as in one
    snapshot of noida-db."""
    snapshot = broker.data_dir / "kafka.json"
    broker.stop()
    saved = json.loads(snapshot.read_text())
    restart(broker)
    yield
    broker.stop()
    if keep_commits:
        now = json.loads(snapshot.read_text())
        saved["committed_offsets"], saved["offset_metadata"] = now["committed_offsets"], now["offset_metadata"]
    snapshot.write_text(json.dumps(saved))
    restart(broker)


def produce(cfg: Settings, topic: str, values: list[bytes], partition: int = 0) -> list[int]:
    """acks=all, one partition; returns the offsets the records got."""
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    try:
        futures = [producer.send(topic, key=b"k", value=v, partition=partition) for v in values]
        producer.flush(60)
        return [f.get(30).offset for f in futures]
    finally:
        producer.close()


def committed(cfg: Settings, partition: int) -> int | None:
    consumer = KafkaConsumer(
        bootstrap_servers=cfg.kafka.bootstrap_servers, group_id=cfg.batch.consumer_group, enable_auto_commit=False
    )
    try:
        return consumer.committed(TopicPartition(cfg.kafka.user_events_topic, partition))
    finally:
        consumer.close()


def numbers(r: Rewind) -> tuple:
    return r.stage, r.topic, r.partition, r.committed, r.resumed_from, r.end, r.reason


K, N = 6, 5  # records before the loss (drained or streamed, then the snapshot), records lost


@pytest.mark.services
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", ["replaced", "past-the-end", "commits-rolled-back"])
def test_the_drain_reads_the_records_that_took_lost_offsets(own, case):
    new_count = {"replaced": 8, "past-the-end": 2, "commits-rolled-back": 8}[case]
    tag = f"{case}-{uuid.uuid4().hex[:6]}"
    cfg = own.settings.model_copy(
        update={
            "kafka": own.settings.kafka.model_copy(update={"user_events_topic": f"UserEvents-{tag}"}),
            "mongo": own.settings.mongo.model_copy(update={"database": f"rewinds_{tag}".replace("-", "_")}),
            "batch": own.settings.batch.model_copy(update={"consumer_group": f"batch-{tag}", "batch_size": 4}),
        }
    )
    ensure_topics(cfg.kafka)
    topic = cfg.kafka.user_events_topic
    before = [record(f"before-{tag}-{i}", "u1", "PageVisited") for i in range(K)]
    assert produce(cfg, topic, before) == list(range(K))
    produce(cfg, topic, [record(f"other-{tag}-{i}", "u2", "AddedBasket") for i in range(2)], partition=1)
    assert drain_user_events(cfg).stored == K + 2  # batches of 4: marks at 4 and 6 on partition 0

    # a record that is not JSON at offset K+1, both before and after the loss: two dead letters
    lost = [record(f"lost-{tag}-{i}", "u1", "PageVisited") if i != 1 else b"{lost garbage" for i in range(N)]
    with lost_on_restart(own.broker, keep_commits=case != "commits-rolled-back"):
        assert produce(cfg, topic, lost) == list(range(K, K + N))
        got = drain_user_events(cfg)
        assert (got.stored, got.dead_lettered, got.rewound) == (N - 1, 1, 0)
        assert committed(cfg, 0) == K + N
    assert end_offsets(cfg.kafka, topic)[0] == K  # the broker lost them
    assert committed(cfg, 0) == (K if case == "commits-rolled-back" else K + N)

    new = [record(f"new-{tag}-{i}", "u1", "PageVisited") if i != 1 else b"{new garbage" for i in range(new_count)]
    assert produce(cfg, topic, new) == list(range(K, K + new_count))  # the lost offsets, again
    report = drain_user_events(cfg)
    assert (report.stored, report.duplicates, report.dead_lettered) == (new_count - 1, 0, 1)
    assert committed(cfg, 0) == K + new_count

    client = mongo_client(cfg.mongo)
    try:
        colls = collections(client[cfg.mongo.database], cfg.batch)
        ids = Counter(d["_id"] for d in colls.events.find({}, {"_id": 1}))
        want = {json.loads(v)["EventId"] for v in before + lost + new if b"garbage" not in v}
        assert set(ids) == want | {f"other-{tag}-{i}" for i in range(2)} and set(ids.values()) == {1}
        letters = {d["Value"]: (d["Partition"], d["Offset"]) for d in colls.dead_letters.find()}
        assert letters == {b"{lost garbage": (0, K + 1), b"{new garbage": (0, K + 1)}
    finally:
        client.close()

    found = [numbers(r) for r in rewinds(cfg)]
    if case == "commits-rolled-back":  # the group's position rolled back with the log: nothing to rewind
        assert report.rewound == 0 and found == []
    else:
        assert report.rewound == 1
        assert found == [("drain", topic, 0, K + N, K, K + new_count, REPLACED if case == "replaced" else PAST_END)]
    again = drain_user_events(cfg)  # nothing new, and nothing wrong any more
    assert (again.stored, again.rewound, again.batches) == (0, 0, 0)
    assert len(rewinds(cfg)) == len(found)


def purchase_value(event_id: str) -> bytes:
    return json.dumps({**PURCHASE_EXAMPLE, "EventId": event_id, "IngestedAt": "2026-11-22T10:21:31.5Z"}).encode()


@pytest.mark.services
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", ["replaced", "past-the-end"])
def test_the_streaming_job_writes_the_records_that_took_lost_offsets(own, spark, case):
    new_count = {"replaced": 7, "past-the-end": 2}[case]
    cfg = job_settings(own.settings, f"rewind-{case}", own_topic=True)
    topic = cfg.kafka.purchases_topic
    tag = uuid.uuid4().hex[:6]
    ids = {
        name: [f"{name}-{tag}-{i}" for i in range(n)] for name, n in (("before", K), ("lost", N), ("new", new_count))
    }
    assert produce(cfg, topic, [purchase_value(e) for e in ids["before"]]) == list(range(K))
    produce(cfg, topic, [purchase_value(f"other-{tag}")], partition=1)
    run_until_caught_up(spark, cfg)
    with lost_on_restart(own.broker, keep_commits=True):  # the job's offsets are in its checkpoint anyway
        assert produce(cfg, topic, [purchase_value(e) for e in ids["lost"]]) == list(range(K, K + N))
        run_until_caught_up(spark, cfg)
    assert end_offsets(cfg.kafka, topic)[0] == K
    assert produce(cfg, topic, [purchase_value(e) for e in ids["new"]]) == list(range(K, K + new_count))
    assert not [r for r in read_lines(streaming_file(cfg)) if r.topic == topic]
    rewound = run_until_caught_up(spark, cfg)

    rows = spark.read.parquet(locations.output_url(cfg)).select("EventId", "KafkaPartition", "KafkaOffset").collect()
    written = Counter(r.EventId for r in rows)
    assert set(written) == {e for group in ids.values() for e in group} | {f"other-{tag}"}
    assert set(written.values()) == {1}
    assert {(r.KafkaPartition, r.KafkaOffset) for r in rows if r.EventId.startswith("new-")} == {
        (0, o) for o in range(K, K + new_count)
    }
    # the job's one query rewound once; one line in the job folder, naming the query
    want = ("streaming", topic, 0, K + N, K, K + new_count, REPLACED if case == "replaced" else PAST_END)
    found = [numbers(r) for r in rewinds(cfg) if r.topic == topic]
    assert found == [want]
    lines = [json.loads(x) for x in streaming_file(cfg).read_text().splitlines()]
    assert [x["query"] for x in lines if x["topic"] == topic] == [locations.PURCHASES]
    # the job's status and the dashboard read the positions of the offset, not its marks
    (batch,) = [p for p in rewound if p["numInputRows"]]
    assert batch["numInputRows"] == new_count
    end = batch["sources"][0]["endOffset"]
    assert "@marks" in (json.loads(end) if isinstance(end, str) else end)
    others = {str(p): 0 for p in range(2, cfg.kafka.partitions)}  # the topic's other partitions hold nothing
    assert offset_positions(end) == {topic: {"0": K + new_count, "1": 1, **others}}
    status = {"queries": {locations.PURCHASES: {"end_offset": end}}}
    assert purchases_read(status, topic) == K + new_count + 1  # what chaos and the dashboard count as read

    progress = run_until_caught_up(spark, cfg)  # nothing new, nothing wrong
    assert [numbers(r) for r in rewinds(cfg) if r.topic == topic] == [want]
    assert all(p["numInputRows"] == 0 for p in progress)
