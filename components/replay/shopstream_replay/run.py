"""One replay: read, check against the contract, skip what the destination holds, send, mark.

Records go in batches (`BATCH`): each batch's valid records are looked up in the
destination first (`already_stored`), the rest are sent, and a dead letter or quarantined
record is marked only once the API acknowledged it. A record whose EventId came earlier in
the same replay is counted under `duplicates` and sent once. `--dry-run` does all but the
sending and marking, and lists what would be rejected and why.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from .files import Item
from .mapping import Kind, check
from .sender import Rejected, Sender
from .stores import Destination

BATCH = 2000
MAX_LISTED = 1000  # rejected records listed one by one (all are counted)


class Marker(Protocol):
    def mark(self, items: Iterable[Item]) -> None: ...


@dataclass
class Summary:
    source: str
    kind: str
    dry_run: bool
    read: int = 0
    sent: int = 0
    would_send: int = 0
    already_stored: int = 0
    already_replayed: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    rejects: list[dict[str, str]] = field(default_factory=list)  # the first MAX_LISTED: where, EventId, reason
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)  # per file: columns mapped to no field
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the replay could not check
    seen: set[str] = field(default_factory=set, repr=False)  # EventIds read so far, over all the replay's files

    def reject(self, item: Item, reason: str) -> None:
        self.rejected[reason] += 1
        if len(self.rejects) < MAX_LISTED:
            self.rejects.append({"where": item.where, "EventId": item.event_id, "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "dry_run": self.dry_run,
            "read": self.read,
            "sent": self.sent,
            "would_send": self.would_send,
            "already_stored": self.already_stored,
            "already_replayed": self.already_replayed,
            "duplicates": self.duplicates,
            "rejected": dict(self.rejected.most_common()),
            "rejects": self.rejects,
            "ignored_columns": self.ignored_columns,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _batches(items: Iterable[Item]) -> Iterator[list[Item]]:
    it = iter(items)
    while batch := list(islice(it, BATCH)):
        yield batch


def _held(destination: Destination, ids: list[str], summary: Summary) -> set[str]:
    """What the destination holds of `ids`. A dry run goes on without it when the store does not
    answer (a dry run of a file on a machine without the stack): nothing counts as stored."""
    if summary.notes and summary.dry_run:  # it did not answer before
        return set()
    try:
        return destination.holding(ids)
    except Exception as e:  # any store error; only a dry run gets here without raising
        if not summary.dry_run:
            raise
        summary.notes.append(f"the destination was not checked for records stored already: {type(e).__name__}: {e}")
        return set()


def replay(
    items: Iterable[Item],
    kind: Kind,
    summary: Summary,
    destination: Destination,
    sender: Sender | None,
    marker: Marker | None = None,
    advance: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Replay `items` (`sender` None: a dry run); the counts go to `summary`."""
    started = time.monotonic()
    seen = summary.seen
    for batch in _batches(items):
        ready: list[tuple[Item, dict[str, Any]]] = []
        for item in batch:
            summary.read += 1
            record, why = check(kind, item.row.body) if item.row is not None else (None, item.reason)
            if record is None:
                summary.reject(item, why or "unreadable")
            elif item.event_id in seen:
                summary.duplicates += 1
            else:
                seen.add(item.event_id)
                ready.append((item, record))
        held = _held(destination, [i.event_id for i, _ in ready], summary) if ready else set()
        stored = [i for i, _ in ready if i.event_id in held]
        summary.already_stored += len(stored)
        todo = [(i, r) for i, r in ready if i.event_id not in held]
        advance(len(batch) - len(todo))
        if sender is None:
            summary.would_send += len(todo)
            advance(len(todo))
            continue
        if marker is not None:
            marker.mark(stored)  # in the destination already (an earlier replay that stopped before its mark)
        if kind is Kind.events:
            for item, record in todo:
                try:
                    sender.send_event(item, record)
                except Rejected as e:
                    summary.reject(item, str(e))
                else:
                    summary.sent += 1
                    if marker is not None:
                        marker.mark([item])
                advance(1)
        else:
            for chunk in sender.chunks(todo):
                try:
                    sender.send_purchases(chunk)
                except Rejected as e:
                    for item, _ in chunk:
                        summary.reject(item, str(e))
                else:
                    summary.sent += len(chunk)
                    if marker is not None:
                        marker.mark([i for i, _ in chunk])
                advance(len(chunk))
    summary.seconds += time.monotonic() - started
    return summary
