"""The write keys the stack makes for its own clients: `generator` and `replay`.

`invoke up` creates each one that is missing (`shopstream.write_keys.ensure_client_key`),
its plaintext kept in `<run_dir>/keys/<name>.key` (mode 0600; the API's key file holds only
hashes), and hands it to the process that sends with it as SHOPSTREAM_API__CLIENT_KEY: the
generator its own, the dashboard (whose replay button runs the replay CLI) and `invoke replay`
the `replay` key.
"""

from __future__ import annotations

from pathlib import Path

from shopstream.settings import Settings
from shopstream.write_keys import ensure_client_key, read_client_key

STACK_KEYS = ("generator", "replay")
CLIENT_KEY_ENV = "SHOPSTREAM_API__CLIENT_KEY"


def key_path(settings: Settings, name: str) -> Path:
    return settings.client_keys_dir / f"{name}.key"


def ensure_stack_keys(settings: Settings) -> list[str]:
    """Create the stack's keys that are missing (or no longer live); the names created."""
    return [name for name in STACK_KEYS if ensure_client_key(settings.write_keys_file, name, key_path(settings, name))]


def client_key_env(settings: Settings, name: str) -> dict[str, str]:
    """{SHOPSTREAM_API__CLIENT_KEY: the key} for a process sending as `name`; {} before it is made."""
    key = read_client_key(key_path(settings, name))
    return {CLIENT_KEY_ENV: key.get_secret_value()} if key is not None else {}
