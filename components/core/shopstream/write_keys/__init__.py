"""Write keys: who may send records to the ingestion API, at what rate, under what name.

A key is `sswk_` + 32 random bytes (`secrets.token_urlsafe`), shown once when it is created.
The key file (`Settings.write_keys_file`, JSON) keeps only its SHA-256 hash: a key has 256
bits of entropy, so a fast hash cannot be searched back, and the API checks a request with
one hash and one dictionary lookup. Each entry has the key's name (stamped on the records it
sends as `Source`), when it was created and revoked, and its rate limit (requests
per second, and the burst a client may spend at once).

A name has at most one live key; revoking it keeps the entry (the API answers 403 for it,
not 401), and the name may then get a new key. Every change rewrites the file atomically
(a temporary file beside it, fsynced, renamed over it) under an exclusive lock, so the API,
which re-reads the file when its mtime changes, never sees half a file.

This module is the one owner of the format: the API, the stack and the CLI
(`python -m shopstream.write_keys`, `invoke keys`) all go through it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, StringConstraints, TypeAdapter

from shopstream.contracts.records import MAX_KEY_NAME

PREFIX = "sswk_"
DEFAULT_RATE_PER_S = 2000.0  # requests per second a key may send unless created with another
VERSION = 1

KeyName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_KEY_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


class WriteKeyError(ValueError):
    """A create or revoke that cannot be done (a live key of that name, no such key)."""


class WriteKey(BaseModel):
    """One key's entry in the key file: never the key itself."""

    name: KeyName
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: datetime
    revoked: datetime | None = None
    rate_per_s: float = Field(DEFAULT_RATE_PER_S, gt=0)
    burst: float | None = Field(None, ge=1)  # None: one second's worth of the rate (at least 1)

    @property
    def capacity(self) -> float:
        """The most requests the key may send at once (its token bucket's size)."""
        return self.burst if self.burst is not None else max(1.0, self.rate_per_s)

    @property
    def hash_prefix(self) -> str:
        """Enough of the hash to tell keys apart in a listing (never the key)."""
        return self.sha256[:12]


class KeyFile(BaseModel):
    version: int = VERSION
    keys: list[WriteKey] = []


_FILE = TypeAdapter(KeyFile)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: Path) -> list[WriteKey]:
    """Every entry of the key file; none when it does not exist yet."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return []
    return _FILE.validate_json(text).keys


def _write(path: Path, keys: list[WriteKey]) -> None:
    """Replace the file at once: readers see the old or the new content, never a mix."""
    data = _FILE.dump_json(KeyFile(keys=keys), indent=2) + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


@contextmanager
def _locked(path: Path) -> Iterator[list[WriteKey]]:
    """The entries, read under an exclusive lock held until the change is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield read_keys(path)


def live(keys: list[WriteKey], name: str) -> WriteKey | None:
    return next((k for k in keys if k.name == name and k.revoked is None), None)


def create_key(path: Path, name: str, rate_per_s: float | None = None, burst: float | None = None) -> str:
    """Add a key named `name` and return it: the only time it is seen. Raises `WriteKeyError` when
    the name has a live key already (revoke it first)."""
    entry_name = TypeAdapter(KeyName).validate_python(name)
    key = new_key()
    with _locked(path) as keys:
        if live(keys, entry_name) is not None:
            raise WriteKeyError(f"{name!r} has a live key already: revoke it first")
        entry = WriteKey(
            name=entry_name,
            sha256=key_hash(key),
            created=datetime.now(UTC),
            rate_per_s=rate_per_s if rate_per_s is not None else DEFAULT_RATE_PER_S,
            burst=burst,
        )
        _write(path, [*keys, entry])
    return key


def revoke_key(path: Path, name: str) -> WriteKey:
    """Revoke the live key of `name` (its entry stays: the API answers 403 for it)."""
    with _locked(path) as keys:
        entry = live(keys, name)
        if entry is None:
            raise WriteKeyError(f"no live key named {name!r}")
        revoked = entry.model_copy(update={"revoked": datetime.now(UTC)})
        _write(path, [revoked if k is entry else k for k in keys])
    return revoked


def read_client_key(path: Path) -> SecretStr | None:
    """The plaintext key kept in `path` (the stack's <run_dir>/keys/<name>.key), or None."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return SecretStr(text) if text else None


def ensure_client_key(store: Path, name: str, key_file: Path) -> bool:
    """Make sure `key_file` holds a live key named `name` of the store; create one if not
    (the plaintext goes to `key_file`, mode 0600). True if a key was created.

    A live key of that name whose plaintext is not in `key_file` is revoked first: it is the
    stack's own name, and a key nobody holds is only a risk."""
    held = read_client_key(key_file)
    if held is not None:
        digest = key_hash(held.get_secret_value())
        if any(k.sha256 == digest and k.revoked is None for k in read_keys(store)):
            return False
    if live(read_keys(store), name) is not None:
        revoke_key(store, name)
    key = create_key(store, name)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.chmod(0o700)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    key_file.chmod(0o600)  # an existing file keeps its mode through O_CREAT
    return True
