"""The API's application class: the ingestion routes served from its entry, past Starlette's stack.

Starlette sends every request through a stack of layers: ServerErrorMiddleware, our
`MaxBodySize` and `HttpMetrics`, ExceptionMiddleware, FastAPI's AsyncExitStack, then the
router's matching, each a coroutine and most with a wrapper around `send`. Under load on one
core they took about a fifth of an ingestion request's CPU. `IngestApi` sends PUT /SendEvent
and POST /PurchasedItems (`IngestRoute`s) with a declared Content-Length within the limit
straight to the route's handler, and does for them what those layers did:

- the answer is counted and timed (`ApiMetrics.measure`, as `HttpMetrics` does for the other routes);
- an exception with a handler (HTTPException, RequestValidationError, the app's own) gets
  that handler's answer, the same 4xx/503 as through the stack;
- any other exception is counted as a 5xx and raised to uvicorn, which answers 500 and logs it.

Any other request (other routes, a chunked body, one over the limit: 413) takes the full stack.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .ingest_route import IngestRoute
from .metrics import ApiMetrics


class IngestApi(FastAPI):
    def __init__(self, *, metrics: ApiMetrics, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics, self.max_body_bytes = metrics, max_body_bytes
        self._direct: dict[tuple[str, str], tuple[str, ASGIApp]] | None = None

    def direct_routes(self) -> dict[tuple[str, str], tuple[str, ASGIApp]]:
        """(method, path) -> (route template, the route's own ASGI app), for the ingestion routes."""
        if self._direct is None:
            self._direct = {
                (method, route.path): (route.path, route.app)
                for route in self.router.routes
                if isinstance(route, IngestRoute)
                for method in route.methods
            }
        return self._direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            direct = self.direct_routes().get((scope["method"], scope["path"]))
            if direct is not None and self._declared_within_limit(scope):
                scope["app"] = self
                handler, app = direct
                await self.metrics.measure(self._handling_errors(app), handler, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _declared_within_limit(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) <= self.max_body_bytes
        return False

    def _handling_errors(self, app: ASGIApp) -> ASGIApp:
        async def handled(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await app(scope, receive, send)
            except Exception as exc:
                handlers = self.exception_handlers
                handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
                if handler is None:
                    raise
                response = handler(Request(scope, receive), exc)
                if inspect.isawaitable(response):
                    response = await response
                await response(scope, receive, send)

        return handled
