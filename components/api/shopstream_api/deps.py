"""Request-scoped access to what the app was built with (settings, publisher).

`async def`: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per
request for a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shopstream.settings import Settings

from .publisher import KafkaPublisher


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_publisher(request: Request) -> KafkaPublisher:
    return request.app.state.publisher


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[KafkaPublisher, Depends(get_publisher)]
