"""The acknowledgement journal (issue 13): no acknowledged record is lost when the broker crashes.

The embedded broker keeps its log in memory and snapshots it, so a crash forgets its last
moments. These tests make it forget, on a broker of their own:
- deterministically: stop it (it snapshots), keep that snapshot, start it, let the API
  acknowledge records, stop it and put the old snapshot back: the broker has now lost
  exactly those records, and new ones reuse their offsets;
- for real: `kill -9` under load from clients, three times.
Either way every record the API answered 2xx for must be back in its topic, published
again from the journal, with nothing but those records published twice.
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from conftest import ServerThread, make_settings, read_from
from shopstream import ledger
from shopstream.settings import Settings
from shopstream_api.examples import PURCHASE_EXAMPLE, USER_EVENT_EXAMPLE
from shopstream_api.journal import Checked, Entry, Journal, Outgoing, Segment, _line, parse_line
from shopstream_api.main import create_app
from shopstream_stack.kafka import KafkaBroker
from test_faults import kill_9, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]


def quick(cfg: Settings, **api) -> Settings:
    """Checks every 0.2 s, records kept 2 s after their first check: a test sees a full cycle."""
    update = {"journal_verify_interval_s": 0.2, "journal_retention_s": 2.0, "publish_timeout_s": 2.0, **api}
    return cfg.model_copy(update={"api": cfg.api.model_copy(update=update)})


@pytest.fixture
def own():
    """A broker of this test's own (free port, own folder), and settings with a journal of its own."""
    run_dir = Path(tempfile.mkdtemp(prefix="shopstream-journal-"))
    cfg = quick(make_settings(run_dir / "run"))
    broker = KafkaBroker(cfg)
    try:
        broker.start()
        yield SimpleNamespace(settings=cfg, broker=broker)
    finally:
        broker.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def in_kafka(cfg: Settings) -> Counter[str]:
    """EventId -> copies, over both topics."""
    ids: Counter[str] = Counter()
    for topic in cfg.kafka.topics:
        ids.update(json.loads(m.value)["EventId"] for m in read_from(cfg, topic))
    return ids


def not_in_kafka(cfg: Settings, api_url: str, **groups: set[str]) -> str:
    """Which acknowledged EventIds Kafka lacks, by group, and what the API's journal says."""
    held = set(in_kafka(cfg))
    missing = {name: sorted(ids - held) for name, ids in groups.items() if ids - held}
    counters = (
        "shopstream_journal_records ",
        "shopstream_journal_republished_records_total",
        "shopstream_broker_losses",
    )
    return f"missing {missing}; journal {[(c.strip(), metric(api_url, c)) for c in counters]}"


def metric(api_url: str, name: str) -> float:
    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


RETRIED: set[str] = set()  # EventIds whose request got a 503 first: a copy in Kafka is the client's


def send(http: httpx.Client, method: str, path: str, body, key: str) -> list[str]:
    """One request, retried under the same Idempotency-Key while the API answers 503; its EventIds."""
    deadline = time.monotonic() + 60
    while True:
        r = http.request(method, path, json=body, headers={"Idempotency-Key": key})
        if r.status_code != 503:
            assert r.status_code == 200, r.text
            return [r.json()["EventId"]] if path == "/SendEvent" else r.json()["EventIds"]
        assert time.monotonic() < deadline, r.text
        RETRIED.update([key, *(f"{key}:{i}" for i in range(len(body) if isinstance(body, list) else 0))])
        time.sleep(0.2)


def post_some(http: httpx.Client, run: str, n: int) -> set[str]:
    """n events and n purchases, acknowledged; their EventIds."""
    acked: set[str] = set()
    for i in range(n):
        acked.update(
            send(
                http,
                "PUT",
                "/SendEvent",
                {**USER_EVENT_EXAMPLE, "UserId": f"u{i % 7}", "SessionId": f"{run}-{i}"},
                f"{run}-e{i}",
            )
        )
        acked.update(
            send(
                http,
                "POST",
                "/PurchasedItems",
                [{**PURCHASE_EXAMPLE, "UserId": f"u{i % 7}", "OrderId": f"{run}-{i}"}],
                f"{run}-p{i}",
            )
        )
    return acked


def forget_since_snapshot(broker: KafkaBroker, keep: Path) -> None:
    """Stop the broker and start it from the snapshot kept in `keep`: it forgets all it took since."""
    broker.stop()
    shutil.copy(keep, broker.data_dir / "kafka.json")
    broker.start()


