"""Task 3: sessions, their daily metrics and product engagement, kept up to date incrementally.

Each run reads only what is new since the last one:
- the aggregation batches applied since (their events, by the (AggBatch, StoredAt) index):
  every stored event is in exactly one applied batch, once the aggregation has counted it;
- the lake's committed files not read yet (their purchases; `shopstream.adapters.lake`).

Each new piece is merged into the sessions it touches (`sessionize`), a hundred sessions to
a MongoDB transaction that also applies what the change does to the day sums, the per-day
users and the product engagement. A merge remembers what it merged (the batch in the
session's `Batches`, the order in its `Orders`), so a piece merged again after a crash, or by
a retry, changes nothing: the figures stay exact whatever stops a run. A batch or a file is
marked done once all of its sessions are. What the run's budget
(`BatchSettings.sessions_max_seconds`) leaves is the next run's.

A run's transactions share one logical session, recorded in `sessions_runs` before the first
and cleared at the end (`end_left_behind`): a run killed mid-transaction leaves it open on the
server, holding the day sums every transaction writes, so the next run ends it first instead
of meeting write conflicts until the server's transaction lifetime (60 s) reaps it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import urllib3
from minio.error import S3Error
from pymongo import ASCENDING, ReplaceOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import CollectionInvalid

from shopstream.adapters.lake import LakeFiles
from shopstream.adapters.mongo import Collections, collections, database, mongo_client
from shopstream.adapters.s3 import s3_client
from shopstream.contracts.mongo import mongo_validator
from shopstream.contracts.sessions import SessionRecord
from shopstream.settings import Settings, get_settings

from .batches import APPLIED, IN_CHUNK
from .sessionize import Deltas, cents, merge_events, merge_orders
from .store import ensure_collections

log = logging.getLogger(__name__)

LAKE_TIMEOUT_S = 10.0  # per S3 request: a lake that does not answer holds up no event
LAKE_ERRORS = (S3Error, urllib3.exceptions.HTTPError, OSError)

EVENT_FIELDS = {"UserId": 1, "SessionId": 1, "EventName": 1, "TimeStamp": 1, "Attributes.ProductId": 1, "Enrichment": 1}
LAKE_COLUMNS = ["SessionId", "OrderId", "UserId", "TimeStamp", "TotalPrice", "Products"]
BOOKKEEPING: dict[str, dict[str, Any]] = {  # fields the merge keeps beside the contract's
    "FirstEventId": {"bsonType": ["string", "null"]},
    "EventsEnd": {"bsonType": ["date", "null"]},
    "Batches": {"bsonType": "array"},
}


@dataclass
class SessionsReport:
    batches: int = 0
    events: int = 0
    files: int = 0
    orders: int = 0
    sessions_written: int = 0
    remaining_batches: int = 0
    remaining_files: int = 0
    lake_error: str | None = None  # the lake could not be read: its new files wait for the next run
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_session_collections(db: Database, colls: Collections) -> None:
    """The sessions' validator (from the contract) and the indexes their readers use (idempotent)."""
    validator = mongo_validator(SessionRecord, rename={"SessionId": "_id"}, extra=BOOKKEEPING)
    try:
        db.create_collection(colls.sessions.name, validator=validator)
    except CollectionInvalid:
        db.command("collMod", colls.sessions.name, validator=validator)
    colls.sessions.create_index([("Start", ASCENDING)])
    colls.sessions.create_index([("UserId", ASCENDING), ("Start", ASCENDING)])
    colls.session_day_users.create_index([("Day", ASCENDING)])
    # the applied batches the sessions have not merged yet, oldest first
    colls.agg_batches.create_index([("Sessions", ASCENDING), ("state", ASCENDING), ("created", ASCENDING)])


