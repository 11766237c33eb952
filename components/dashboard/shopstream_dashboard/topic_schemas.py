"""The topic browser's response models (its calls in the OpenAPI spec at `/docs`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from .schemas import Source


class PartitionOffsets(BaseModel):
    partition: int
    first: int = Field(description="the oldest offset still in the partition")
    next: int = Field(description="where the next record will land (the end offset)")
    records: int = Field(description="next - first (fewer records in a compacted topic)")


class PartitionLag(BaseModel):
    partition: int
    committed: int | None = Field(description="the group's committed next offset (None: nothing committed)")
    lag: int = Field(description="next - committed")


class GroupLag(BaseModel):
    group: str
    state: str = Field(description="the group's state on the broker (Stable, Empty, ...)")
    lag: int = Field(description="the sum over the partitions")
    partitions: list[PartitionLag] = Field(description="empty for the streaming job (its checkpoint has the sum)")


class TopicInfo(BaseModel):
    topic: str
    role: str | None = Field(description="what the pipeline does with it (None: not one of its topics)")
    records: int
    end: int = Field(description="the sum of the partitions' next offsets: every record it has received")
    partitions: list[PartitionOffsets]
    groups: list[GroupLag]


class Topics(BaseModel):
    as_of: datetime
    topics: list[TopicInfo]
    source: Source


class KafkaRecord(BaseModel):
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: str | None
    headers: dict[str, str | None]
    value: Any = Field(description="the value parsed as JSON (None when it is not JSON: see raw)")
    raw: str | None = Field(description="the value as text when it is not JSON")


class LatestRecords(BaseModel):
    topic: str
    partition: int
    first: int
    next: int
    records: list[KafkaRecord] = Field(description="newest first")


class Found(BaseModel):
    where: str = Field(description="mongodb events, dead letters, lake purchases, quarantine, topic <name>")
    location: str = Field(description="the document's _id, the record's <topic>-<partition>@<offset>, ...")
    record: dict[str, Any]


class FindResult(BaseModel):
    event_id: str
    scanned: int = Field(description="the latest records of each partition of the event topics searched")
    topics: list[str]
    found: list[Found]
    sources: list[Source]


class Reject(BaseModel):
    id: str = Field(description="the dead letter's _id, or the quarantined record's <topic>/<partition>/<offset>")
    reason: str | None
    topic: str | None
    partition: int | None
    offset: int | None
    at: datetime | None
    key: str | None
    value: Any
    raw: str | None
    replayed_at: datetime | None = Field(None, description="when it was replayed (None: not yet)")
    replayed_as: str | None = Field(None, description="the EventId it was replayed as")
    replay: dict[str, Any] | None = Field(None, description="the quarantine's replay mark (`quarantine_replays`)")


class RejectGroup(BaseModel):
    reason: str
    count: int
    replayed: int
    samples: list[Reject]


class RejectSet(BaseModel):
    total: int
    replayed: int
    reasons: int = Field(description="distinct reasons; the groups list the 30 most frequent")
    groups: list[RejectGroup]


class Rejects(BaseModel):
    dead_letters: RejectSet | None = Field(description="None when MongoDB did not answer")
    quarantine: RejectSet | None = Field(description="None when the lake did not answer")
    sources: list[Source]


class ReplayRequest(BaseModel):
    source: Literal["dead-letters", "quarantine"]
    reason: str | None = Field(None, description="only the records with this reason (None: every one)")
    dry_run: bool = False
