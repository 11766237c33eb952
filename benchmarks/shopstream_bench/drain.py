"""The batch drain: records/s from Kafka into MongoDB, next to MongoDB's own insert rate,
and what durable writes cost.

Needs: the Kafka broker and MongoDB (`isolated_stack(["kafka", "mongo"])`); this stage starts
two more MongoDB servers beside them, one with `--sync-on-commit`, for the durability figures.

The UserEvents topic is filled once with N valid records (pre-serialised `UserEventRecord`
JSON, as the API publishes them). Each repeat drains all N with `drain_user_events` as the
Airflow task runs it (a new consumer group and a new database each time, so every repeat
starts from offset 0 into empty collections, validator and indexes created by the drain itself):
records/s = N / wall time of the call (consumer group join, fetch, parse and validate,
insert, offset commits). It does so twice: with the settings' journaled write concern
(`j: true`, the default) and without it (`SHOPSTREAM_MONGO__JOURNAL=false`).

Limit, same run: raw `insert_many(ordered=False)` of the same documents (exactly what the
drain builds, `event_document`) into a fresh collection with the same validator and indexes,
in batches of the drain's batch size, with the drain's write concern; only the inserts are
timed.

What durability costs, same run: the first 20,000 of those documents inserted in batches of
100 (one journal flush per 100 documents, more often than the drain's 5,000; the kill -9 test
drains in batches of 100 too), each variant as a ratio to the insert with the server's
default write concern (`w: 1`, no `j`): `j: true`; a server with `--sync-on-commit` (fsync of
the journal at every commit) and no `j`; both. Two servers of their own take these inserts
and nothing else, one with the flag and one without, so they differ in the flag only. The
four variants insert 5,000 documents each in turn, into a database each, until all are in;
the two drains take turns going first.
"""

from __future__ import annotations

import statistics
import time
import uuid

from rich.console import Console

from shopstream.adapters.mongo import mongo_client
from shopstream.contracts import UserEventRecord
from shopstream.settings import Settings
from shopstream_batch.drain import drain_user_events
from shopstream_batch.store import ensure_collections, event_document
from shopstream_stack.isolated import free_port
from shopstream_stack.mongo import MongoServer

from .api import VISITORS, enrichment_seconds, event_records
from .harness import Figure, produce

SERVERS = ["kafka", "mongo"]
console = Console()

DURABILITY_RECORDS, DURABILITY_BATCH = 20_000, 100  # what the durability variants insert, and by how many
BASELINE = "default write concern"
# raw insert_many variants: (label, on the server with --sync-on-commit, j: true)
INSERTS = [
    (BASELINE, False, False),
    ("j: true", False, True),
    ("--sync-on-commit", True, False),
    ("j: true and --sync-on-commit", True, True),
]


def _with_journal(settings: Settings, journal: bool, **mongo) -> Settings:
    return settings.model_copy(update={"mongo": settings.mongo.model_copy(update={"journal": journal, **mongo})})


