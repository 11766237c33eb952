"""Records as published to Kafka: the client's contract plus what the server adds (the envelope).

EventId is the client's idempotency key when it sent one (so a retried request
carries the same ids and every store can drop the copy), otherwise a new UUID.
IngestedAt is when the API accepted the record. ClientIp and UserAgent are the sender's,
as the API saw them (the IP truncated by default: `api.truncate_ips`); records published
before the API captured them have null there. Source is the name of the write key the
record was sent with (`shopstream.write_keys`), null when it was sent without one (and in
records from before keys).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, TypeAdapter
from pydantic_core import to_json

from .events import UserEvent
from .purchases import Purchase
from .types import UtcTimestamp

EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")]
MAX_USER_AGENT = 512  # longer User-Agent headers are cut to this many characters
ClientIpText = Annotated[
    str | None, Field(max_length=45, description="the sender's IP address, or null when not captured")
]
UserAgentText = Annotated[
    str | None, Field(max_length=MAX_USER_AGENT, description="the sender's User-Agent, or null when it sent none")
]

MAX_KEY_NAME = 64  # a write key's name (`shopstream.write_keys`), as a record's Source carries it
SourceText = Annotated[
    str | None,
    Field(max_length=MAX_KEY_NAME, description="the name of the write key it was sent with, or null when none"),
]


class UserEventRecord(UserEvent):
    """A user event on the `UserEvents` topic (key: UserId)."""

    EventId: EventId
    IngestedAt: UtcTimestamp
    ClientIp: ClientIpText = None
    UserAgent: UserAgentText = None
    Source: SourceText = None


class PurchaseRecord(Purchase):
    """A purchase on the `PurchasedItem` topic (key: UserId)."""

    EventId: EventId
    IngestedAt: UtcTimestamp
    ClientIp: ClientIpText = None
    UserAgent: UserAgentText = None
    Source: SourceText = None


# what a record adds to its client model, in this order, after the client's fields
ADDED = ("EventId", "IngestedAt", "ClientIp", "UserAgent", "Source")
assert all(tuple(m.model_fields)[-len(ADDED) :] == ADDED for m in (UserEventRecord, PurchaseRecord))
_INGESTED_AT = TypeAdapter(UtcTimestamp)


class Stamp:
    """What the server adds to one request's records, written as JSON once per request.

    `json(client, event_id)` is the record's JSON exactly as the record model writes it
    (`UserEventRecord(**event, EventId=..., IngestedAt=...)`, say), without building that model
    for every record: the validated client model's own JSON, with the added fields appended
    (each record model is its client model plus `ADDED`, last). For 100 purchases this is
    half the time of building and writing the records."""

    def __init__(
        self,
        ingested_at: datetime,
        client_ip: str | None = None,
        user_agent: str | None = None,
        source: str | None = None,
    ) -> None:
        self.ingested_at = ingested_at
        self._tail = (
            b',"IngestedAt":'
            + _INGESTED_AT.dump_json(ingested_at)
            + b',"ClientIp":'
            + to_json(client_ip)
            + b',"UserAgent":'
            + to_json(user_agent[:MAX_USER_AGENT] if user_agent is not None else None)
            + b',"Source":'
            + to_json(source)
            + b"}"
        )

    def json(self, client: BaseModel, event_id: str) -> bytes:
        return client.__pydantic_serializer__.to_json(client)[:-1] + b',"EventId":' + to_json(event_id) + self._tail
