"""The audit's logic, over plain inputs (dicts, sets, offsets): no servers, no I/O.

The truth is the ledger: every record the API acknowledged, as (topic, EventId), with
the position the broker gave it. Each stage is checked against it:

- **Kafka**: an acknowledged EventId needs at least one copy in its topic. More copies
  (client retries, records published again after a broker loss) are normal, only counted.
- **a store fed from Kafka** (MongoDB's events, the lake): a record is *expected* there
  once the stage has committed past one of its copies (offset < the stage's committed
  next offset of that partition). Expected and not found is *missing*; not expected and
  not found yet is *pending*. A record with no copy left in Kafka has nothing left to
  wait for, so every store is expected to hold it already.
- **EventCount**: per (UserId, EventName), the count must equal the stored events of the
  pair whose aggregation batch is applied (events of other batches are pending). Numbers
  of events, not EventIds: a count cannot say which events it counted.

A stage whose committed position is unknown (its checkpoint cannot be read, say) is
*unchecked* for missing records; it never passes silently.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

Pos = tuple[int, int]  # (partition, offset)
Pair = tuple[str, str]  # (UserId, EventName)

SAMPLES = 10


@dataclass
class Copies:
    """Where a topic holds each acknowledged EventId: its first copy, and any further copies."""

    first: dict[str, Pos] = field(default_factory=dict)
    more: dict[str, list[Pos]] = field(default_factory=dict)  # only EventIds with 2+ copies
    records: int = 0  # records read
    unreadable: int = 0  # not JSON, or no EventId: not an acknowledged record
    unacknowledged: int = 0  # an EventId the ledger does not hold (older than it, or never answered 2xx)

    def add(self, event_id: str, partition: int, offset: int) -> None:
        if event_id in self.first:
            self.more.setdefault(event_id, []).append((partition, offset))
        else:
            self.first[event_id] = (partition, offset)

    def positions(self, event_id: str) -> list[Pos]:
        first = self.first.get(event_id)
        return [] if first is None else [first, *self.more.get(event_id, ())]

    @property
    def extra_copies(self) -> int:
        return sum(len(v) for v in self.more.values())


@dataclass
class Stage:
    """One row of the audit's table, and its samples."""

    name: str
    position: str = ""  # what the stage has committed, in words
    acknowledged: int | None = 0  # None: not a per-EventId stage (EventCount)
    expected: int | None = 0  # None: not known (the committed position could not be read)
    found: int = 0
    missing: int = 0
    doubled: int | None = 0  # None: copies are not an error here (Kafka)
    pending: int = 0
    missing_sample: list[str] = field(default_factory=list)
    doubled_sample: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchecked: str | None = None  # why (part of) this stage could not be checked

    @property
    def differs(self) -> bool:
        return bool(self.missing or self.doubled)


class AnyOf:
    """Membership in any of several containers (a store and its dead letters, say)."""

    def __init__(self, *containers: Container[str]) -> None:
        self.containers = containers

    def __contains__(self, item: object) -> bool:
        return any(item in c for c in self.containers)


def sample(items: Iterable[str], n: int = SAMPLES) -> list[str]:
    """The first `n` in sorted order: the same sample run after run."""
    return heapq.nsmallest(n, items)


def committed_past(positions: Iterable[Pos], committed: Mapping[int, int]) -> bool:
    """True when the stage has committed past one of these copies."""
    return any(offset < committed.get(partition, 0) for partition, offset in positions)


def within_end(committed: Mapping[int, int], end: Mapping[int, int]) -> tuple[dict[int, int], list[int]]:
    """A stage's committed offsets, with 0 for a partition where it lies past the partition's
    end: the broker lost records there, and the stage will read again from a point not known
    yet (its rewind), so nothing of that partition is due until it has. Returns them and the
    partitions concerned."""
    past = sorted(p for p, off in committed.items() if off > end.get(p, 0))
    return {p: 0 if p in past else off for p, off in committed.items()}, past


