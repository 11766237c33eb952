"""GET /schemas: the contracts' JSON Schemas, every released version, as committed.

Served from the files in the core package (`shopstream.contracts.versions`), not generated
from the models in this process: a consumer reading an older record asks for the schema it
was written under, and gets exactly the file the compatibility test checked. No key is
needed: the schemas say what the API accepts, as its OpenAPI document does.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from shopstream.contracts.versions import released

router = APIRouter(prefix="/schemas", tags=["schemas"])


class SchemaListing(BaseModel):
    Model: str
    Version: int  # the latest released
    Url: str  # its schema
    Versions: list[int]  # every released version, oldest first


@cache
def _files() -> dict[str, dict[int, dict[str, Any]]]:
    return {name: {v: json.loads(f.read_text()) for v, f in vs.items()} for name, vs in released().items()}


def _schema(model: str, version: int | None = None) -> JSONResponse:
    versions = _files().get(model)
    if not versions:
        raise HTTPException(404, f"no contract {model!r}; known: {', '.join(sorted(_files()))}")
    version = max(versions) if version is None else version
    if version not in versions:
        raise HTTPException(404, f"{model} has no v{version}; released: {', '.join(f'v{v}' for v in versions)}")
    return JSONResponse(versions[version], headers={"Schema-Version": str(version)})


@router.get("", summary="Every contract: its latest version and where its schemas are")
async def list_schemas() -> list[SchemaListing]:
    return [
        SchemaListing(Model=name, Version=max(vs), Url=f"{router.prefix}/{name}/v{max(vs)}", Versions=list(vs))
        for name, vs in _files().items()
    ]


@router.get(
    "/{model}",
    summary="A contract's JSON Schema, latest version (its number in the Schema-Version header)",
    responses={404: {"description": "no such contract"}},
)
async def latest_schema(model: str) -> JSONResponse:
    return _schema(model)


@router.get(
    "/{model}/v{version}",
    summary="A contract's JSON Schema of one released version",
    responses={404: {"description": "no such contract or version"}},
)
async def schema_version(model: str, version: int) -> JSONResponse:
    return _schema(model, version)
