"""MongoDB client factory (pymongo): every client of the code base is built here.

With `MongoSettings.journal` (the default), the client's write concern asks for the journal
(`j: true`): the server answers a write only once it is in its journal, so a write that an
acknowledgement or a Kafka offset commit depends on survives a crash of the server. pymongo
sends that write concern with every write command and `findAndModify`. Without it, the URI's
write concern (or the server's default) applies.

The pipeline's collections are named here too (`collections`): the batch writes them, the
audit, the dashboard and `invoke batch-check` read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database

from shopstream.settings import BatchSettings, MongoSettings

MARKS_COLLECTION = "user_events_offset_marks"  # one document per (group, topic, partition): its last marks
DRAIN_REWINDS_COLLECTION = "user_events_rewinds"  # the drain's offset rewinds (shopstream.rewinds)
LEASES_COLLECTION = "shopstream_leases"
QUARANTINE_REPLAYS_COLLECTION = "quarantine_replays"  # `invoke replay --quarantine`'s marks, _id quarantine_mark_id


def quarantine_mark_id(row: Mapping[str, Any]) -> str:
    """A quarantined record's mark in QUARANTINE_REPLAYS_COLLECTION: where it was in the topic
    (a quarantine row's KafkaTopic, KafkaPartition and KafkaOffset)."""
    return f"{row['KafkaTopic']}/{row['KafkaPartition']}/{row['KafkaOffset']}"


def mongo_client(cfg: MongoSettings, timeout_ms: int = 5000) -> MongoClient:
    """`serverMonitoringMode="poll"`: the client checks the server with one `hello` every 10 s
    instead of holding a streaming monitor connection open (plus a second one that times round
    trips), which the embedded server serves with a thread per client waking 4 times a second."""
    durability: dict[str, Any] = {"journal": True} if cfg.journal else {}
    return MongoClient(
        cfg.uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True, serverMonitoringMode="poll", **durability
    )


def database(client: MongoClient, cfg: MongoSettings) -> Database:
    return client[cfg.database]


def mongo_health(client: MongoClient) -> str:
    """The server answers a ping (raises when it does not): `invoke status` and the dashboard."""
    reply = client.admin.command("ping")
    if reply.get("ok") != 1:
        raise RuntimeError(f"ping answered {reply}")
    return "ping ok"


@dataclass(frozen=True)
class Collections:
    events: Collection
    counts: Collection
    dead_letters: Collection
    agg_batches: Collection
    leases: Collection
    marks: Collection
    rewinds: Collection
    sessions: Collection
    session_days: Collection
    session_day_users: Collection
    product_engagement: Collection
    session_lake_files: Collection  # the lake files whose orders the sessions have
    session_runs: Collection  # the logical session of each sessions run under way (or killed)
    quarantine_replays: Collection  # the quarantined records `invoke replay` has sent again


def collections(db: Database, cfg: BatchSettings) -> Collections:
    """The batch's collections in the pipeline's database (created by `shopstream_batch.store`)."""
    return Collections(
        events=db[cfg.events_collection],
        counts=db[cfg.counts_collection],
        dead_letters=db[cfg.dead_letter_collection],
        agg_batches=db[f"{cfg.counts_collection}_batches"],
        leases=db[LEASES_COLLECTION],
        marks=db[MARKS_COLLECTION],
        rewinds=db[DRAIN_REWINDS_COLLECTION],
        sessions=db[cfg.sessions_collection],
        session_days=db[f"{cfg.sessions_collection}_days"],
        session_day_users=db[f"{cfg.sessions_collection}_day_users"],
        product_engagement=db[f"{cfg.sessions_collection}_products"],
        session_lake_files=db[f"{cfg.sessions_collection}_lake_files"],
        session_runs=db[f"{cfg.sessions_collection}_runs"],
        quarantine_replays=db[QUARANTINE_REPLAYS_COLLECTION],
    )
