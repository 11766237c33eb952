"""A run's budget (shopstream_batch.budget), fuzzed: whatever the servers' speed and however
much each poll returns, no step after the first ends past the run's deadline, and a run
takes on work while a step still fits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shopstream_batch.budget import Budget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(
    seconds=st.floats(0.5, 60),
    fixed=st.floats(0.01, 2),
    per_item=st.floats(1e-5, 1e-2),
    cap=st.sampled_from([100, 1000, 5000]),
    first=st.sampled_from([1, 10, 500, 2000]),
    returned=st.lists(st.floats(0.01, 1), min_size=1, max_size=60),
)
def test_no_step_after_the_first_ends_past_the_deadline(seconds, fixed, per_item, cap, first, returned):
    clock = Clock()
    budget = Budget(seconds, clock)
    steps = 0
    while size := budget.size(cap, first):
        assert size <= cap
        # a poll returns up to what was asked (what the broker had fetched)
        items = max(1, round(size * returned[steps % len(returned)]))
        cost = fixed + per_item * items
        clock.now += cost
        steps += 1
        if steps > 1:
            assert clock.now <= budget.deadline, (
                f"step {steps} of {items} items ended {clock.now - budget.deadline} s late"
            )
        elif clock.now > budget.deadline:
            break  # the first step is a guess that times the servers
        budget.took(items, cost)
    else:  # it stopped only once not even a step of the first's size fits in half the time left
        assert budget.left() < 2 * (fixed + per_item * min(cap, first)) * max(1, min(cap, first))


def test_a_short_first_poll_does_not_make_a_full_step_look_cheap():
    """The failure seen in test_batch_catchup: a first poll of 168 records (of 500 asked) timed a
    step of 500 at a third of its cost, so the run's last step of 500 ended past the deadline."""
    clock = Clock()
    budget = Budget(10, clock)
    assert budget.size(5000, 500) == 500
    clock.now += 168 * 0.005
    budget.took(168, 168 * 0.005)
    while size := budget.size(5000, 500):
        clock.now += size * 0.005
        assert clock.now <= budget.deadline
        budget.took(size, size * 0.005)
