"""Offset marks: is the record behind a committed position still the one the stage read?

A committed position C says "every record before offset C is done". When a broker loses
the tail of a log (the embedded broker's crash loses its last second; a real Kafka's
unclean leader election truncates), the log becomes a prefix of what it was and new
records are appended at the lost offsets. C may then point past the end, or, once enough
new records arrived, at records the stage never read: the end offset alone cannot tell
that second case. So a stage keeps, per partition, the last few marks: a fingerprint of
the record at C-1 (crc32 of its value, and its Kafka timestamp) for each position it
committed. Before it reads on, it checks that the record at C-1 still matches the mark at
C; if not, it walks back to the newest mark still intact and reads again from there (the
stores keep one copy per EventId, so what is read twice is stored once). Only a tail is
ever lost, so an intact mark vouches for every record before it.

Pure: the caller passes how to look a record's fingerprint up.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

KEEP = 32  # marks per partition: a loss spans seconds, i.e. the last few commits
PAST_END = "position past the end"
REPLACED = "records replaced"
UNMARKED = "no mark at the position"  # the newest mark is below the position: what lies between is unproven

Fingerprint = tuple[int, int]  # (crc32 of the value, Kafka timestamp in ms)


def fingerprint(value: bytes | None, timestamp: int) -> Fingerprint:
    return zlib.crc32(value or b""), int(timestamp)


@dataclass(frozen=True)
class Mark:
    """A committed position, and the fingerprint of the record just before it."""

    offset: int
    crc: int
    timestamp: int

    @classmethod
    def of(cls, offset: int, value: bytes | None, timestamp: int) -> Mark:
        """The mark of position `offset`, given the record at `offset - 1`."""
        return cls(offset, *fingerprint(value, timestamp))

    def as_list(self) -> list[int]:
        return [self.offset, self.crc, self.timestamp]

    @classmethod
    def from_list(cls, x: Sequence[int]) -> Mark:
        return cls(int(x[0]), int(x[1]), int(x[2]))


@dataclass(frozen=True)
class Verdict:
    resume: int  # where to read from
    reason: str | None  # None: the position holds; else why the stage reads again from `resume`
    marks: tuple[Mark, ...]  # the marks to keep (none past `resume`)

    @property
    def rewound(self) -> bool:
        return self.reason is not None


def remember(marks: Iterable[Mark], new: Mark) -> tuple[Mark, ...]:
    """`marks` plus the mark of a newly committed position (marks at or past it go)."""
    kept = [m for m in marks if m.offset < new.offset]
    return (*kept[-(KEEP - 1) :], new)


def check(
    position: int, marks: Iterable[Mark], lo: int, hi: int, fingerprint_at: Callable[[int], Fingerprint | None]
) -> Verdict:
    """Where a stage committed at `position` must read from, on a partition holding [lo, hi).

    Marks past the position are of commits that never landed (or were rolled back with the
    broker): they are dropped. A mark at or before `lo` is taken as intact: its record was
    deleted from the head by retention, which a crash never does. No marks at all: the
    position holds unless it is past the end (then from the beginning, nothing vouches
    for anything). `fingerprint_at(offset)` is the record's fingerprint, None if none.
    """
    held = sorted({m.offset: m for m in marks if m.offset <= position}.values(), key=lambda m: m.offset)[-KEEP:]
    past_end = position > hi
    if not held:
        return Verdict(lo, PAST_END, ()) if past_end else Verdict(position, None, ())

    def intact(m: Mark) -> bool:
        if m.offset <= lo:
            return True
        if m.offset > hi:
            return False
        return fingerprint_at(m.offset - 1) == (m.crc, m.timestamp)

    reason = PAST_END if past_end else None
    for i in range(len(held) - 1, -1, -1):
        m = held[i]
        if intact(m):
            resume = max(m.offset, lo)
            if reason is None and resume >= position:  # the newest mark is the position's (or unprovable)
                return Verdict(position, None, tuple(held))
            return Verdict(resume, reason or UNMARKED, tuple(held[: i + 1]))
        reason = reason or REPLACED
    return Verdict(lo, reason, ())
