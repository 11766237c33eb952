"""Request-scoped access to what the app was built with (the publisher, for the health routes).

`async def`: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per
request for a dictionary lookup. (The ingestion routes read `request.app.state` directly:
`IngestRoute` solves no dependencies.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .publisher import KafkaPublisher


async def get_publisher(request: Request) -> KafkaPublisher:
    return request.app.state.publisher


PublisherDep = Annotated[KafkaPublisher, Depends(get_publisher)]
