"""A record found by its EventId wherever the pipeline keeps it: MongoDB's events (stored
with `_id` = EventId), the dead letters, the lake's purchases (the read model's copy, with
its lines), the quarantine, and the latest records of each partition of the event topics
(a bounded scan: the broker has no index by EventId).

Each place is asked beside the others, with a timeout; one that does not answer is named
down in the answer's sources, and the others' finds still show.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pymongo.collection import Collection

from .browse import TopicBrowser, plain, record_json
from .readmodel import ReadModel
from .rejects import DeadLetters, Quarantine
from .sync import SourceState

SCAN_DEFAULT = 1000  # records of each partition the search reads, the latest ones
SCAN_MAX = 10_000


class Finder:
    def __init__(
        self,
        events: Collection,
        dead_letters: DeadLetters,
        model: ReadModel,
        quarantine: Quarantine,
        browser: TopicBrowser,
        timeout_s: float,
    ) -> None:
        self.events, self.dead_letters, self.model = events, dead_letters, model
        self.quarantine, self.browser, self.timeout_s = quarantine, browser, timeout_s
        self.pool = ThreadPoolExecutor(5, thread_name_prefix="dashboard-find")

    def _event(self, event_id: str) -> list[dict[str, Any]]:
        doc = self.events.find_one({"_id": event_id})
        return [] if doc is None else [{"where": "mongodb events", "location": event_id, "record": plain(doc)}]

    def _dead(self, event_id: str) -> list[dict[str, Any]]:
        return [{"where": "dead letters", "location": d["id"], "record": d} for d in self.dead_letters.find(event_id)]

    def _lake(self, event_id: str) -> list[dict[str, Any]]:
        row = self.model.purchase(event_id)
        return [] if row is None else [{"where": "lake purchases", "location": event_id, "record": row}]

    def _quarantined(self, event_id: str) -> list[dict[str, Any]]:
        return [{"where": "quarantine", "location": q["id"], "record": q} for q in self.quarantine.find(event_id)]

    def _topics(self, event_id: str, scan: int) -> list[dict[str, Any]]:
        wanted = event_id.encode()
        found = [r for r in self.browser.scan(self.browser.settings.kafka.topics, scan) if wanted in (r.value or b"")]
        return [
            {"where": f"topic {r.topic}", "location": f"{r.topic}-{r.partition}@{r.offset}", "record": record_json(r)}
            for r in sorted(found, key=lambda r: (r.topic, r.partition, r.offset))
        ]

    def find(self, event_id: str, scan: int = SCAN_DEFAULT) -> dict[str, Any]:
        places: dict[str, Callable[[], list[dict[str, Any]]]] = {
            "mongodb": lambda: self._event(event_id) + self._dead(event_id),
            "lake": lambda: self._lake(event_id),
            "quarantine": lambda: self._quarantined(event_id),
            "kafka": lambda: self._topics(event_id, scan),
        }
        futures = {name: self.pool.submit(fn) for name, fn in places.items()}
        found: list[dict[str, Any]] = []
        sources = []
        for name, f in futures.items():
            source = SourceState(name)
            try:
                found += f.result(timeout=self.timeout_s)
                source.ok()
            except Exception as e:  # noqa: BLE001 - that place shows as down, with why
                source.failed(e)
            sources.append(source.as_dict())
        return {
            "event_id": event_id,
            "scanned": scan,
            "topics": self.browser.settings.kafka.topics,
            "found": found,
            "sources": sources,
        }

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
