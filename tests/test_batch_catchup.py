"""Every stage catches up (issue 14): after a MongoDB outage, the batch works a backlog off
run by run, each run within its budget, and the counts are exact at the end.

The runs are the DAG's two tasks, called as its tasks call them, on a broker and a MongoDB
of this module's own (test_faults' `own`: stopped and started here). The budgets are on
clocks of the test's own that only work moves on (each event stored or counted costs a
fixed time), so how much a run takes on is the same on an idle machine and a busy one,
and nothing here depends on timing.
"""

from __future__ import annotations

import pytest
from pymongo.errors import PyMongoError

from shopstream_batch import aggregate as aggregate_module
from shopstream_batch import drain as drain_module
from shopstream_batch.aggregate import apply, update_event_counts
from shopstream_batch.budget import Budget
from shopstream_batch.drain import drain_user_events, store
from test_faults import assert_counts_exact, back_up, events, own, scoped, send_events  # noqa: F401 - `own` is a fixture

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]  # about a minute; this only stops a hang

BUDGET_S = 10.0
STORE_COST_S, COUNT_COST_S = 0.005, 0.002  # per event: a run drains about 1,250 and counts about 2,000


class Work:
    """A clock that only charged work moves on; notes whether each step of the current run
    ended past the run's deadline."""

    def __init__(self) -> None:
        self.now, self.budget, self.late = 0.0, None, []

    def clock(self) -> float:
        return self.now

    def run(self, seconds: float) -> Budget:
        self.budget, self.late = Budget(seconds, self.clock), []
        return self.budget

    def charge(self, seconds: float) -> None:
        self.now += seconds
        self.late.append(self.now > self.budget.deadline)


def test_a_backlog_left_by_a_mongodb_outage_is_worked_off_run_by_run_within_budgets(own, monkeypatch):  # noqa: F811 - `own`: the fixture imported above
    cfg = scoped(own.settings, "catchup")
    stored, counted = Work(), Work()

    def slow_store(colls, messages, report, member):
        batch_id = store(colls, messages, report, member)
        stored.charge(STORE_COST_S * len(messages))
        return batch_id

    def slow_apply(colls, batch_id):
        merged = apply(colls, batch_id)
        counted.charge(COUNT_COST_S * merged.events)
        return merged

    monkeypatch.setattr(drain_module, "store", slow_store)
    monkeypatch.setattr(aggregate_module, "apply", slow_apply)

    def dag_run():
        drained = drain_user_events(cfg, budget=stored.run(BUDGET_S))
        assert not any(stored.late), f"a drain batch ended past the run's budget: {drained.as_dict()}"
        aggregated = update_event_counts(cfg, budget=counted.run(BUDGET_S))
        assert not any(counted.late), f"an aggregation batch ended past the run's budget: {aggregated.as_dict()}"
        return drained, aggregated

    sent = events("before", 300)
    send_events(cfg, sent)
    drained, aggregated = dag_run()
    assert drained.done and aggregated.remaining == 0

    own.mongo.stop()  # the outage: traffic goes on, the runs fail
    try:
        during = events("during", 5000)
        send_events(cfg, during)
        sent += during
        with pytest.raises(PyMongoError):
            drain_user_events(cfg, budget=stored.run(BUDGET_S))
    finally:
        back_up(own.mongo)

    outstanding: list[int] = []  # waiting in Kafka + stored and not counted, after each run
    while not outstanding or outstanding[-1]:
        assert len(outstanding) < 25, outstanding
        if len(outstanding) < 3:  # traffic goes on while the batch catches up
            more = events(f"after{len(outstanding)}", 200)
            send_events(cfg, more)
            sent += more
        drained, aggregated = dag_run()
        assert drained.remaining_known, drained
        outstanding.append(drained.remaining + aggregated.remaining)
        if len(outstanding) > 1:
            assert outstanding[-1] < outstanding[-2], f"the backlog did not shrink: {outstanding}"
    assert len(outstanding) > 2, f"one run took the whole backlog: budgets too large to show anything ({outstanding})"
    assert drained.done and aggregated.remaining == 0
    assert_counts_exact(cfg, sent)
    print(f"backlog after each run: {outstanding}")
