"""Sending records to the ingestion API: its validation and publishing, with the ids replay chose.

Events go one per `PUT /SendEvent` with `Idempotency-Key` = the EventId (the API makes that
the record's EventId); purchases in chunks per `POST /PurchasedItems` with `Event-Ids`
naming each purchase's EventId in order (the header kept under `HEADER_BYTES`). A record
with a known sender (the envelope of a dead letter, a quarantined record or a lake row)
is sent with its `User-Agent` and, as `X-Forwarded-For`, its address: an API that trusts
this host as a proxy (`api.trusted_proxies`, loopback by default) keeps them, so the
enrichment describes the original visitor; otherwise the API records replay itself.

429 and 503 are retried after their Retry-After (tenacity), as is a connection that
failed: the ids are the same on every attempt, so a record that got through the first
time is stored once. `api.client_key`, when set, goes as `Authorization: Bearer`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from shopstream.adapters.api import api_client
from shopstream.contracts import MAX_PURCHASES_PER_REQUEST
from shopstream.settings import Settings

from .files import Item

HEADER_BYTES = 6000  # Event-Ids at most this long: servers refuse header blocks past 8 KB or so
USER_AGENT = "shopstream-replay"
RETRY_FOR_S = 600.0  # a 429/503 or a failed connection is retried this long


class Refused(RuntimeError):
    """The API refused the key (401/403) or answered what replay cannot go on from."""


class Rejected(Exception):
    """The API answered 422 for these records: its reason."""


class _Again(Refused):
    """429 or 503: retried after Retry-After; past `RETRY_FOR_S`, replay stops."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.retry_after = retry_after


def _wait(state: Any) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Again) and exc.retry_after is not None:
        return exc.retry_after
    return float(wait_exponential(multiplier=0.5, max=10)(state))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


class Sender:
    def __init__(self, settings: Settings, rate: float | None = None) -> None:
        self.client = api_client(settings.api, timeout_s=60.0)
        self.client.headers["User-Agent"] = USER_AGENT
        if settings.api.client_key is not None:
            self.client.headers["Authorization"] = f"Bearer {settings.api.client_key.get_secret_value()}"
        self.max_body = settings.api.max_body_bytes // 2
        self.rate = rate
        self.started = time.monotonic()
        self.paced = 0  # records sent so far, for the rate

    def _pace(self, n: int) -> None:
        """Hold the records back to `rate` per second (from the first one sent)."""
        if self.rate:
            due = self.started + self.paced / self.rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
        self.paced += n

    @retry(
        retry=retry_if_exception_type((_Again, httpx.TransportError)),
        wait=_wait,
        stop=stop_after_delay(RETRY_FOR_S),
        reraise=True,
    )
    def _request(self, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        response = self.client.request(method, path, json=body, headers=headers)
        if response.status_code in (429, 503):
            raise _Again(response.status_code, _retry_after(response))
        if response.status_code in (401, 403):
            raise Refused(f"the API refused the write key ({response.status_code}): {response.text[:300]}")
        if response.status_code == 422:
            raise Rejected(f"the API refused it: {response.text[:500]}")
        if response.status_code != 200:
            raise Refused(f"the API answered {response.status_code}: {response.text[:300]}")
        return response

    @staticmethod
    def _sender(item: Item) -> dict[str, str]:
        row = item.row
        headers = {}
        if row is not None and row.user_agent:
            headers["User-Agent"] = row.user_agent
        if row is not None and row.client_ip:
            headers["X-Forwarded-For"] = row.client_ip
        return headers

    def send_event(self, item: Item, body: dict[str, Any]) -> None:
        """Raises Rejected (422), Refused, or what the retries ended with."""
        self._pace(1)
        self._request("PUT", "/SendEvent", body, {**self._sender(item), "Idempotency-Key": item.event_id})

    def chunks(self, records: list[tuple[Item, dict[str, Any]]]) -> Iterator[list[tuple[Item, dict[str, Any]]]]:
        """Consecutive purchases of one sender, within the API's count, body and header limits."""
        chunk: list[tuple[Item, dict[str, Any]]] = []
        header = body = 0
        for item, record in records:
            size = len(json.dumps(record)) + 2
            if chunk and (
                len(chunk) >= MAX_PURCHASES_PER_REQUEST
                or header + len(item.event_id) + 1 > HEADER_BYTES
                or body + size > self.max_body
                or self._sender(chunk[0][0]) != self._sender(item)
            ):
                yield chunk
                chunk, header, body = [], 0, 0
            chunk.append((item, record))
            header += len(item.event_id) + 1
            body += size
        if chunk:
            yield chunk

    def send_purchases(self, chunk: list[tuple[Item, dict[str, Any]]]) -> None:
        """One request; raises Rejected (422), Refused, or what the retries ended with."""
        self._pace(len(chunk))
        headers = {**self._sender(chunk[0][0]), "Event-Ids": ",".join(i.event_id for i, _ in chunk)}
        answer = self._request("POST", "/PurchasedItems", [r for _, r in chunk], headers).json()
        if answer.get("EventIds") != [i.event_id for i, _ in chunk]:  # an API without Event-Ids ignores the header
            raise Refused(f"the API gave other EventIds than those sent in Event-Ids: {answer.get('EventIds')[:3]}...")

    def close(self) -> None:
        self.client.close()
