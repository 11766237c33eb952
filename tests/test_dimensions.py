"""Dimension data end to end on the real servers: the generator's world published to the
compacted topics, loaded by the batch's `dimensions` task into PostgreSQL, and the tables
compared with the world; loading again, a changed product, a record that breaks the contract."""

from __future__ import annotations

import uuid

import pytest
from kafka.admin import ConfigResource, ConfigResourceType
from sqlalchemy import text

from shopstream.adapters.kafka import admin_client, end_offsets, group_committed
from shopstream.adapters.postgres import pg_engine
from shopstream.contracts.dimensions import CUSTOMERS, PRODUCTS, ProductInfo
from shopstream.settings import Settings
from shopstream_batch.dimensions import load_dimensions
from shopstream_generator import dimensions
from shopstream_generator.catalogue import build_world

pytestmark = pytest.mark.services


@pytest.fixture
def cfg(stack, settings) -> Settings:
    """Topics, a consumer group and a database of this test's own."""
    tag = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"products_topic": f"Products-{tag}", "customers_topic": f"Customers-{tag}"}
            ),
            "postgres": settings.postgres.model_copy(update={"database": f"dims_{tag}"}),
            "batch": settings.batch.model_copy(update={"dimensions_group": f"dims-{tag}", "batch_size": 150}),
        }
    )


def table(cfg: Settings, name: str) -> dict[str, tuple]:
    """Every row of a dimension table by its key, updated_at last."""
    t = {PRODUCTS.name: PRODUCTS, CUSTOMERS.name: CUSTOMERS}[name]
    engine = pg_engine(cfg.postgres)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT {', '.join(t.columns)}, updated_at FROM {t.name}")).all()
    finally:
        engine.dispose()
    return {r[0]: tuple(r) for r in rows}


def expected(t, records) -> dict[str, tuple]:
    return {r[0]: r for r in (tuple(t.row(m).values()) for m in records)}


def without_time(rows: dict[str, tuple]) -> dict[str, tuple]:
    return {k: v[:-1] for k, v in rows.items()}


def committed_everything(cfg: Settings) -> bool:
    return all(
        group_committed(cfg.kafka, cfg.batch.dimensions_group, t) == end_offsets(cfg.kafka, t)
        for t in cfg.kafka.dimension_topics
    )


def publish_raw(cfg: Settings, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    from shopstream.adapters.kafka import kafka_producer

    producer = kafka_producer(cfg.kafka, acks="all")
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value).get(timeout=60)
    finally:
        producer.close()


def test_a_published_world_loads_into_postgresql_exactly_and_again_changes_nothing(cfg):
    world = build_world(3, users=300, products=120)
    assert dimensions.publish_world(cfg.kafka, world) == (120, 300)

    admin = admin_client(cfg.kafka)
    try:  # the adapter created them compacted
        found = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in cfg.kafka.dimension_topics]
        )
    finally:
        admin.close()
    assert {t: c["cleanup.policy"]["value"] for t, c in next(iter(found.values())).items()} == dict.fromkeys(
        cfg.kafka.dimension_topics, "compact"
    )

    report = load_dimensions(cfg)
    assert (report.products, report.customers, report.invalid, report.changed, report.remaining) == (
        120,
        300,
        0,
        420,
        0,
    )
    assert report.batches >= 3  # batch_size 150: several batches, each committed after its write
    assert committed_everything(cfg)
    products, customers = table(cfg, "products"), table(cfg, "customers")
    assert without_time(products) == expected(PRODUCTS, dimensions.products(world))
    assert without_time(customers) == expected(CUSTOMERS, dimensions.customers(world))

    # nothing new: nothing read; the world published again: read, and no row changes
    assert load_dimensions(cfg).as_dict() | {"seconds": 0} == {**report.as_dict(), "seconds": 0} | {
        "products": 0,
        "customers": 0,
        "changed": 0,
        "batches": 0,
    }
    dimensions.publish_world(cfg.kafka, world)
    again = load_dimensions(cfg)
    assert (again.products, again.customers, again.changed) == (120, 300, 0)
    assert (table(cfg, "products"), table(cfg, "customers")) == (products, customers)  # updated_at too

    # a run that never committed (a crash before the commit, or a new group) reads it all again: same rows
    fresh = cfg.model_copy(
        update={"batch": cfg.batch.model_copy(update={"dimensions_group": cfg.batch.dimensions_group + "-b"})}
    )
    reread = load_dimensions(fresh)
    assert reread.products >= 120 and reread.changed == 0
    assert (table(cfg, "products"), table(cfg, "customers")) == (products, customers)


def test_a_changed_product_updates_its_row_and_a_broken_record_is_counted_and_skipped(cfg):
    world = build_world(4, users=20, products=30)
    dimensions.publish_world(cfg.kafka, world)
    load_dimensions(cfg)
    before = table(cfg, "products")

    first = dimensions.products(world)[0]
    changed = first.model_copy(update={"Name": first.Name + " (2nd edition)", "ListPrice": first.ListPrice + 1})
    topic = cfg.kafka.products_topic
    publish_raw(
        cfg,
        topic,
        [
            (b"sku-bad", b'{"ProductId": "sku-bad", "Name": "no category"}'),  # breaks the contract
            (b"sku-junk", b"\xff not json"),
            (first.ProductId.encode(), changed.model_dump_json().encode()),
        ],
    )
    report = load_dimensions(cfg)
    assert (report.products, report.invalid, report.changed) == (1, 2, 1)
    assert committed_everything(cfg)  # the broken records are behind the group: not read again
    after = table(cfg, "products")
    assert after.keys() == before.keys()  # no row for either broken record
    assert without_time(after)[first.ProductId] == tuple(PRODUCTS.row(changed).values())
    assert (
        ProductInfo.model_validate(dict(zip(ProductInfo.model_fields, after[first.ProductId][:-1], strict=True)))
        == changed
    )
    assert after[first.ProductId][-1] > before[first.ProductId][-1]  # updated_at: when it changed
    assert {k: v for k, v in after.items() if k != first.ProductId} == {
        k: v for k, v in before.items() if k != first.ProductId
    }

    # a tombstone (the key deleted) deletes the row
    publish_raw(cfg, topic, [(first.ProductId.encode(), None)])
    assert load_dimensions(cfg).deleted == 1
    assert first.ProductId not in table(cfg, "products")