def kafka_stage(
    topic: str,
    acked: Mapping[str, Pos],
    copies: Copies,
    beginning: Mapping[int, int],
    end: Mapping[int, int],
    samples: int = SAMPLES,
) -> Stage:
    """Every acknowledged EventId must have a copy in its topic."""
    stage = Stage(
        f"Kafka {topic}",
        acknowledged=len(acked),
        expected=len(acked),
        doubled=None,
        position=f"end {sum(end.values()):,} ({len(end)} partitions)",
    )
    missing, expired = [], 0
    for event_id, (partition, offset) in acked.items():
        if event_id in copies.first:
            stage.found += 1
        elif offset < beginning.get(partition, 0):
            expired += 1  # deleted by the topic's retention: nothing to check here
        else:
            missing.append(event_id)
    stage.missing, stage.missing_sample = len(missing), sample(missing, samples)
    stage.expected = len(acked) - expired
    with_copies = sum(1 for e in copies.more if e in acked)
    if with_copies:
        extra = sum(len(v) for e, v in copies.more.items() if e in acked)
        stage.notes.append(f"{with_copies:,} with 2+ copies ({extra:,} extra: retries, published again)")
    if expired:
        stage.notes.append(f"{expired:,} past the topic's retention (not checked)")
    if copies.unacknowledged:
        stage.notes.append(f"{copies.unacknowledged:,} records not in the ledger")
    if copies.unreadable:
        stage.notes.append(f"{copies.unreadable:,} unreadable records (no JSON or no EventId)")
    return stage


def store_stage(
    name: str,
    acked: Iterable[str],
    copies: Copies,
    committed: Mapping[int, int] | None,
    found: Container[str],
    position: str = "",
    unchecked: str | None = None,
    samples: int = SAMPLES,
) -> Stage:
    """Acknowledged records against a store fed from the topic up to `committed` (None: unknown)."""
    stage = Stage(name, position=position, unchecked=unchecked)
    missing = []
    acknowledged = expected = 0
    for event_id in acked:
        acknowledged += 1
        positions = copies.positions(event_id)
        # no copy left in Kafka: nothing left to wait for, the store must hold it already
        due = not positions or (committed is not None and committed_past(positions, committed))
        expected += due
        if event_id in found:
            stage.found += 1
        elif due:
            missing.append(event_id)
        else:
            stage.pending += 1
    stage.acknowledged = acknowledged
    stage.expected = expected if committed is not None else None
    stage.missing, stage.missing_sample = len(missing), sample(missing, samples)
    return stage


def doubled_stage(stage: Stage, doubled: Mapping[str, int], samples: int = SAMPLES) -> Stage:
    """Record the EventIds the store holds more than once (`doubled`: EventId -> rows)."""
    stage.doubled = sum(n - 1 for n in doubled.values())
    stage.doubled_sample = sample(doubled, samples)
    return stage


@dataclass(frozen=True)
class CountDoc:
    """A counts document: its EventCount, and the aggregation batches it says it applied."""

    event_count: int
    applied: frozenset[str] = frozenset()


def count_stage(
    counts: Mapping[Pair, CountDoc],
    applied_batches: Container[str],
    stored: Mapping[Pair, Mapping[str | None, int]],
    position: str = "",
    samples: int = SAMPLES,
) -> Stage:
    """EventCount per pair against the stored events of the pair in applied batches.

    `applied_batches`: batches in state "applied" (read before the counts); a count
    document's own `applied` list adds the batches merged into it since. `stored`: per
    pair, events per AggBatch (None: not claimed yet)."""
    stage = Stage("EventCount", position=position, acknowledged=None)
    over, under = [], []
    expected = doubled = 0
    for pair in sorted(set(counts) | set(stored)):
        doc = counts.get(pair)
        applied = doc.applied if doc else frozenset()
        want = pending = 0
        for batch, n in stored.get(pair, {}).items():
            if batch is not None and (batch in applied or batch in applied_batches):
                want += n
            else:
                pending += n
        got = doc.event_count if doc else 0
        expected += want
        stage.pending += pending
        stage.found += min(got, want)
        line = f"{pair[0]}/{pair[1]}: EventCount {got:,}, counted events stored {want:,}"
        if got > want:
            doubled += got - want
            over.append(line)
        elif got < want:
            stage.missing += want - got
            under.append(line)
    stage.expected, stage.doubled = expected, doubled
    stage.missing_sample, stage.doubled_sample = under[:samples], over[:samples]
    stored_total = sum(sum(b.values()) for b in stored.values())
    stage.notes.append(f"{stored_total:,} events stored, {len(counts):,} pairs counted")
    if under or over:
        stage.notes.append(f"{len(under) + len(over):,} pairs differ")
    return stage


@dataclass
class Audit:
    stages: list[Stage]

    @property
    def missing(self) -> int:
        return sum(s.missing for s in self.stages)

    @property
    def doubled(self) -> int:
        return sum(s.doubled or 0 for s in self.stages)

    @property
    def unchecked(self) -> list[Stage]:
        return [s for s in self.stages if s.unchecked]

    @property
    def exit_code(self) -> int:
        """1: something is missing or doubled; 2: nothing is, but a stage could not be checked; 0: all good."""
        if self.missing or self.doubled:
            return 1
        return 2 if self.unchecked else 0
