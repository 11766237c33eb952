"""The dashboard's application factory (`uvicorn --factory shopstream_dashboard.main:create_app`).

One page (`/`) that refreshes itself from the JSON API (`/api/...`, in the OpenAPI spec at
`/docs`), and the topic browser (`/topics`: topics, records, search by EventId, rejects).
Background threads keep the read model and the health snapshot current; the stores are
reached only through the clients the app builds at start (`deps.Clients`, from the project's
adapters and settings), one per store.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import plotly
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pymongo.collection import Collection
from sqlalchemy import Engine

from shopstream.settings import Settings, get_settings

from . import routes, topic_routes
from .browse import TopicBrowser
from .deps import Clients
from .find import Finder
from .health import HealthMonitor
from .readmodel import ReadModel
from .rejects import DeadLetters, Quarantine
from .replay import Replayer
from .sync import DimensionsSync, EventsSync, LakeSync, SessionsSync

log = logging.getLogger("shopstream_dashboard")
STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@dataclass
class Dashboard:
    """What the routes use: the read model, its sync loops, the health monitor, the clients."""

    settings: Settings
    clients: Clients
    model: ReadModel
    events_sync: EventsSync
    lake_sync: LakeSync
    dimensions_sync: DimensionsSync
    sessions_sync: SessionsSync
    monitor: HealthMonitor
    browser: TopicBrowser
    dead_letters: DeadLetters
    quarantine: Quarantine
    finder: Finder
    replayer: Replayer

    @classmethod
    def build(cls, settings: Settings, clients: Clients) -> Dashboard:
        cfg = settings.dashboard
        colls = clients.collections(settings)
        # the stores the rollups come from: a file built from others is rebuilt
        sources = "|".join(
            (
                settings.mongo.uri,
                colls.events.full_name,
                settings.s3.endpoint_url,
                settings.s3.bucket,
                settings.streaming.output_path,
            )
        )
        model = ReadModel(settings.read_model_path, sources, cfg.memory_limit_mb)
        browser = TopicBrowser(settings, clients)
        dead_letters = DeadLetters(colls.dead_letters)
        quarantine = Quarantine(clients.s3, settings, colls.quarantine_replays)
        return cls(
            settings=settings,
            clients=clients,
            model=model,
            events_sync=EventsSync(model, colls.events, cfg.refresh_s, cfg.events_settle_s),
            lake_sync=LakeSync(model, clients.s3, settings, cfg.refresh_s),
            dimensions_sync=DimensionsSync(model, clients.pg, cfg.refresh_s),
            sessions_sync=SessionsSync(model, colls.session_days, colls.product_engagement, cfg.refresh_s),
            monitor=HealthMonitor(model, settings, clients, cfg.refresh_s),
            browser=browser,
            dead_letters=dead_letters,
            quarantine=quarantine,
            finder=Finder(colls.events, dead_letters, model, quarantine, browser, browser.read_timeout_s + 5),
            replayer=Replayer(settings),
        )

    @property
    def counts(self) -> Collection:
        return self.clients.collections(self.settings).counts

    @property
    def sessions(self) -> Collection:
        return self.clients.collections(self.settings).sessions

    @property
    def pg(self) -> Engine:
        return self.clients.pg

    @property
    def loops(self):
        return (self.events_sync, self.lake_sync, self.dimensions_sync, self.sessions_sync, self.monitor)

    def start(self) -> None:
        for loop in self.loops:
            loop.start()

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()
        self.finder.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not logging.getLogger().handlers:  # under uvicorn: our loops' progress lines into its log
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        clients = Clients.build(settings)  # one per store, for everything the app does
        dash = Dashboard.build(settings, clients)
        app.state.dashboard = dash
        dash.start()
        log.info(
            "dashboard on %s, reading the stores every %.0f s",
            settings.dashboard.base_url,
            settings.dashboard.refresh_s,
        )
        yield
        dash.stop()
        dash.model.close()
        clients.close()

    app = FastAPI(
        title="shopstream dashboard",
        version="1.0",
        lifespan=lifespan,
        description="The shop's funnel and the pipeline's health. The page at `/` refreshes from "
        "these calls every few seconds.",
    )
    app.include_router(routes.router)
    app.include_router(topic_routes.router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/topics", include_in_schema=False)
    def topics_page() -> FileResponse:
        return FileResponse(STATIC / "topics.html")

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The dashboard itself answers (the stores' states are in /api/health)."""
        return {"status": "ok"}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
