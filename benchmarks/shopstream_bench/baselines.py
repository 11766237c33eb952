"""The two apps the API benchmark measures ours against, on the same broker, uvicorn and wrk load.

- `naive_app`: what a first implementation of this project looks like (the seed's shape):
  sync FastAPI endpoints (`def`, run in FastAPI's thread pool) that validate with the same
  contract models, then publish with kafka-python and wait for each record's
  acknowledgement (`send(...).get()`), acks=all like ours. No journal, no metrics.
- `floor_app`: bare FastAPI and a plain Pydantic model of the event and of a purchase (the
  fields, no rules), `async def`, nothing published, no middleware: what the framework
  itself allows on this machine. Our API's requests/s is measured against it.

Both answer the same routes (PUT /SendEvent, POST /PurchasedItems) with a small JSON body.
Run as uvicorn factories (`--factory shopstream_bench.baselines:naive_app`).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import FastAPI
from pydantic import BaseModel

from shopstream.contracts import Purchase, UserEvent


def naive_app() -> FastAPI:
    from shopstream.adapters.kafka import kafka_producer
    from shopstream.settings import get_settings

    settings = get_settings()
    producer = kafka_producer(settings.kafka, acks="all")
    events, purchases_topic = settings.kafka.user_events_topic, settings.kafka.purchases_topic
    app = FastAPI(title="naive baseline")

    @app.put("/SendEvent")
    def send_event(event: UserEvent) -> dict:
        meta = producer.send(events, key=event.UserId.encode(), value=event.model_dump_json().encode()).get(timeout=10)
        return {"status": "ok", "Partition": meta.partition, "Offset": meta.offset}

    @app.post("/PurchasedItems")
    def purchased_items(purchases: list[Purchase]) -> dict:
        futures = [
            producer.send(purchases_topic, key=p.UserId.encode(), value=p.model_dump_json().encode()) for p in purchases
        ]
        for f in futures:
            f.get(timeout=10)
        return {"status": "ok", "Accepted": len(futures)}

    return app


class Attributes(BaseModel):
    ProductId: str
    Price: float
    Discount: float


class Event(BaseModel):
    UserId: str
    SessionId: str
    EventName: str
    TimeStamp: datetime
    Attributes: Attributes


class Line(BaseModel):
    ProductId: str
    ItemCount: int
    ItemPrice: float
    ItemDiscount: float


class Order(BaseModel):
    SessionId: str
    TimeStamp: datetime
    UserId: str
    TotalPrice: float
    OrderId: str
    Products: list[Line]
    PaymentType: str


def floor_app() -> FastAPI:
    app = FastAPI(title="framework floor")

    @app.put("/SendEvent")
    async def send_event(event: Event) -> dict:
        return {"status": "ok", "UserId": event.UserId}

    @app.post("/PurchasedItems")
    async def purchased_items(purchases: list[Order]) -> dict:
        return {"status": "ok", "Accepted": len(purchases)}

    return app