def snapshot(broker: KafkaBroker, to: Path) -> None:
    broker.stop()  # SIGTERM: the broker writes its snapshot
    shutil.copy(broker.data_dir / "kafka.json", to)
    broker.start()


def test_records_the_broker_forgets_are_published_again_and_new_ones_at_their_offsets_are_kept(own, tmp_path):
    cfg, broker = own.settings, own.broker
    run = uuid.uuid4().hex[:8]
    with ServerThread(create_app(cfg)) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        before = post_some(http, f"{run}-before", 20)
        snapshot(broker, tmp_path / "kafka.json")
        forgotten = post_some(http, f"{run}-forgotten", 40)
        wait_for("the forgotten records to be in Kafka", lambda: forgotten <= set(in_kafka(cfg)), 90)
        # (that the broker forgot them shows below: the API published each of them again; a look at
        # the topic now would race with the API, which checks every 0.2 s)
        forget_since_snapshot(broker, tmp_path / "kafka.json")
        # new records now take the offsets the forgotten ones had
        after = post_some(http, f"{run}-after", 10)
        wait_for(
            "every acknowledged record back in Kafka",
            lambda: before | forgotten | after <= set(in_kafka(cfg)),
            90,
            explain=lambda: not_in_kafka(cfg, api.url, before=before, forgotten=forgotten, after=after),
        )
        wait_for(
            "the journal to empty (every record checked twice)",
            lambda: metric(api.url, "shopstream_journal_records ") == 0,
            60,
        )
        republished = metric(api.url, "shopstream_journal_republished_records_total")
        losses = metric(api.url, "shopstream_broker_losses_total")
    copies = in_kafka(cfg)
    assert republished == len(forgotten), (republished, len(forgotten))
    assert losses >= 2  # both topics
    assert {e for e, n in copies.items() if n > 1} - RETRIED == set(), "a record was published twice"
    # the ledger holds every acknowledged record, the republished ones a second time
    acked = [a.event_id for a in ledger.acknowledged(cfg)]
    assert set(acked) == before | forgotten | after
    assert len(acked) == len(before | forgotten | after) + len(forgotten)
    assert all(n == 1 for e, n in Counter(acked).items() if e not in forgotten)


def test_a_restarted_api_checks_what_its_journal_holds_and_publishes_again_what_was_lost(own, tmp_path):
    cfg, broker = own.settings, own.broker
    slow = quick(cfg, journal_verify_interval_s=60.0)  # this API never gets to check before it stops
    snapshot(broker, tmp_path / "kafka.json")
    with ServerThread(create_app(slow)) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        acked = post_some(http, uuid.uuid4().hex[:8], 25)
    forget_since_snapshot(broker, tmp_path / "kafka.json")
    assert not acked & set(in_kafka(cfg))
    with ServerThread(create_app(cfg)) as api:  # same journal folder: it takes over the slot
        wait_for("the journal's records back in Kafka", lambda: acked <= set(in_kafka(cfg)), 90)
        assert metric(api.url, "shopstream_journal_republished_records_total") == len(acked)


