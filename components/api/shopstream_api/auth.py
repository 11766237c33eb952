"""Write keys at the ingestion routes: who sent a request, and whether they may, before its body is read.

A client sends `Authorization: Bearer <key>` (`shopstream.write_keys`). The API knows keys only by
their SHA-256 hashes, from the key file, which it reads again when its mtime changes (looked at,
with one stat, at most once a second), so a new or revoked key counts within about a second and
without a restart. Answers:

- no key where keys are required (`api.keys_required`), or a key the file does not hold: 401 with
  `WWW-Authenticate: Bearer`; a key is checked whenever one is sent, required or not;
- a revoked key: 403;
- a key over its rate: 429 with `Retry-After` (whole seconds until a request fits again). Each
  worker process keeps a token bucket per key at `rate_per_s / api.workers` (and the burst the
  same share, at least 1): no shared state between workers, the limit holds on the sum.

Each refusal is counted in `shopstream_rejected_requests{reason}` (never by key). The accepted
key's name goes on the request's records as `Source`. A key is never logged nor put in an answer.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import HTTPException
from starlette.datastructures import Headers

from shopstream.settings import Settings
from shopstream.write_keys import WriteKey, key_hash, read_keys

from .metrics import ApiMetrics

log = logging.getLogger("shopstream_api.auth")

SOURCE = "shopstream.source"  # the scope's entry for the accepted key's name
REASONS = ("missing_key", "unknown_key", "revoked_key", "rate_limited")
RELOAD_EVERY_S = 1.0


class TokenBucket:
    """`rate` tokens a second, `capacity` at most; a request takes one."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity, self.tokens, self.stamp = rate, capacity, capacity, now

    def take(self, now: float) -> float:
        """0 when a token was taken; else the seconds until one is there."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


@dataclass
class Known:
    name: str
    revoked: bool
    rate_per_s: float  # the key's own, for the 429's reason
    bucket: TokenBucket


class KeyTable:
    """The key file as one worker sees it: SHA-256 -> the key's name, state and bucket."""

    def __init__(self, path: Path, workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.workers, self.clock = path, workers, clock
        self._known: dict[str, Known] = {}
        self._version: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of what was read
        self._checked = -math.inf

    def find(self, digest: str) -> Known | None:
        now = self.clock()
        if now - self._checked >= RELOAD_EVERY_S:
            self._checked = now
            self._reload()
        return self._known.get(digest)

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            version: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            version = None
        if version == self._version:
            return
        try:
            keys = read_keys(self.path)
        except Exception as e:  # noqa: BLE001 - a file that cannot be read keeps the keys known before
            log.warning("write keys not read again from %s (%s): the keys read before still hold", self.path, e)
            return
        self._version = version
        self._known = {k.sha256: self._entry(k) for k in keys}
        log.info("%d write keys (%d live) read from %s", len(keys), sum(not k.revoked for k in keys), self.path)

    def _entry(self, key: WriteKey) -> Known:
        old = self._known.get(key.sha256)
        rate, capacity = key.rate_per_s / self.workers, max(1.0, key.capacity / self.workers)
        if old is not None and (old.bucket.rate, old.bucket.capacity) == (rate, capacity):
            bucket = old.bucket  # a re-read does not fill the bucket again
        else:
            bucket = TokenBucket(rate, capacity, self.clock())
        return Known(key.name, key.revoked is not None, key.rate_per_s, bucket)


_digest = lru_cache(maxsize=4096)(key_hash)  # a client sends the same key again and again


class Authenticator:
    def __init__(self, settings: Settings, metrics: ApiMetrics) -> None:
        self.required = settings.api.keys_required
        self.table = KeyTable(settings.write_keys_file, settings.api.workers)
        self._rejected = {reason: metrics.rejected.labels(reason) for reason in REASONS}

    def source(self, headers: Headers) -> str | None:
        """The name of the request's key (None: sent without one, where none is required); else
        raises the 401, 403 or 429."""
        value = headers.get("authorization")
        if value is None:
            if self.required:
                raise self._refuse("missing_key", 401, "a write key is required: send `Authorization: Bearer <key>`")
            return None
        scheme, _, token = value.partition(" ")
        known = self.table.find(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if known is None:
            raise self._refuse("unknown_key", 401, "unknown write key (send `Authorization: Bearer <key>`)")
        if known.revoked:
            raise self._refuse("revoked_key", 403, f"write key {known.name!r} has been revoked")
        wait = known.bucket.take(self.table.clock())
        if wait:
            raise self._refuse(
                "rate_limited",
                429,
                f"write key {known.name!r} is over its rate of {known.rate_per_s:g} requests/s",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return known.name

    def _refuse(self, reason: str, status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
        self._rejected[reason].inc()
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return HTTPException(status, detail=detail, headers=headers)
