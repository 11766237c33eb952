"""Each query restarted from its own checkpoint after a transient failure, with backoff.

A broker or S3 outage fails a query while the process lives on; left alone, the job
sat half-alive. Now a failed query is started again from the same checkpoint, after
tenacity's exponential backoff (1, 2, 4 ... s, capped at 30 s, for as long as the
process runs; back to 1 s once the query has made progress again). The checkpoint is
the truth: the restarted query re-runs the batch the failure interrupted (its offsets
are in the log, its files are not in the sink's log), so the lake and the quarantine
get each record once. The first start goes the same way, so a job started while the
broker is down waits for it. A failure that waiting cannot cure (`failures`) is not
retried here: the runner turns `fatal`, and the job exits non-zero for its supervisor
to start a fresh process.

Each start runs in a thread of its own: it reads the sink's log on S3, which blocks
while s3a retries an S3 that is down, and the job's loop must go on writing the status
file and answering signals meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, Retrying, wait_exponential

from .failures import headline, is_transient

log = logging.getLogger("shopstream_streaming")

BACKOFF = wait_exponential(multiplier=1, min=1, max=30)  # seconds: 1, 2, 4, 8, 16, 30, 30, ...


def backoff_s(failures: int) -> float:
    """The wait before the start that follows `failures` failures in a row (tenacity's policy)."""
    state = RetryCallState(Retrying(), None, (), {})  # the policy reads the attempt number only
    state.attempt_number = max(1, failures)
    return float(BACKOFF(state))


def error_text(error: BaseException) -> str:
    """What the error and its causes say (pyspark keeps a captured cause in `_cause`)."""
    parts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 5:
        spark_or_py4j = type(seen).__module__.startswith(("pyspark", "py4j"))
        parts.append(str(seen) if spark_or_py4j else f"{type(seen).__name__}: {seen}")
        seen = getattr(seen, "_cause", None) or seen.__cause__
    return "\n".join(parts)


class QueryRunner:
    """One query: started (in a thread), watched by `step`, restarted after transient failures.

    States: `starting` (the first start), `running`, `restarting` (failed; waiting for
    `retry_at`, or starting again when that is None), `failed` (not transient: the job
    exits), `stopped` (ended without an error: --available-now is done)."""

    def __init__(self, name: str, start: Callable[[], Any], clock: Callable[[], float] = time.time) -> None:
        self.name, self._start, self._clock = name, start, clock
        self.query: Any = None  # the StreamingQuery of the current run (the failed one while restarting)
        self.started_at: float | None = None  # when the current run started
        self.restarts = 0  # starts after a failure, since the job started
        self.failures = 0  # failures in a row: the backoff's step; 0 again once the query progressed
        self.error: str | None = None  # the last failure's first line (kept once it runs again)
        self.failed_at: float | None = None
        self.retry_at: float | None = None  # while restarting: when the next start is due
        self.fatal: str | None = None  # a failure waiting cannot cure: the job must exit
        self._attempt: threading.Thread | None = None
        self._outcome: tuple[Any, BaseException | None] = (None, None)

    @property
    def state(self) -> str:
        if self.fatal:
            return "failed"
        if self.failures and (self.retry_at is not None or self._attempt is not None):
            return "restarting"
        if self._attempt is not None:
            return "starting"
        if self.query is not None and not self.query.isActive:
            return "stopped"
        return "running" if self.query is not None else "starting"

    def start(self) -> None:
        """Start the query; `step` sees how that went."""

        def attempt() -> None:
            try:
                self._outcome = (self._start(), None)
            except BaseException as e:  # noqa: BLE001 - classified by step, in the job's loop
                self._outcome = (None, e)

        self._outcome = (None, None)
        self._attempt = threading.Thread(target=attempt, name=f"start-{self.name}", daemon=True)
        self._attempt.start()

    def step(self, stopping: bool = False) -> None:
        """Look once: take a finished start, notice a failure, start again when due."""
        now = self._clock()
        if self.fatal:
            return
        if self._attempt is not None:
            if self._attempt.is_alive():
                return
            self._attempt = None
            query, error = self._outcome
            if error is not None:
                self._failed(error, now)
            else:
                self.query, self.started_at = query, now
            return
        if self.retry_at is not None:
            if now >= self.retry_at and not stopping:
                self.retry_at = None
                self.restarts += 1
                log.warning(
                    "query %s: restarting from its checkpoint (restart %d, after %s)",
                    self.name,
                    self.restarts,
                    self.error,
                )
                self.start()
            return
        if self.query is None:
            return
        error = self.query.exception()
        if error is not None:
            self._failed(error, now)
        elif self.failures and self.query.lastProgress is not None:
            log.info("query %s runs again after %d restart(s)", self.name, self.restarts)
            self.failures = 0

    def settle(self, timeout_s: float) -> None:
        """Wait for a start in flight (at most `timeout_s`), then take its outcome."""
        if self._attempt is not None:
            self._attempt.join(timeout_s)
            self.step(stopping=True)

    def _failed(self, error: BaseException, now: float) -> None:
        text = error_text(error)
        self.error, self.failed_at = headline(text), now
        if not is_transient(text):
            self.fatal = self.error
            log.error(
                "query %s failed, and not for a broker or S3 that did not answer; not restarted in this process:\n%s",
                self.name,
                text,
            )
            return
        self.failures += 1
        wait = backoff_s(self.failures)
        self.retry_at = now + wait
        log.warning("query %s failed: %s; restarting it from its checkpoint in %.0f s", self.name, self.error, wait)
        log.debug("query %s failed:\n%s", self.name, text)
