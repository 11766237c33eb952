"""Every 2 minutes: drain UserEvents from Kafka into MongoDB, update per-user event counts,
then the sessions (with their daily metrics and product engagement); beside them, load the
products and customers (dimension data) from Kafka into PostgreSQL.

Thin on purpose (Airflow's TaskFlow style): the logic lives in `shopstream_batch`,
where it is tested; settings come from the SHOPSTREAM_* environment, the schedule and
the timeouts included (`BatchSettings`): each task works within its budget
(`SHOPSTREAM_BATCH__MAX_SECONDS`, `__AGGREGATE_MAX_SECONDS`, `__SESSIONS_MAX_SECONDS`) and leaves the rest for the
next run, which starts as soon as this one ends while a backlog lasts (one run at a time,
no catch-up runs); its execution_timeout is that budget plus `__OVERRUN_SECONDS`, for a
server that hangs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from shopstream.settings import get_settings

BATCH = get_settings().batch


@dag(
    schedule=timedelta(seconds=BATCH.period_seconds),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=20)},
    tags=["shopstream"],
    doc_md=__doc__,
)
def user_events_batch():
    @task(execution_timeout=timedelta(seconds=BATCH.drain_timeout_s))
    def drain() -> dict:
        """Store the UserEvents records waiting at the start of the run, within the drain's budget."""
        from shopstream_batch.drain import drain_user_events

        return drain_user_events().as_dict()

    @task(execution_timeout=timedelta(seconds=BATCH.aggregate_timeout_s))
    def aggregate() -> dict:
        """Upsert EventCount per (UserId, EventName) from the events not counted yet, within its budget."""
        from shopstream_batch.aggregate import update_event_counts

        return update_event_counts().as_dict()

    @task(execution_timeout=timedelta(seconds=BATCH.sessions_timeout_s))
    def sessions() -> dict:
        """Merge the newly counted events and the lake's new purchases into the sessions, within its budget."""
        from shopstream_batch.sessions import update_sessions

        return update_sessions().as_dict()

    @task(execution_timeout=timedelta(seconds=BATCH.dimensions_timeout_s))
    def dimensions() -> dict:
        """Upsert the Products and Customers topics' new records into PostgreSQL."""
        from shopstream_batch.dimensions import load_dimensions

        return load_dimensions().as_dict()

    drain() >> aggregate() >> sessions()
    dimensions()


user_events_batch()