def _apply(colls: Collections, s: ClientSession, changes: list[tuple[dict | None, dict]]) -> None:
    """Write changed sessions and what they change in the sums, in the transaction `s`."""
    deltas = Deltas()
    for old, new in changes:
        deltas.change(old, new)
    colls.sessions.bulk_write([ReplaceOne({"_id": new["_id"]}, new, upsert=True) for _, new in changes], session=s)
    users_by_day: dict[str, int] = defaultdict(int)
    if users := dict(deltas.user_incs()):  # a user counts in a day while any session of theirs does
        ids = {f"{day}|{user}": (day, n) for (day, user), n in users.items()}
        colls.session_day_users.bulk_write(
            [
                UpdateOne(
                    {"_id": i},
                    {"$inc": {"N": n}, "$setOnInsert": {"Day": day, "UserId": i.split("|", 1)[1]}},
                    upsert=True,
                )
                for i, (day, n) in ids.items()
            ],
            session=s,
        )
        for doc in colls.session_day_users.find({"_id": {"$in": list(ids)}}, {"N": 1}, session=s):
            day, n = ids[doc["_id"]]
            was, now = doc["N"] - n > 0, doc["N"] > 0
            users_by_day[day] += int(now) - int(was)
    days = dict(deltas.day_incs())
    for day, n in users_by_day.items():
        if n:
            days.setdefault(day, {})["Users"] = n
    if days:
        colls.session_days.bulk_write(
            [UpdateOne({"_id": d}, {"$inc": inc, "$setOnInsert": {"Day": d}}, upsert=True) for d, inc in days.items()],
            session=s,
        )
    if products := [UpdateOne({"_id": p}, {"$inc": inc}, upsert=True) for p, inc in deltas.product_incs()]:
        colls.product_engagement.bulk_write(products, session=s)


def end_left_behind(colls: Collections, run: ClientSession) -> int:
    """End the logical sessions earlier runs recorded and did not clear, then record `run`'s;
    how many were ended.

    A run killed (SIGKILL, out of memory) mid-transaction leaves that transaction open on the
    server, and neither mongod nor the embedded server ends it when the connection drops: its
    writes hold their documents, the day sums every transaction writes among them, until the
    transaction lifetime (60 s) expires, and until then each transaction of the next run fails
    on a write conflict and is retried. `killSessions` aborts it now. A run still alive (two
    runs at once, which the DAG does not start) loses only its current transaction, which
    `with_transaction` retries."""
    left = [d["_id"] for d in colls.session_runs.find({}, {"_id": 1})]
    if left:
        colls.session_runs.database.client.admin.command("killSessions", [{"id": i} for i in left])
        colls.session_runs.delete_many({"_id": {"$in": left}})
        log.warning("ended %d session(s) an earlier run left behind (killed mid-run?)", len(left))
    colls.session_runs.insert_one({"_id": run.session_id["id"], "At": datetime.now(UTC), "Pid": os.getpid()})
    return len(left)


def _merge(
    colls: Collections,
    pieces: dict[str, list[dict[str, Any]]],
    merge: Callable[[dict | None, str, list], dict | None],
    run: ClientSession | None = None,
) -> int:
    """Merge each session's piece, IN_CHUNK sessions to a transaction (in `run`, the run's
    logical session, or else a session of their own); how many sessions changed."""
    ids, written = list(pieces), 0
    client = colls.sessions.database.client
    for i in range(0, len(ids), IN_CHUNK):
        chunk = ids[i : i + IN_CHUNK]

        def step(s: ClientSession, chunk: list[str] = chunk) -> int:
            old = {d["_id"]: d for d in colls.sessions.find({"_id": {"$in": chunk}}, session=s)}
            changes = [(old.get(sid), new) for sid in chunk if (new := merge(old.get(sid), sid, pieces[sid]))]
            if changes:
                _apply(colls, s, changes)
            return len(changes)

        with nullcontext(run) if run is not None else client.start_session() as s:
            written += s.with_transaction(step)
    return written


def merge_batch(colls: Collections, batch_id: str, run: ClientSession | None = None) -> tuple[int, int]:
    """Merge one applied aggregation batch's events; (events, sessions changed)."""
    pieces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    n = 0
    for e in colls.events.find({"AggBatch": batch_id}, EVENT_FIELDS):
        pieces[e["SessionId"]].append(e)
        n += 1
    written = _merge(colls, pieces, lambda doc, _sid, events: merge_events(doc, events, batch_id), run)
    colls.agg_batches.update_one({"_id": batch_id}, {"$set": {"Sessions": datetime.now(UTC)}})
    return n, written


