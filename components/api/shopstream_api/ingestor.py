"""Publish, then journal: what a 2xx rests on.

A request's records are published and acknowledged by the broker (acks=all), then
appended to the acknowledgement journal with their positions and synced to disk; only
then does the route answer 2xx. A record the broker did not acknowledge is never
journaled, so a 503 stays "not published by us later". A full journal refuses new
records (503) before anything is published.
"""

from __future__ import annotations

from collections.abc import Sequence

from .journal import Journal, JournalFull, Outgoing
from .publisher import Ack, KafkaPublisher


class Ingestor:
    def __init__(self, publisher: KafkaPublisher, journal: Journal | None) -> None:
        self.publisher, self.journal = publisher, journal

    async def publish(self, topic: str, records: Sequence[Outgoing]) -> list[Ack]:
        """Raises JournalFull, BrokerUnavailable (nothing journaled) or JournalUnavailable
        (acknowledged by the broker but not journaled: in doubt, like a 503)."""
        journal = self.journal
        if journal is not None and journal.full():
            raise JournalFull(
                f"the acknowledgement journal holds {journal.bytes:,} bytes, its budget is "
                f"{journal.max_bytes:,}: the broker has not yet been seen holding older records"
            )
        acks = await self.publisher.publish(topic, [(r.key, r.value) for r in records])
        if journal is not None:
            await journal.append(topic, records, [(a.partition, a.offset) for a in acks])
        return acks
