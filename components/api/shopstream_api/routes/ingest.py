"""PUT /SendEvent and POST /PurchasedItems: validate, stamp, publish, answer after the ack.

Served by `IngestRoute` (the body parsed and validated once, no per-request dependency
solving); the signatures below are what FastAPI documents. The published record is the
validated client model plus what the server adds (`shopstream.contracts.Stamp`: the
client model's JSON, written by pydantic-core, with the EventId, IngestedAt, ClientIp,
UserAgent and Source appended; the address as `client.ClientIdentity` reads and truncates it,
the Source as `auth.Authenticator` found the write key),
never validated again: its fields come from a validated model, a validated key (or Event-Ids) or a random
UUID from `uuid_utils`, the standard format in a twentieth of `uuid.uuid4`'s time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import uuid_utils
from fastapi import APIRouter, Body, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from shopstream.contracts import (
    MAX_PURCHASES_PER_REQUEST,
    Purchase,
    Stamp,
    UserEvent,
)

from ..auth import SOURCE
from ..examples import PURCHASE_EXAMPLE, USER_EVENT_EXAMPLE
from ..ingest_route import IngestRoute
from ..ingestor import Ingestor
from ..journal import JournalFull, JournalUnavailable, Outgoing
from ..publisher import BrokerUnavailable

# bodies parsed by jsonbody: 400 when malformed JSON, 415 for another Content-Type, JSON when it has none
router = APIRouter(tags=["ingestion"], route_class=IngestRoute, strict_content_type=False)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$",
        description="Optional. Reused on a retry, it gives the records the same EventId, "
        "so stores keep one copy. For an array, record i gets EventId `<key>:<i>`.",
    ),
]

EVENT_ID = r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}"  # shopstream.contracts.EventId, as a pattern part
EventIds = Annotated[
    str | None,
    Header(
        alias="Event-Ids",
        min_length=1,
        pattern=rf"^{EVENT_ID}( *, *{EVENT_ID})*$",
        description="Optional, instead of Idempotency-Key: each purchase's own EventId, in order, "
        "comma-separated (a replay of historical records keeps their ids: `invoke replay`). "
        "422 when the count differs from the purchases' or Idempotency-Key is sent too.",
    ),
]

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Kafka did not acknowledge in time, or the acknowledgement journal is full or "
        "could not be written. The records may or may not have been stored: retry "
        "after Retry-After with the same Idempotency-Key (the stores keep one copy "
        "per EventId)"
    },
    401: {"description": "No write key where one is required, or an unknown one (send `Authorization: Bearer <key>`)"},
    403: {"description": "The write key has been revoked"},
    429: {"description": "The write key is over its rate: retry after Retry-After seconds"},
    400: {
        "description": "Malformed JSON: not UTF-8, NaN or Infinity, a number beyond a 64-bit float, "
        "a key twice in one object, or nested too deep"
    },
    413: {"description": "Body larger than the configured maximum"},
    415: {"description": "Content-Type is not application/json (or application/*+json)"},
}


class SendEventResponse(BaseModel):
    EventId: str
    IngestedAt: datetime
    Partition: int
    Offset: int


class PurchasedItemsResponse(BaseModel):
    Accepted: int
    EventIds: list[str]


def _unavailable(e: BrokerUnavailable | JournalFull | JournalUnavailable) -> HTTPException:
    what = "event broker unavailable" if isinstance(e, BrokerUnavailable) else "acknowledgement journal unavailable"
    return HTTPException(
        503,
        detail=f"{what}: {e}. The records may or may not have been stored; "
        "retry with the same Idempotency-Key (the stores keep one copy per EventId)",
        headers={"Retry-After": "1"},
    )


def _given_ids(header: str, count: int, idempotency_key: str | None) -> list[str]:
    """The Event-Ids header's ids (its pattern checked each), one per purchase; a 422 otherwise."""
    ids = [i.strip() for i in header.split(",")]
    why = None
    if idempotency_key is not None:
        why = "send either Event-Ids or Idempotency-Key, not both"
    elif len(ids) != count:
        why = f"Event-Ids names {len(ids)} EventIds for {count} purchases: one per purchase, in order"
    elif len(set(ids)) != count:
        why = "Event-Ids names an EventId twice"
    if why:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("header", "Event-Ids"), "msg": why, "input": header}]
        )
    return ids


def _stamp(request: Request) -> Stamp:
    """The envelope of this request's records: now, and who sent them (address, agent, write key)."""
    scope = request.scope
    return Stamp(
        datetime.now(UTC), request.app.state.client.address(scope), request.headers.get("user-agent"), scope.get(SOURCE)
    )


async def _publish(ingestor: Ingestor, topic: str, records: list[Outgoing]):
    try:
        return await ingestor.publish(topic, records)
    except (BrokerUnavailable, JournalFull, JournalUnavailable) as e:
        raise _unavailable(e) from e


@router.put("/SendEvent", response_model=SendEventResponse, responses=UNAVAILABLE, summary="Ingest one user event")
async def send_event(
    request: Request,
    event: Annotated[UserEvent, Body(openapi_examples={"page visit": {"value": USER_EVENT_EXAMPLE}})],
    idempotency_key: IdempotencyKey = None,
) -> SendEventResponse:
    state = request.app.state
    stamp, event_id = _stamp(request), idempotency_key or str(uuid_utils.uuid4())
    record = Outgoing(event.UserId.encode(), stamp.json(event, event_id), event_id)
    (ack,) = await _publish(state.ingestor, state.settings.kafka.user_events_topic, [record])
    return SendEventResponse.model_construct(
        EventId=event_id, IngestedAt=stamp.ingested_at, Partition=ack.partition, Offset=ack.offset
    )


@router.post(
    "/PurchasedItems",
    response_model=PurchasedItemsResponse,
    responses=UNAVAILABLE,
    summary=f"Ingest 1 to {MAX_PURCHASES_PER_REQUEST} purchases",
)
async def purchased_items(
    request: Request,
    purchases: Annotated[
        list[Purchase],
        Body(openapi_examples={"one order": {"value": [PURCHASE_EXAMPLE]}}),
        Field(min_length=1, max_length=MAX_PURCHASES_PER_REQUEST),
    ],
    idempotency_key: IdempotencyKey = None,
    event_ids: EventIds = None,
) -> PurchasedItemsResponse:
    state = request.app.state
    stamp = _stamp(request)
    if event_ids is not None:
        ids = _given_ids(event_ids, len(purchases), idempotency_key)
    else:
        ids = [f"{idempotency_key}:{i}" if idempotency_key else str(uuid_utils.uuid4()) for i in range(len(purchases))]
    records = [Outgoing(p.UserId.encode(), stamp.json(p, e), e) for p, e in zip(purchases, ids, strict=True)]
    await _publish(state.ingestor, state.settings.kafka.purchases_topic, records)
    return PurchasedItemsResponse.model_construct(Accepted=len(records), EventIds=[r.event_id for r in records])
