"""Every 2 minutes: drain UserEvents from Kafka into MongoDB, then update per-user event counts.

Thin on purpose (Airflow's TaskFlow style): the logic lives in `shopstream_batch`,
where it is tested; connection settings come from the SHOPSTREAM_* environment.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


@dag(
    schedule=timedelta(minutes=2),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20), "execution_timeout": timedelta(minutes=5)},
    tags=["shopstream"],
    doc_md=__doc__,
)
def user_events_batch():
    @task
    def drain() -> dict:
        """Store every UserEvents record waiting at the start of the run (bounded time)."""
        from shopstream_batch.drain import drain_user_events

        return drain_user_events().as_dict()

    @task
    def aggregate(drained: dict) -> dict:
        """Upsert EventCount per (UserId, EventName) from the events not counted yet."""
        from shopstream_batch.aggregate import update_event_counts

        return update_event_counts().as_dict()

    aggregate(drain())


user_events_batch()