def orders_by_session(table: pa.Table) -> dict[str, list[dict[str, Any]]]:
    """The lake's purchase rows as orders, grouped by SessionId."""
    pieces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in table.select(LAKE_COLUMNS).to_pylist():
        at = r["TimeStamp"] if r["TimeStamp"].tzinfo else r["TimeStamp"].replace(tzinfo=UTC)
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # as MongoDB will keep it
        pieces[r["SessionId"]].append(
            {
                "OrderId": r["OrderId"],
                "UserId": r["UserId"],
                "At": at,
                "Cents": cents(r["TotalPrice"]),
                "Products": sorted({line["ProductId"] for line in r["Products"]}),
            }
        )
    return pieces


def merge_orders_of(colls: Collections, table: pa.Table, run: ClientSession | None = None) -> tuple[int, int]:
    """Merge a table of lake purchases; (orders, sessions changed)."""
    pieces = orders_by_session(table)
    return table.num_rows, _merge(colls, pieces, merge_orders, run)


def _pending_batches(colls: Collections) -> Iterator[dict[str, Any]]:
    return colls.agg_batches.find({"Sessions": None, "state": APPLIED}, {"_id": 1}).sort("created", ASCENDING)


def update_sessions(settings: Settings | None = None, budget_s: float | None = None) -> SessionsReport:
    """Merge what is new (applied batches, committed lake files) into the sessions, within the budget.
    Batches and files alternate, so neither side waits for the other's backlog."""
    settings = settings or get_settings()
    cfg = settings.batch
    started = time.monotonic()
    deadline = started + (cfg.sessions_max_seconds if budget_s is None else budget_s)
    client = mongo_client(settings.mongo)
    report = SessionsReport()
    run = client.start_session()  # every transaction of this run, under one logical session
    try:
        db = database(client, settings.mongo)
        end_left_behind(collections(db, cfg), run)  # before anything waits on what they hold
        colls = ensure_collections(db, cfg)
        ensure_session_collections(db, colls)
        lake = LakeFiles(s3_client(settings.s3, timeout_s=LAKE_TIMEOUT_S), settings)
        done = {d["_id"] for d in colls.session_lake_files.find({}, {"_id": 1})}
        try:
            files = sorted(lake.committed() - done)
        except LAKE_ERRORS as e:  # the events need not wait for the lake: its files wait for the next run
            log.warning("the lake is not readable (%s); merging events only", e)
            report.lake_error, files = f"{type(e).__name__}: {e}"[:300], []
        batches = [b["_id"] for b in _pending_batches(colls)]
        longest = 0.0  # the longest step so far: another starts only while twice that is left
        while (batches or files) and (not longest or deadline - time.monotonic() > 2 * longest):
            t0 = time.monotonic()
            if batches:
                events, written = merge_batch(colls, batches.pop(0), run)
                report.batches, report.events = report.batches + 1, report.events + events
                report.sessions_written += written
            if files:
                key = files.pop(0)
                try:
                    table = lake.read([key], columns=LAKE_COLUMNS)
                except LAKE_ERRORS as e:
                    log.warning("the lake is not readable (%s); its files wait for the next run", e)
                    report.lake_error, files = f"{type(e).__name__}: {e}"[:300], [key, *files]
                    report.remaining_files = len(files)
                    files = []
                    continue
                orders, written = merge_orders_of(colls, table, run) if table is not None else (0, 0)
                colls.session_lake_files.update_one({"_id": key}, {"$set": {"At": datetime.now(UTC)}}, upsert=True)
                report.files, report.orders = report.files + 1, report.orders + orders
                report.sessions_written += written
            longest = max(longest, time.monotonic() - t0)
        report.remaining_batches = len(batches)
        report.remaining_files = report.remaining_files or len(files)
        colls.session_runs.delete_one({"_id": run.session_id["id"]})  # ended well: none left behind
    finally:
        run.end_session()
        client.close()
    report.seconds = round(time.monotonic() - started, 3)
    log.info("sessions done: %s", report.as_dict())
    return report
