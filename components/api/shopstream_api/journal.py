"""The acknowledgement journal: what the broker acknowledged, on our own disk, before the 2xx.

A broker acknowledgement is only as durable as the broker: the embedded one keeps its log
in memory and snapshots it, so a crash forgets its last moments. So every acknowledged
record is also appended here, with the position the broker gave it, and the request is
answered only once the append is on disk (fdatasync, one for all requests that arrived
meanwhile: a group commit). `verifier.py` reads each record back from the broker twice
(soon after the ack, and once `journal_retention_s` has passed) and publishes again those
the broker lost; a record leaves the journal after the second check.

On disk, in `settings.journal_dir`:
- `slots/<n>/seg-<ns>.log`: segments of one API process (a worker takes the lowest free slot,
  under a lock; segments of a slot whose process is gone are adopted at start), one line per
  record: topic, partition, offset, EventId, key, value (tab-separated; values are compact
  JSON, which escapes tabs and newlines);
- `ledger/`: one line per acknowledged record, kept longer (`shopstream.ledger`).

With `api.journal` off (a replicated Kafka makes it redundant), only the ledger is written.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from shopstream import ledger
from shopstream.settings import Settings

log = logging.getLogger(__name__)

SEGMENT_SECONDS = 10.0  # a new segment this often (under load), so old ones can be deleted whole
SEGMENT_BYTES = 64 << 20


class JournalFull(RuntimeError):
    """The journal's disk budget is spent: the broker has not yet been seen holding older records."""


class JournalUnavailable(RuntimeError):
    """The journal could not be written (a disk error, or it is closed)."""


@dataclass(frozen=True)
class Outgoing:
    """One record as the API publishes it."""

    key: bytes
    value: bytes
    event_id: str


@dataclass
class Segment:
    path: Path
    size: int = 0
    live: int = 0  # entries not yet confirmed or replaced
    sealed: bool = False


@dataclass(slots=True)
class Entry:
    """An acknowledged record the journal still answers for (its bytes stay on disk)."""

    topic: str
    partition: int
    offset: int
    crc: int
    acked: float
    segment: Segment
    pos: int
    length: int


class Checked:
    """Entries of one topic partition and segment that passed their first check, kept compact
    until their final one: one object and two arrays instead of an object per record. (At
    thousands of records a second, `journal_retention_s` of Entry objects made each full
    garbage collection of the event loop's process a pause of 100 ms and more.)"""

    __slots__ = ("acked", "crcs", "offsets", "partition", "segment", "topic")

    def __init__(self, entries: Sequence[Entry]) -> None:
        first = entries[0]
        self.topic, self.partition, self.segment = first.topic, first.partition, first.segment
        self.acked = max(e.acked for e in entries)  # its final check is due when the last one's is
        self.offsets = array("q", (e.offset for e in entries))
        self.crcs = array("q", (e.crc for e in entries))

    @classmethod
    def runs(cls, entries: Sequence[Entry]) -> list[Checked]:
        """`entries` (in order) as runs, one per segment they lie in."""
        out: list[Checked] = []
        start = 0
        for i in range(1, len(entries) + 1):
            if i == len(entries) or entries[i].segment is not entries[start].segment:
                out.append(cls(entries[start:i]))
                start = i
        return out

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class _Write:
    topic: str
    lines: list[bytes]
    ledger: bytes
    meta: list[tuple[int, int, int]]  # (partition, offset, crc) per line
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


def _line(topic: str, partition: int, offset: int, record: Outgoing) -> bytes:
    return (
        b"\t".join(
            (
                topic.encode(),
                str(partition).encode(),
                str(offset).encode(),
                record.event_id.encode(),
                record.key,
                record.value,
            )
        )
        + b"\n"
    )


def parse_line(raw: bytes) -> tuple[str, int, int, Outgoing] | None:
    """(topic, partition, offset, record) of one journal line; None for a line cut short by a crash."""
    if not raw.endswith(b"\n"):
        return None
    parts = raw[:-1].split(b"\t", 5)
    if len(parts) != 6:
        return None
    topic, partition, offset, event_id, key, value = parts
    try:
        return topic.decode(), int(partition), int(offset), Outgoing(key, value, event_id.decode())
    except ValueError:
        return None


@dataclass
class Pending:
    """Per topic partition, the entries awaiting their first and their final read-back, oldest first."""

    first: deque[Entry] = field(default_factory=deque)
    final: deque[Checked] = field(default_factory=deque)


