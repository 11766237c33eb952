"""The route class of the ingestion endpoints: FastAPI documents them, this serves them.

FastAPI derives a route's OpenAPI entry from its endpoint's signature: the contract as the
body (with its examples), the Idempotency-Key header, the response model. Serving it the
same way costs more than publishing a record: per request it solves the dependencies,
validates the body, then validates the response again and encodes it through
`jsonable_encoder`. `IngestRoute` keeps the documented signature and serves it directly:

- the write key is checked first (`auth.Authenticator`: 401, 403 or 429 before anything is
  read), its name left in the scope for the records' Source;
- a Content-Type that is not JSON gets 415, a body that is not JSON as `jsonbody` reads it
  400 (both counted), before validation;
- the body is parsed once (`jsonbody.parse_json`) and validated by FastAPI's own field for
  the endpoint's body parameter (a TypeAdapter of the same annotation), the header by its
  own; their errors are FastAPI's 422 as is (`loc` "body"/"header" first);
- the endpoint is called as `endpoint(request, body, *headers)` and returns its response
  model, written as JSON by pydantic-core;
- the route's ASGI app is this handler alone, without FastAPI's per-request exit stacks
  (for dependencies with `yield`, which these routes have none of); an exception reaches the
  app's exception middleware as from any route.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from .auth import SOURCE
from .jsonbody import MalformedJson, is_json, parse_json


class IngestRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        handler = self.get_route_handler()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)

        self.app = app

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, (body_field,), header_fields = self.endpoint, self.dependant.body_params, self.dependant.header_params
        assert all(not f.field_info.is_required() for f in header_fields), "only optional headers"

        async def ingest_handler(request: Request) -> Response:
            state = request.app.state
            headers = request.headers
            request.scope[SOURCE] = state.auth.source(headers)
            content_type = headers.get("content-type")
            if content_type and not is_json(content_type):
                state.metrics.rejected.labels("unsupported_media_type").inc()
                raise HTTPException(
                    415, detail=f"Content-Type must be application/json (or application/*+json), not {content_type!r}"
                )
            errors: list[dict[str, Any]] = []
            values = []
            for field in header_fields:
                raw = headers.get(field.alias)
                if raw is None:
                    values.append(field.field_info.get_default())
                    continue
                value, errs = field.validate(raw, loc=("header", field.alias))
                values.append(value)
                errors += errs
            raw_body = await request.body()
            if raw_body:
                try:
                    parsed = parse_json(raw_body, state.settings.api.max_json_depth)
                except MalformedJson as e:
                    state.metrics.rejected.labels("malformed_json").inc()
                    raise HTTPException(400, detail=str(e)) from None
                body, errs = body_field.validate(parsed, loc=("body",))
                errors += errs
            else:
                body = None
                errors.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
            if errors:
                raise RequestValidationError(errors, body=raw_body)
            answer: BaseModel = await endpoint(request, body, *values)
            return Response(answer.__pydantic_serializer__.to_json(answer), media_type="application/json")

        return ingest_handler