def _own_server(settings: Settings, sync_on_commit: bool) -> MongoServer:
    """A MongoDB of this stage's own, in a folder of the stack's, with or without --sync-on-commit."""
    st = settings.model_copy(
        update={
            "run_dir": settings.run_dir / f"durability-{'sync-on-commit' if sync_on_commit else 'default'}",
            "mongo": settings.mongo.model_copy(
                update={"uri": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"}
            ),
        }
    )
    return MongoServer(st, sync_on_commit=sync_on_commit)


def _insert_seconds(
    variants: dict[str, Settings], docs: list[dict], batch: int, slice_: int = 5_000
) -> dict[str, tuple[float, int]]:
    """Raw insert_many of `docs`, in batches of `batch`, into a fresh database per variant:
    {variant: (seconds of the inserts, documents stored)}. With several variants, a slice of
    the documents at a time, round-robin, so a change in the machine's load falls on all alike."""
    clients = {name: mongo_client(cfg.mongo) for name, cfg in variants.items()}
    dbs = {name: client[f"bench_insert_{uuid.uuid4().hex[:8]}"] for name, client in clients.items()}
    seconds = dict.fromkeys(variants, 0.0)
    try:
        events = {name: ensure_collections(db, variants[name].batch).events for name, db in dbs.items()}
        for part in range(0, len(docs), slice_):
            for name, coll in events.items():
                t0 = time.perf_counter()
                for start in range(part, min(part + slice_, len(docs)), batch):
                    coll.insert_many([dict(d) for d in docs[start : min(start + batch, part + slice_)]], ordered=False)
                seconds[name] += time.perf_counter() - t0
        return {name: (seconds[name], coll.estimated_document_count()) for name, coll in events.items()}
    finally:
        for name, client in clients.items():
            client.drop_database(dbs[name].name)
            client.close()


def run(
    settings: Settings, quick: bool = False, records: int | None = None, repeats: int | None = None
) -> list[Figure]:
    n = records or (10_000 if quick else 100_000)
    repeats = repeats or (2 if quick else 3)
    topic = settings.kafka.user_events_topic
    console.print(f"[bold]drain[/bold]: {n:,} records from {topic} into MongoDB, x {repeats}")
    records_ = event_records(n, f"drain{uuid.uuid4().hex[:6]}")
    produce(settings, topic, records_, f"filling {topic} with {n:,} events")

    # the documents the drain would build for them (partition/offset are not known here; any do)
    parsed = [UserEventRecord.model_validate_json(v) for _k, v in records_]
    docs = [event_document(r, 0, i) for i, r in enumerate(parsed)]
    batch = settings.batch.batch_size
    small = docs[:DURABILITY_RECORDS]
    drain_s: dict[bool, list[float]] = {True: [], False: []}  # journal -> seconds
    limit_s: list[float] = []  # raw insert_many as the drain does it
    insert_s: dict[str, list[float]] = {label: [] for label, *_ in INSERTS}  # the durability variants
    problems: list[str] = []
    servers = {flag: _own_server(settings, flag) for flag in (False, True)}  # the same history, but the flag
    for server in servers.values():
        server.start()
    try:
        for i in range(repeats):
            for journal in (True, False) if i % 2 == 0 else (False, True):  # neither always first
                tag = uuid.uuid4().hex[:8]
                cfg = _with_journal(settings, journal, database=f"bench_drain_{tag}")
                cfg = cfg.model_copy(
                    update={
                        "batch": settings.batch.model_copy(
                            update={"consumer_group": f"bench-drain-{tag}", "max_seconds": 3600.0}
                        )
                    }
                )
                t0 = time.perf_counter()
                report = drain_user_events(cfg)
                drain_s[journal].append(time.perf_counter() - t0)
                if report.stored != n or report.remaining or report.dead_lettered:
                    problems.append(
                        f"run {i + 1} (j: {journal}): stored {report.stored:,} of {n:,} "
                        f"(remaining {report.remaining}, dead-lettered {report.dead_lettered})"
                    )
                client = mongo_client(cfg.mongo)
                client.drop_database(cfg.mongo.database)
                client.close()
            seconds, stored = _insert_seconds({"limit": settings}, docs, batch)["limit"]
            limit_s.append(seconds)
            if stored != n:
                problems.append(f"run {i + 1}: insert_many stored {stored:,} of {n:,}")
            variants = {label: _with_journal(servers[flag].settings, journal) for label, flag, journal in INSERTS}
            for label, (seconds, stored) in _insert_seconds(variants, small, DURABILITY_BATCH).items():
                insert_s[label].append(seconds)
                if stored != len(small):
                    problems.append(f"run {i + 1}: insert_many ({label}) stored {stored:,} of {len(small):,}")
            console.print(
                f"  run {i + 1}/{repeats}: drain {n / drain_s[True][-1]:,.0f} records/s with j: true, "
                f"{n / drain_s[False][-1]:,.0f} without; insert_many {n / limit_s[-1]:,.0f}; "
                f"by {DURABILITY_BATCH}: "
                + ", ".join(f"{label} {len(small) / s[-1]:,.0f}" for label, s in insert_s.items())
            )
    finally:
        for server in servers.values():
            server.stop()
    enrich_s = [enrichment_seconds((r.ClientIp, r.UserAgent) for r in parsed) for _ in range(repeats)]
    rate = {journal: n / statistics.median(s) for journal, s in drain_s.items()}
    limit = n / statistics.median(limit_s)
    inserts = {label: len(small) / statistics.median(s) for label, s in insert_s.items()}
    ok = "Every record stored once."
    note = (
        f"{n:,} records, batches of {batch:,}; wall time of drain_user_events including the consumer "
        "group join, with the settings' journaled write concern (j: true). " + ("; ".join(problems) if problems else ok)
    )
    figures = [
        Figure(
            f"drain UserEvents -> MongoDB ({n:,} records)",
            rate[True],
            "records/s",
            limit_name="raw insert_many of the same documents (j: true)",
            limit_value=limit,
            target="every record stored once (no speed target)",
            met=not problems,
            samples=[n / s for s in drain_s[True]],
            note=note,
            other_limits={"the same drain without j (SHOPSTREAM_MONGO__JOURNAL=false)": rate[False]},
        )
    ]
    figures.append(
        Figure(
            f"enrichment's share of the drain ({n:,} records, {VISITORS:,} senders)",
            statistics.median(enrich_s),
            "s",
            limit_name="the drain's own time for them (j: true), same run",
            limit_value=statistics.median(drain_s[True]),
            target="<= 0.1 (enrichment takes at most 10% of the drain's throughput)",
            met=statistics.median(enrich_s) <= 0.1 * statistics.median(drain_s[True]),
            samples=enrich_s,
            note="what the drain adds per record to read its envelope (user agent, GeoLite2 city) as it "
            "does it, caches emptied first: the records' ClientIp and UserAgent are those of "
            f"{VISITORS:,} visitors drawn as the generator draws them, one per user",
        )
    )
    for label, *_ in INSERTS[1:]:
        figures.append(
            Figure(
                f"insert_many with {label} ({len(small):,} records, batches of {DURABILITY_BATCH})",
                inserts[label],
                "records/s",
                limit_name=f"insert_many with the {BASELINE} (w: 1), same run",
                limit_value=inserts[BASELINE],
                target="what durability costs (no target)",
                samples=[len(small) / s for s in insert_s[label]],
                note="ratio to the same run's insert_many without j, on a server without --sync-on-commit started "
                "with the one that has it, for these inserts only. " + ("; ".join(problems) if problems else ok),
            )
        )
    return figures
