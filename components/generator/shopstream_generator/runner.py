"""The generator's loop: one cohort per second, built and sent, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from shopstream.settings import KafkaSettings

from .catalogue import World, build_world, seeded_faker
from .cohort import build_cohort
from .dimensions import keep_publishing
from .sender import Report, Sender

COHORT_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Plan:
    api_url: str
    sessions_per_cohort: int = 50
    seed: int = 0
    users: int = 500
    products: int = 200
    seconds: float | None = None  # stop once this much time has passed (None: no limit)
    cohorts: int | None = None  # stop after this many cohorts (None: no limit)
    start: datetime | None = None  # `now` of the first cohort; None: the clock at each cohort
    concurrency: int = 16
    max_body_bytes: int = 1_048_576
    # where the world's products and customers are published, beside the cohorts (None: not)
    dimensions: KafkaSettings | None = None
    client_key: SecretStr | None = None  # the write key sent as Bearer (`api.client_key`); None: none


@dataclass(frozen=True)
class Outcome:
    cohorts: int
    elapsed_s: float
    totals: Report
    aborted: bool = False  # stopped in the middle of a cohort


async def run(
    plan: Plan,
    stop: asyncio.Event,
    totals: Report | None = None,
    say: Callable[[str], None] = lambda _: None,
    **sender_options,
) -> Outcome:
    """Send cohorts per `plan` until a limit is reached or `stop` is set (after the current cohort).

    `totals` is updated live as answers arrive, for a progress display; `say` gets a line
    once the dimension data is published (and one each time the broker would not take it yet).
    """
    world = build_world(plan.seed, plan.users, plan.products)
    done = threading.Event()  # the run is over: a publisher still retrying gives up
    if plan.dimensions is not None:  # beside the cohorts, in a thread of its own that retries
        threading.Thread(
            target=keep_publishing, args=(plan.dimensions, world, done, say), name="dimensions", daemon=True
        ).start()
    try:
        return await _send_cohorts(plan, world, stop, totals, **sender_options)
    finally:
        done.set()


async def _send_cohorts(
    plan: Plan, world: World, stop: asyncio.Event, totals: Report | None, **sender_options
) -> Outcome:
    fake = seeded_faker(f"cohorts:{plan.seed}")
    loop = asyncio.get_running_loop()
    number = 0
    async with Sender(
        plan.api_url,
        concurrency=plan.concurrency,
        max_body_bytes=plan.max_body_bytes,
        totals=totals,
        client_key=plan.client_key,
        **sender_options,
    ) as sender:
        began = next_at = loop.time()
        while not stop.is_set():
            if plan.start is None:
                now = datetime.now(UTC)
            else:
                now = plan.start + timedelta(seconds=number * COHORT_INTERVAL_S)
            await sender.send(build_cohort(world, fake, now, plan.sessions_per_cohort))
            number += 1
            # The next cohort is due a second later; after a slow cohort it starts at once (no catch-up burst).
            next_at = max(next_at + COHORT_INTERVAL_S, loop.time())
            if plan.cohorts is not None and number >= plan.cohorts:
                break
            if plan.seconds is not None and next_at - began >= plan.seconds:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), next_at - loop.time())
        return Outcome(number, loop.time() - began, sender.totals)