def test_kill_9_of_the_broker_under_load_three_times_loses_no_acknowledged_record(own):
    cfg, broker = own.settings, own.broker
    acked: set[str] = set()
    stop = threading.Event()
    errors: list[str] = []

    def client(name: str) -> None:
        with httpx.Client(base_url=api.url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                key = f"{name}-{i}"
                body = {**USER_EVENT_EXAMPLE, "UserId": f"{name}-u{i % 5}", "SessionId": key}
                try:
                    r = http.put("/SendEvent", json=body, headers={"Idempotency-Key": key})
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                    return
                if r.status_code == 200:
                    acked.add(r.json()["EventId"])
                    i += 1
                elif r.status_code != 503:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    return
                else:
                    time.sleep(0.05)

    broker.stop()  # a graceful stop snapshots the new topics: a crash now loses records, not topics
    broker.start()
    with ServerThread(create_app(cfg)) as api:
        threads = [threading.Thread(target=client, args=(f"c{n}",), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        try:
            for _ in range(3):
                floor = len(acked) + 150
                wait_for("load to flow", lambda: len(acked) >= floor, 60)  # noqa: B023
                kill_9(broker)
                broker.start()  # the supervisor is restarting it: this waits until it answers
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors[:5]
        wait_for("every acknowledged record in Kafka", lambda: acked <= set(in_kafka(cfg)), 120)
        wait_for("the journal to empty", lambda: metric(api.url, "shopstream_journal_records ") == 0, 60)
        print(
            f"{len(acked)} acknowledged; the broker lost and the API published again "
            f"{metric(api.url, 'shopstream_journal_republished_records_total'):.0f}"
        )


def test_a_full_journal_answers_503_and_publishes_nothing_until_it_has_room(own):
    cfg = quick(own.settings, journal_max_bytes=1 << 20, journal_retention_s=3600.0)
    order = uuid.uuid4().hex[:8]
    purchases = [{**PURCHASE_EXAMPLE, "OrderId": f"{order}-{i}"} for i in range(100)]
    with ServerThread(create_app(cfg)) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        # a 503 is either the full journal or, on a busy machine, a publish that timed out
        answers = [refusal_cause(http.post("/PurchasedItems", json=purchases)) for _ in range(60)]
        assert "ok" in answers and "journal" in answers, Counter(answers)
        first_refusal = answers.index("journal")
        assert set(answers[first_refusal:]) == {"journal"}, Counter(answers[first_refusal:])
        refused = http.post("/PurchasedItems", json=[{**PURCHASE_EXAMPLE, "OrderId": f"{order}-refused"}])
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "journal" in refused.json()["detail"]
    published = [json.loads(m.value)["OrderId"] for m in read_from(cfg, cfg.kafka.purchases_topic)]
    assert f"{order}-refused" not in published
    # every accepted request is there; a timed-out one may or may not be; a refused one never is
    assert 100 * answers.count("ok") <= len(published) <= 100 * first_refusal, Counter(answers)


def refusal_cause(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "ok"
    assert response.status_code == 503, response.text
    return "journal" if "journal" in response.json()["detail"] else "timeout"


def test_with_the_journal_off_only_the_ledger_is_written(own):
    cfg = quick(own.settings, journal=False)
    with ServerThread(create_app(cfg)) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        acked = post_some(http, uuid.uuid4().hex[:8], 3)
    assert not list(cfg.journal_dir.glob("slots/*/seg-*.log"))
    assert {a.event_id for a in ledger.acknowledged(cfg)} == acked


def test_a_journal_line_cut_short_by_a_crash_is_ignored():
    line = b'UserEvents\t1\t42\tev-1\tuser-1\t{"a":1}\n'
    parsed = parse_line(line)
    assert parsed is not None and parsed[:3] == ("UserEvents", 1, 42) and parsed[3].event_id == "ev-1"
    assert parse_line(line[:-1]) is None
    assert parse_line(line[:20] + b"\n") is None


def test_records_awaiting_their_final_check_add_no_objects_for_the_garbage_collector():
    """At thousands of records a second, `journal_retention_s` of per-record objects made every
    full collection of the API's process a pause of 100 ms and more: what waits for the final
    check is kept as runs, one tracked object per segment and round whatever their size."""
    segments = [Segment(Path(f"seg-{i}.log")) for i in range(2)]
    entries = [Entry("UserEvents", 0, n, n * 7, 1.0 + n, segments[n // 15_000], n * 100, 100) for n in range(30_000)]
    gc.collect()
    before = len(gc.get_objects())
    runs = Checked.runs(entries)
    del entries
    gc.collect()
    assert [(r.segment, len(r), r.offsets[0], r.crcs[-1]) for r in runs] == [
        (segments[0], 15_000, 0, 14_999 * 7),
        (segments[1], 15_000, 15_000, 29_999 * 7),
    ]
    assert runs[1].acked == 30_000.0  # due when its last record is
    assert len(gc.get_objects()) - before < 100


def test_a_record_lost_after_its_first_check_is_found_again_by_offset_and_crc(tmp_path):
    """The broker that lost a record gives its offset to the next one, which the journal holds
    too: the lost record is told from it by its CRC, and only it is published again."""
    lost, later = Outgoing(b"u1", b'{"n":1}', "ev-lost"), Outgoing(b"u1", b'{"n":2}', "ev-later")
    lines = [_line("UserEvents", 3, 10, lost), _line("UserEvents", 4, 10, later), _line("UserEvents", 3, 10, later)]
    segment = Segment(tmp_path / "seg-1.log")
    segment.path.write_bytes(b"".join(lines))
    run = Checked([Entry("UserEvents", 3, 10, zlib.crc32(lost.value), 1.0, segment, 0, len(lines[0]))])
    journal = Journal(make_settings(tmp_path / "run"))
    (found,) = journal.entries(run, {10: run.crcs[0]})
    assert (found.partition, found.offset, found.pos, found.length) == (3, 10, 0, len(lines[0]))
    assert journal.read(found) == lost
