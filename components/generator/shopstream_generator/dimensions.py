"""The world's catalogue and customers as dimension data, published to their compacted topics.

Each record is the contract's JSON (`shopstream.contracts.dimensions`) keyed by its id, so
the broker's compaction keeps the latest of each product and customer. Publishing the same
world again changes nothing a reader ends up with; the batch's `dimensions` task loads them
into PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from kafka.errors import KafkaError
from pydantic import BaseModel
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from shopstream.adapters.kafka import ensure_topics, kafka_producer
from shopstream.contracts.dimensions import Customer, ProductInfo, key_of
from shopstream.settings import KafkaSettings

from .catalogue import World


def products(world: World) -> list[ProductInfo]:
    return [
        ProductInfo(ProductId=p.product_id, Name=p.name, Category=p.category, Brand=p.brand, ListPrice=p.price)
        for p in world.products
    ]


def customers(world: World) -> list[Customer]:
    return [
        Customer(UserId=u.user_id, SignupDate=u.signup_date, HomeCountry=u.home_country, HomeCity=u.home_city)
        for u in world.users
    ]


def publish(kafka: KafkaSettings, records: Mapping[str, Sequence[BaseModel]], timeout_s: float = 60) -> int:
    """Send `records` (topic -> models, each keyed by its first field, the id) and wait until
    the broker has acknowledged every one (acks=all); raises if one was not. Returns how many."""
    ensure_topics(kafka)  # the compacted topics, before anything could create them otherwise
    producer = kafka_producer(kafka, acks="all", linger_ms=20, client_id="shopstream-generator-dimensions")
    try:
        sent = [
            producer.send(topic, key=key_of(r).encode(), value=r.model_dump_json().encode())
            for topic, models in records.items()
            for r in models
        ]
        producer.flush(timeout=timeout_s)
        for future in sent:
            future.get(timeout=timeout_s)  # the broker's answer: raises the error it gave
    finally:
        producer.close(timeout=timeout_s)
    return len(sent)


def publish_world(kafka: KafkaSettings, world: World) -> tuple[int, int]:
    """The world's products and customers to `products_topic` and `customers_topic`; their counts."""
    ps, cs = products(world), customers(world)
    publish(kafka, {kafka.products_topic: ps, kafka.customers_topic: cs})
    return len(ps), len(cs)


def keep_publishing(kafka: KafkaSettings, world: World, stop: threading.Event, say: Callable[[str], None]) -> None:
    """`publish_world` until the broker has taken it all or `stop` is set, with tenacity's
    exponential backoff (1, 2, 4 ... s, capped at 30 s) after each failure: a broker that is down
    when the generator starts delays the dimension data, never the cohorts (the API keeps those)."""

    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        say(f"dimension data not published yet ({type(error).__name__}: {error}); again in {wait:.0f} s")

    retrying = Retrying(
        wait=wait_exponential(min=1, max=30),
        retry=retry_if_exception_type((KafkaError, OSError)),
        stop=lambda _: stop.is_set(),
        sleep=stop.wait,  # type: ignore[arg-type] # returns a bool tenacity ignores; a stop ends the wait at once
        before_sleep=waiting,
        reraise=True,
    )
    try:
        n_products, n_customers = retrying(publish_world, kafka, world)
    except (KafkaError, OSError):
        return  # stopped before the broker took it: the next start publishes it
    topics = f"{kafka.products_topic} and {n_customers:,} customers to {kafka.customers_topic}"
    say(f"published {n_products:,} products to {topics}")
