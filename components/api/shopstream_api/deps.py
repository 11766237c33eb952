"""Request-scoped access to what the app was built with (settings, publisher)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from shopstream.settings import Settings

from .publisher import KafkaPublisher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_publisher(request: Request) -> KafkaPublisher:
    return request.app.state.publisher


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[KafkaPublisher, Depends(get_publisher)]