class Journal:
    def __init__(self, settings: Settings) -> None:
        self.settings, self.enabled = settings, settings.api.journal
        self.root = settings.journal_dir
        self.max_bytes = settings.api.journal_max_bytes
        self.pending: dict[tuple[str, int], Pending] = {}
        self.bytes = 0  # live segments on disk
        self.lock = threading.Lock()  # entries, segments and byte counts (writer thread vs event loop)
        self.slot = ""
        self._slot_dir = self.root
        self._slot_lock: TextIO | None = None
        self._segments: list[Segment] = []
        self._current: Segment | None = None
        self._current_fd: int | None = None
        self._current_started = 0.0
        self._ledger_path: Path | None = None
        self._ledger_fd: int | None = None
        self._queue: list[_Write] = []
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> int:
        """Take a slot, adopt what dead processes left, start the writer. Returns the entries
        recovered from disk (they are checked against the broker like new ones)."""
        slots = self.root / "slots"
        slots.mkdir(parents=True, exist_ok=True)
        ledger.ledger_dir(self.settings).mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            handle = (slots / f"{n}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.close()
                n += 1
        self._slot_lock, self.slot = handle, f"slot{n}"
        mine = self._slot_dir = slots / str(n)
        mine.mkdir(exist_ok=True)
        self._adopt(slots, mine)
        recovered = self._recover(mine) if self.enabled else 0
        self._thread = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._thread.start()
        log.info(
            "journal %s in %s: %d record(s) recovered, %d bytes",
            "on" if self.enabled else "off (ledger only)",
            mine,
            recovered,
            self.bytes,
        )
        return recovered

    def _adopt(self, slots: Path, mine: Path) -> None:
        """Move the segments of slots no process holds into ours (a worker that died, or fewer workers now)."""
        for lock_path in slots.glob("*.lock"):
            other = slots / lock_path.stem
            if other == mine or not other.is_dir():
                continue
            with lock_path.open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live worker's
                for seg in other.glob("seg-*.log"):
                    seg.rename(mine / seg.name)

    def _recover(self, folder: Path) -> int:
        now, count = time.time(), 0
        for path in sorted(folder.glob("seg-*.log")):
            seg = Segment(path, sealed=True)
            with path.open("rb") as f:
                pos = 0
                for raw in f:
                    parsed = parse_line(raw)
                    if parsed is not None:
                        topic, partition, offset, record = parsed
                        self._track(Entry(topic, partition, offset, zlib.crc32(record.value), now, seg, pos, len(raw)))
                        count += 1
                    pos += len(raw)
            seg.size = pos
            if seg.live:
                self._segments.append(seg)
                self.bytes += seg.size
            else:
                path.unlink(missing_ok=True)
        return count

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(30)
        for fd in (self._current_fd, self._ledger_fd):
            if fd is not None:
                os.close(fd)
        self._current_fd = self._ledger_fd = None
        if self._slot_lock is not None:
            self._slot_lock.close()
            self._slot_lock = None

    # -- the request path ----------------------------------------------------------------------
    def full(self) -> bool:
        return self.enabled and self.bytes >= self.max_bytes

    async def append(self, topic: str, records: Sequence[Outgoing], acks: Sequence[tuple[int, int]]) -> None:
        """Journal acknowledged records (with their (partition, offset)); returns once on disk."""
        lines, meta, ledger_lines = [], [], []
        for record, (partition, offset) in zip(records, acks, strict=True):
            lines.append(_line(topic, partition, offset, record))
            meta.append((partition, offset, zlib.crc32(record.value)))
            ledger_lines.append(ledger.line(topic, partition, offset, record.event_id))
        loop = asyncio.get_running_loop()
        write = _Write(topic, lines, b"".join(ledger_lines), meta, loop.create_future(), loop)
        with self._cv:
            if self._closing:
                raise JournalUnavailable("the journal is closed")
            self._queue.append(write)
            self._cv.notify()
        try:
            await write.future
        except OSError as e:
            raise JournalUnavailable(f"the journal could not be written: {e}") from e

    # -- the writer thread: one write and one fdatasync per group of requests ---------------------
    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                group, self._queue = self._queue, []
            if not group:
                return
            try:
                self._write_group(group)
            except BaseException as e:  # every waiting request learns, the writer goes on
                log.exception("journal write failed")
                for w in group:
                    w.loop.call_soon_threadsafe(_fail, w.future, e)
                continue
            loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
            for w in group:  # one wake-up per event loop for the whole group, not one per request
                loops.setdefault(w.loop, []).append(w.future)
            for loop, futures in loops.items():
                loop.call_soon_threadsafe(_done_all, futures)

    def _write_group(self, group: list[_Write]) -> None:
        now = time.time()
        if self.enabled:
            seg, fd = self._segment(now)
            data = bytearray()
            entries = []
            for w in group:
                for line, (partition, offset, crc) in zip(w.lines, w.meta, strict=True):
                    entries.append(Entry(w.topic, partition, offset, crc, now, seg, seg.size + len(data), len(line)))
                    data += line
            _write_all(fd, data)
            os.fdatasync(fd)
            with self.lock:
                seg.size += len(data)
                self.bytes += len(data)
                for entry in entries:
                    self._track(entry)
        _write_all(self._ledger(now), b"".join(w.ledger for w in group))

    def _segment(self, now: float) -> tuple[Segment, int]:
        cur = self._current
        if cur is None or cur.size >= SEGMENT_BYTES or now - self._current_started >= SEGMENT_SECONDS:
            if cur is not None and self._current_fd is not None:
                os.close(self._current_fd)
                with self.lock:
                    cur.sealed = True
                    self._drop_if_done(cur)
            path = self._slot_dir / f"seg-{time.time_ns():020d}.log"
            cur = Segment(path)
            self._current_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _fsync_dir(path.parent)
            self._current, self._current_started = cur, now
            with self.lock:
                self._segments.append(cur)
        assert self._current_fd is not None
        return cur, self._current_fd

    def _ledger(self, now: float) -> int:
        path = ledger.ledger_file(self.settings, self.slot, now)
        if path != self._ledger_path or self._ledger_fd is None:
            if self._ledger_fd is not None:
                os.close(self._ledger_fd)
            self._ledger_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._ledger_path = path
        return self._ledger_fd

    # -- bookkeeping (under self.lock) -----------------------------------------------------------
    def _track(self, entry: Entry) -> None:
        entry.segment.live += 1
        self.pending.setdefault((entry.topic, entry.partition), Pending()).first.append(entry)

    def _drop_if_done(self, seg: Segment) -> None:
        if seg.sealed and seg.live == 0 and seg in self._segments:
            self._segments.remove(seg)
            self.bytes -= seg.size
            seg.path.unlink(missing_ok=True)

    def release(self, entries: Sequence[Entry]) -> None:
        """These entries need the journal no more (confirmed, or journaled again after a replay)."""
        with self.lock:
            for entry in entries:
                entry.segment.live -= 1
                self._drop_if_done(entry.segment)

    def release_checked(self, segment: Segment, count: int) -> None:
        """`count` records of a `Checked` run in `segment` passed their final check."""
        with self.lock:
            segment.live -= count
            self._drop_if_done(segment)

    def entries(self, run: Checked, lost: dict[int, int]) -> list[Entry]:
        """The entries of `run` at these offsets (offset -> CRC), found again in its segment, for
        the rare record the broker lost after its first check (a run keeps no positions). The CRC
        tells a record from one journaled later at the same offset (the broker gave it again)."""
        found = []
        with run.segment.path.open("rb") as f:
            pos = 0
            for raw in f:
                parsed = parse_line(raw)
                if parsed is not None:
                    topic, partition, offset, record = parsed
                    if (topic, partition) == (run.topic, run.partition) and offset in lost:
                        crc = zlib.crc32(record.value)
                        if crc == lost[offset]:
                            del lost[offset]
                            found.append(Entry(topic, partition, offset, crc, run.acked, run.segment, pos, len(raw)))
                pos += len(raw)
        return found

    def read(self, entry: Entry) -> Outgoing:
        """The record an entry stands for, from its segment."""
        with entry.segment.path.open("rb") as f:
            f.seek(entry.pos)
            parsed = parse_line(f.read(entry.length))
        if parsed is None:
            raise ValueError(f"journal entry at {entry.segment.path}:{entry.pos} is unreadable")
        return parsed[3]

    def stats(self) -> tuple[int, int]:
        """(entries awaiting a check, bytes on disk)."""
        with self.lock:
            return sum(len(p.first) + sum(map(len, p.final)) for p in self.pending.values()), self.bytes


def _done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _done_all(futures: list[asyncio.Future]) -> None:
    for future in futures:
        _done(future)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
