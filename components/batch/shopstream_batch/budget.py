"""A run's time budget, and how much work fits in what is left of it.

A run works in steps (a drain batch, an aggregation batch) whose cost grows with their
size, and the servers' speed varies a lot: MongoDB here is a Python server that slows
down many times over on a busy machine. A fixed step size either wastes the budget or
overruns it (a batch of 5,000 events at 150/s is half a minute). So the first step is
small, each step is timed, and the next one takes what the rate measured so far says
fits in half the time left, never more than the configured size. A run that finds the
servers slow takes on less and still ends within its budget; the rest waits for the
next run, and a backlog shrinks run by run instead of turning into timeouts and retries.

A step never gets smaller than the first: part of a step's cost does not shrink with it
(an aggregation batch merges into every pair its events touch, up to all of them), so a
run ends once not even a step of the first's size fits in half the time left, instead of
trickling through ever smaller steps. That step's cost is judged from the first one,
scaled up when the first came back smaller than asked (a poll returns what the broker
had fetched). For a cost of a fixed part plus a part per item, no step after the first
then ends past the deadline: the fixed part fits in one half of the time left, the rest
in the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SHARE = 0.5  # of the time left, what one step may plan to use: a step twice as slow as the last still fits


class Budget:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = float(seconds), clock
        self.started = clock()
        self.deadline = self.started + self.seconds
        self.rate: float | None = None  # items per second of the steps so far (a slower step counts at once)
        self.first_s: float | None = None  # how long the first step took
        self.first_items = 0  # and how many items it had

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.deadline

    def elapsed(self) -> float:
        return self.clock() - self.started

    def size(self, cap: int, first: int) -> int:
        """How many items the next step may take: `first` before any step was timed; then 0
        when a step of `first` items no longer fits in SHARE of the time left, else what fits
        there at the measured rate, at most `cap` and never fewer than `first`."""
        left, first = self.left(), max(1, min(cap, first))
        if left <= 0:
            return 0
        if self.rate is None:
            return first
        if self._cost_of(first) > left * SHARE:  # its part that does not shrink would not fit
            return 0
        return max(first, min(cap, int(self.rate * left * SHARE)))

    def fits(self, items: int) -> bool:
        """Whether a step of `items` (a size fixed already, such as a batch the drain stored)
        fits in SHARE of the time left, judged by the first step as `size` judges it."""
        return self.size(items, first=items) > 0

    def _cost_of(self, items: int) -> float:
        """What a step of `items` may cost, at most, judged by the first step."""
        return (self.first_s or 0.0) * max(1.0, items / max(1, self.first_items))

    def took(self, items: int, seconds: float) -> None:
        """A step of `items` took `seconds`: a slower rate is believed at once, a faster one halfway."""
        if items <= 0:
            return
        if self.first_s is None:
            self.first_s, self.first_items = seconds, items
        rate = items / max(seconds, 1e-3)
        self.rate = rate if self.rate is None or rate < self.rate else (self.rate + rate) / 2
