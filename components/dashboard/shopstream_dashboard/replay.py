"""The rejects' replay button: `python -m shopstream_replay <source> --reason R --json`, the
command `invoke replay` runs, as a child process (components never import one another).

The child gets the dashboard's settings as SHOPSTREAM_* variables, so it replays into the
same stack through the API, with the replay write key when the settings carry one. One replay
runs at a time; it is stopped after `REPLAY_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
from typing import Any, Literal

from shopstream.settings import Settings

MODULE = "shopstream_replay"
REPLAY_TIMEOUT_S = 600.0
ReplaySource = Literal["dead-letters", "quarantine"]


class ReplayFailed(RuntimeError):
    """The replay could not run or did not finish: `status` is the HTTP answer's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def available() -> bool:
    return importlib.util.find_spec(MODULE) is not None


def command(source: ReplaySource, reason: str | None, dry_run: bool) -> list[str]:
    args = [sys.executable, "-m", MODULE, source, "--json"]
    if reason is not None:
        args += ["--reason", reason]
    if dry_run:
        args.append("--dry-run")
    return args


class Replayer:
    def __init__(self, settings: Settings, timeout_s: float = REPLAY_TIMEOUT_S) -> None:
        self.settings, self.timeout_s = settings, timeout_s
        self.lock = asyncio.Lock()

    async def run(self, source: ReplaySource, reason: str | None, dry_run: bool = False) -> dict[str, Any]:
        """The CLI's summary (one JSON object on its stdout), with its exit code."""
        if not available():
            raise ReplayFailed(503, f"replay is not installed here: no module {MODULE} (the replay component)")
        if self.lock.locked():
            raise ReplayFailed(409, "a replay is running: wait for its summary")
        async with self.lock:
            proc = await asyncio.create_subprocess_exec(
                *command(source, reason, dry_run),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **self.settings.to_env()},
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise ReplayFailed(504, f"the replay did not finish in {self.timeout_s:.0f} s: stopped") from None
        text = err.decode("utf-8", "replace").strip()
        if f"No module named {MODULE}" in text:
            raise ReplayFailed(503, f"replay is not installed here: no module {MODULE}")
        try:
            summary = json.loads(out)
        except ValueError:
            summary = None
        if not isinstance(summary, dict):
            raise ReplayFailed(502, f"the replay exited with {proc.returncode}: {text[-800:] or out[-800:]!r}")
        return {**summary, "exit_code": proc.returncode}
