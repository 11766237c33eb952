"""Records as published to Kafka: the client's contract plus what the server adds.

EventId is the client's idempotency key when it sent one (so a retried request
carries the same ids and every store can drop the copy), otherwise a new UUID.
IngestedAt is when the API accepted the record.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from .events import UserEvent
from .purchases import Purchase
from .types import UtcTimestamp

EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")]


class UserEventRecord(UserEvent):
    """A user event on the `UserEvents` topic (key: UserId)."""

    EventId: EventId
    IngestedAt: UtcTimestamp


class PurchaseRecord(Purchase):
    """A purchase on the `PurchasedItem` topic (key: UserId)."""

    EventId: EventId
    IngestedAt: UtcTimestamp
