"""Request-scoped access to what the app was built with (settings, publisher, ingestor).

`async def`: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per
request for a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shopstream.settings import Settings

from .ingestor import Ingestor
from .publisher import KafkaPublisher


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_publisher(request: Request) -> KafkaPublisher:
    return request.app.state.publisher


async def get_ingestor(request: Request) -> Ingestor:
    return request.app.state.ingestor


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[KafkaPublisher, Depends(get_publisher)]
IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]
