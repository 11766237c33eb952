"""The `dimensions` task: Products and Customers from their compacted topics into PostgreSQL.

Reads what the topics hold when the run starts, from the consumer group's committed offsets
(from the beginning the first time), in batches: each record is checked against its contract
(`shopstream.contracts.dimensions`), the batch upserted in one transaction, and only then
are its offsets committed. A run that dies before the commit reads the batch again, and the
upsert writes the same rows: the tables end up exact either way. A record that breaks the
contract is logged and counted, never stored, and does not stop the run; a tombstone (no
value: the key deleted) deletes its row.

The partitions are assigned, not joined as a group member: there is no rebalance to wait
for and no member left behind by a killed run, and the group keeps the offsets all the same.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError
from sqlalchemy import Engine, text

from shopstream.adapters.kafka import ensure_topics, kafka_consumer
from shopstream.adapters.postgres import ensure_database, pg_engine
from shopstream.contracts.dimensions import CUSTOMERS, PRODUCTS, DimensionTable
from shopstream.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class DimensionsReport:
    products: int = 0  # valid records read (a key read twice counts twice)
    customers: int = 0
    invalid: int = 0  # records that broke the contract: logged, skipped
    deleted: int = 0  # tombstones
    changed: int = 0  # rows inserted or updated (an unchanged record changes nothing)
    batches: int = 0
    remaining: int = 0  # records waiting at the start that the run left for the next one
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (PRODUCTS, CUSTOMERS):
            conn.execute(text(table.ddl))


def _write(engine: Engine, batch: dict[DimensionTable, dict[str, dict[str, Any] | None]]) -> int:
    """Upsert the rows and delete the tombstoned keys, in one transaction; rows changed."""
    changed = 0
    with engine.begin() as conn:
        for table, rows in batch.items():
            upserts = [r for r in rows.values() if r is not None]
            deletes = [{"key": k} for k, r in rows.items() if r is None]
            if upserts:
                changed += conn.execute(text(table.upsert), upserts).rowcount
            if deletes:
                conn.execute(text(f"DELETE FROM {table.name} WHERE {table.key} = :key"), deletes)
    return changed


def load_dimensions(settings: Settings | None = None, max_seconds: float | None = None) -> DimensionsReport:
    """Load what waits in the products and customers topics now into PostgreSQL, within
    `max_seconds` (by default `batch.max_seconds`)."""
    settings = settings or get_settings()
    kafka, cfg = settings.kafka, settings.batch
    began = time.monotonic()
    deadline = began + (cfg.max_seconds if max_seconds is None else max_seconds)
    tables = {kafka.products_topic: PRODUCTS, kafka.customers_topic: CUSTOMERS}
    ensure_topics(kafka)
    ensure_database(settings.postgres)
    engine = pg_engine(settings.postgres)
    ensure_tables(engine)
    report = DimensionsReport()
    consumer = kafka_consumer(
        kafka,
        group_id=cfg.dimensions_group,
        client_id="shopstream-dimensions",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=cfg.batch_size,
    )
    try:
        tps = [TopicPartition(t, p) for t in tables for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)  # what waits now: this run's targets
        while time.monotonic() < deadline:
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            polled = consumer.poll(timeout_ms=1000, max_records=cfg.batch_size)
            batch: dict[DimensionTable, dict[str, dict[str, Any] | None]] = {t: {} for t in tables.values()}
            upto: dict[TopicPartition, int] = {}
            for tp, records in polled.items():
                table = tables[tp.topic]
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    upto[tp] = r.offset + 1
                    if r.value is None:  # a tombstone: the key is gone
                        batch[table][r.key.decode()] = None
                        report.deleted += 1
                        continue
                    try:
                        record = table.model.model_validate_json(r.value)
                    except ValidationError as e:
                        report.invalid += 1
                        log.warning("%s-%d@%d is no %s: %s", tp.topic, tp.partition, r.offset, table.model.__name__, e)
                        continue
                    row = table.row(record)
                    batch[table][row[table.key]] = row  # the latest of a key wins, as compaction keeps it
                    if table is PRODUCTS:
                        report.products += 1
                    else:
                        report.customers += 1
            if not upto:
                continue
            report.changed += _write(engine, batch)
            # PostgreSQL has the batch: now, and only now, commit past it
            consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in upto.items()})
            report.batches += 1
        report.remaining = sum(max(0, ends[tp] - consumer.position(tp)) for tp in tps)
    finally:
        consumer.close(autocommit=False)
        engine.dispose()
    report.seconds = round(time.monotonic() - began, 3)
    log.info("dimensions loaded: %s", report.as_dict())
    return report
