"""Liveness and readiness for orchestrators and `invoke status`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import PublisherDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The broker is reachable, so ingestion can succeed",
    responses={503: {"description": "Kafka is unreachable"}},
)
async def readyz(publisher: PublisherDep) -> JSONResponse:
    ok = await publisher.ready()
    return JSONResponse({"status": "ready" if ok else "unavailable", "kafka": ok}, status_code=200 if ok else 503)
