"""The topic browser's JSON API (the page `/topics`): topics, records, search, rejects, replay.

Unlike the main page's calls, these ask the stores at each call (the broker has no copy in
the read model); the blocking ones are plain functions, which FastAPI runs in its threadpool,
and each store's client has a timeout, so a store that is down answers as such.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pymongo.errors import PyMongoError

from . import topic_schemas as ts
from .browse import LATEST_MAX, KafkaDown
from .find import SCAN_DEFAULT, SCAN_MAX
from .replay import ReplayFailed
from .routes import _answered

router = APIRouter(prefix="/api", tags=["topic browser"])

Topic = Annotated[str, Path(min_length=1, max_length=249)]
Partition = Annotated[int, Path(ge=0)]


def _state(request: Request) -> Any:
    return request.app.state.dashboard


@router.get("/topics", response_model=ts.Topics)
def topics(request: Request) -> dict[str, Any]:
    """Every topic with its partitions' offsets and each consumer group's committed offsets and lag."""
    now = datetime.now(UTC)
    try:
        found = _state(request).browser.overview()
    except KafkaDown as e:
        return {"as_of": now, "topics": [], "source": _answered("kafka", e)}
    return {"as_of": now, "topics": found, "source": _answered("kafka", detail=f"{len(found)} topics")}


def _kafka_errors(e: Exception) -> HTTPException:
    if isinstance(e, LookupError):
        return HTTPException(404, str(e))
    return HTTPException(503, f"kafka is down: {e}")


@router.get(
    "/topics/{topic}/{partition}",
    response_model=ts.LatestRecords,
    responses={404: {"description": "no such partition"}, 503: {"description": "the broker did not answer"}},
)
def latest(
    request: Request, topic: Topic, partition: Partition, n: Annotated[int, Query(ge=1, le=LATEST_MAX)] = 20
) -> dict[str, Any]:
    """The partition's latest `n` records, newest first."""
    try:
        return _state(request).browser.latest(topic, partition, n)
    except (LookupError, KafkaDown) as e:
        raise _kafka_errors(e) from e


@router.get(
    "/topics/{topic}/{partition}/{offset}",
    response_model=ts.KafkaRecord,
    responses={404: {"description": "no record at that offset"}, 503: {"description": "the broker did not answer"}},
)
def record(request: Request, topic: Topic, partition: Partition, offset: Annotated[int, Path(ge=0)]) -> dict[str, Any]:
    """The record at `offset`."""
    try:
        return _state(request).browser.at(topic, partition, offset)
    except (LookupError, KafkaDown) as e:
        raise _kafka_errors(e) from e


@router.get("/find/{event_id}", response_model=ts.FindResult)
def find(
    request: Request,
    event_id: Annotated[str, Path(min_length=1, max_length=128)],
    scan: Annotated[int, Query(ge=1, le=SCAN_MAX, description="records of each partition searched")] = SCAN_DEFAULT,
) -> dict[str, Any]:
    """Every place that holds a record with this EventId: MongoDB's events and dead letters, the
    lake's purchases, the quarantine, and the latest `scan` records of each partition of the
    event topics."""
    return _state(request).finder.find(event_id, scan)


@router.get("/rejects", response_model=ts.Rejects)
def rejects(request: Request) -> dict[str, Any]:
    """The dead letters and the quarantine grouped by reason (the most frequent first), with
    counts, how many were replayed, and a few records of each."""
    st = _state(request)
    out: dict[str, Any] = {"dead_letters": None, "quarantine": None, "sources": []}
    try:
        out["dead_letters"] = st.dead_letters.grouped()
        out["sources"].append(_answered("mongodb"))
    except PyMongoError as e:
        out["sources"].append(_answered("mongodb", e))
    try:
        out["quarantine"] = st.quarantine.grouped()
        out["sources"].append(_answered("lake"))
    except Exception as e:  # noqa: BLE001 - S3 (or MongoDB's replay marks) did not answer: shown as down
        out["sources"].append(_answered("lake", e))
    return out


@router.post(
    "/replay",
    responses={
        409: {"description": "a replay is running"},
        502: {"description": "the replay failed without a summary"},
        503: {"description": "the replay component is not installed"},
        504: {"description": "the replay did not finish in time"},
    },
)
async def replay(request: Request, body: ts.ReplayRequest) -> dict[str, Any]:
    """Replay the dead letters or the quarantine (of one reason), as `invoke replay` does:
    the replay CLI's JSON summary (`read`, `sent`, `already_stored`, `already_replayed`,
    `rejected`, `dry_run`, ...) and its `exit_code`."""
    try:
        return await _state(request).replayer.run(body.source, body.reason, body.dry_run)
    except ReplayFailed as e:
        raise HTTPException(e.status, str(e)) from e
