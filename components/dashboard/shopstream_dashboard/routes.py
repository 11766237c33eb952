"""The dashboard's JSON API (`/api/...`): each call answers from the read model, the health
snapshot or one small indexed query, so it stays fast however much the stores hold."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pymongo.errors import PyMongoError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from shopstream.contracts.repeat_buyers import COLUMNS as REPEAT_COLUMNS
from shopstream.contracts.repeat_buyers import TABLE as REPEAT_TABLE

from . import schemas
from .readmodel import ACTIVITY_MAX_MINUTES
from .sync import SourceState

router = APIRouter(prefix="/api", tags=["dashboard"])


def _state(request: Request) -> Any:
    return request.app.state.dashboard


def _answered(name: str, error: BaseException | None = None, detail: str | None = None) -> dict[str, Any]:
    """The `Source` of a store asked just now: up, or down with `error`."""
    source = SourceState(name)
    if error is None:
        source.ok(detail)
    else:
        source.failed(error)
    return source.as_dict()


@router.get("/config", response_model=schemas.DashboardConfig)
def config(request: Request) -> dict[str, Any]:
    """What the page needs to know of the settings."""
    return {"refresh_s": _state(request).settings.dashboard.refresh_s}


# the funnel, sales, places and shares leave the bots (Enrichment.IsBot) out unless asked
IncludeBots = Annotated[bool, Query(description="count the bots' events and purchases too")]


def bucket_seconds(minutes: int) -> int:
    """The activity chart's bucket over `minutes`: about 90 points, a multiple of 5 s."""
    return max(5, minutes * 60 // 90 // 5 * 5)


@router.get("/activity", response_model=schemas.Activity)
def activity(request: Request, minutes: Annotated[int, Query(ge=1, le=ACTIVITY_MAX_MINUTES)] = 15) -> dict[str, Any]:
    """Events per second by EventName and purchases (with revenue) per minute, over the last `minutes`."""
    st = _state(request)
    now = datetime.now(UTC).replace(microsecond=0)  # a whole second: the read model counts per second
    bucket_s = bucket_seconds(minutes)
    return {
        "as_of": now,
        "minutes": minutes,
        "bucket_s": bucket_s,
        "events": st.model.event_rates(now, minutes, bucket_s),
        "purchases": st.model.purchases_per_minute(now, minutes),
        "sources": [st.events_sync.source.as_dict(), st.lake_sync.source.as_dict()],
    }


@router.get("/funnel", response_model=schemas.Funnel)
def funnel(request: Request, window: schemas.FunnelWindow = "1h", include_bots: IncludeBots = False) -> dict[str, Any]:
    """PageVisited -> AddedBasket -> purchase: users at each step in the window, and the conversion."""
    st = _state(request)
    now = datetime.now(UTC)
    return {
        "window": window,
        "include_bots": include_bots,
        "as_of": now,
        "steps": st.model.funnel(now, window, include_bots),
        "sources": [st.events_sync.source.as_dict(), st.lake_sync.source.as_dict()],
    }


@router.get("/sales", response_model=schemas.Sales)
def sales(
    request: Request, n: Annotated[int, Query(ge=1, le=100)] = 10, include_bots: IncludeBots = False
) -> dict[str, Any]:
    """Best sellers by revenue and by units (with the catalogue's names), revenue by category, and
    payment type shares, over every purchase in the lake."""
    st = _state(request)
    lake = st.lake_sync.source.as_dict()
    return {
        **st.model.sales(n, include_bots),
        "include_bots": include_bots,
        "source": lake,
        "sources": [lake, st.dimensions_sync.source.as_dict()],
    }


@router.get("/sessions", response_model=schemas.Sessions)
def sessions(
    request: Request,
    days: Annotated[int, Query(ge=1, le=60)] = 7,
    n: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """The latest days' session metrics and the most viewed products' click-through (the batch's
    `sessions` task writes them to MongoDB), with the products' names (PostgreSQL's catalogue)."""
    st = _state(request)
    return {
        **st.model.sessions(days, n),
        "sources": [st.sessions_sync.source.as_dict(), st.dimensions_sync.source.as_dict()],
    }


@router.get("/places", response_model=schemas.Places)
def places(
    request: Request,
    n: Annotated[int, Query(ge=1, le=100)] = 10,
    include_bots: IncludeBots = False,
    find: Annotated[str | None, Query(max_length=120, description="only places whose name holds this")] = None,
) -> dict[str, Any]:
    """The top cities and countries by events (clicks, MongoDB) and by revenue (the lake), each
    with its rank; with `find`, the places whose name holds it, wherever they rank."""
    st = _state(request)
    return {**st.model.places(n, include_bots, find), "sources": _synced(st)}


@router.get("/audience", response_model=schemas.Audience)
def audience(request: Request, include_bots: IncludeBots = False) -> dict[str, Any]:
    """Shares of users by browser and by device class, and the bots' share of users and of events."""
    st = _state(request)
    return {**st.model.audience(include_bots), "sources": [st.events_sync.source.as_dict()]}


def _synced(st: Any) -> list[dict[str, Any]]:
    return [st.events_sync.source.as_dict(), st.lake_sync.source.as_dict()]


@router.get("/repeat-buyers", response_model=schemas.RepeatBuyers)
def repeat_buyers(request: Request, n: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
    """The most recent repeat buyers (by last purchase) from PostgreSQL's `repeat_buyers` table."""
    st = _state(request)
    try:
        with st.pg.connect() as c:
            if c.execute(text("SELECT to_regclass(:t)"), {"t": REPEAT_TABLE}).scalar() is None:
                return {
                    "rows": [],
                    "total": 0,
                    "source": _answered("postgresql", detail="no repeat_buyers table yet: `invoke analyze` writes it"),
                }
            rows = (
                c.execute(
                    text(
                        f"SELECT {', '.join(REPEAT_COLUMNS)} FROM {REPEAT_TABLE} "
                        "ORDER BY last_bought DESC, user_id, product_id LIMIT :n"
                    ),
                    {"n": n},
                )
                .mappings()
                .all()
            )
            total = c.execute(text(f"SELECT count(*) FROM {REPEAT_TABLE}")).scalar()
    except SQLAlchemyError as e:
        return {"rows": [], "total": 0, "source": _answered("postgresql", e)}
    names = st.model.product_names([r["product_id"] for r in rows])
    return {
        "rows": [{**r, "product_name": names[r["product_id"]]["Name"]} for r in rows],
        "total": total,
        "source": _answered("postgresql"),
    }


SESSIONS_SHOWN = 5  # the user lookup's latest sessions
SESSION_FIELDS = {
    "Start": 1,
    "DurationMs": 1,
    "Pages": 1,
    "Purchased": 1,
    "RevenueCents": 1,
    "Device": 1,
    "Browser": 1,
    "City": 1,
}


def _user_sessions(st: Any, user_id: str) -> list[dict[str, Any]]:
    """The user's latest sessions with a start, by the (UserId, Start) index, newest first."""
    docs = (
        st.sessions.find({"UserId": user_id, "Start": {"$ne": None}}, SESSION_FIELDS)
        .sort("Start", -1)
        .limit(SESSIONS_SHOWN)
    )
    return [
        {
            **{k: d[k] for k in SESSION_FIELDS if k != "RevenueCents"},
            "SessionId": d["_id"],
            "Revenue": d["RevenueCents"] / 100,
        }
        for d in docs
    ]


@router.get(
    "/users/{user_id}",
    response_model=schemas.UserLookup,
    responses={404: {"description": "no events and no purchases for this UserId"}},
)
def user(request: Request, user_id: Annotated[str, Path(min_length=1, max_length=128)]) -> dict[str, Any]:
    """A user's EventCount per EventName (MongoDB's counts), latest sessions (MongoDB's sessions),
    purchases (the lake) with their products' names, newest first, the browser, device and place
    of their newest event (the read model) and their customer record (PostgreSQL's, copied)."""
    st = _state(request)
    sources = []
    counts: dict[str, int] | None = None
    latest: list[dict[str, Any]] | None = None
    try:
        docs = st.counts.find({"UserId": user_id}, {"_id": 0, "EventName": 1, "EventCount": 1})
        found = {d["EventName"]: int(d["EventCount"]) for d in docs}
        latest = _user_sessions(st, user_id)
        counts = found
        sources.append(_answered("mongodb"))
    except PyMongoError as e:
        sources.append(_answered("mongodb", e))
    purchases = st.model.user_purchases(user_id)
    lake = st.lake_sync.source.as_dict()
    sources.append(lake)
    if lake["state"] == "down" and not purchases:
        purchases = None
    if counts == {} and not purchases and all(s["state"] != "down" for s in sources):
        raise HTTPException(404, f"no events and no purchases for UserId {user_id!r}")
    return {
        "UserId": user_id,
        "event_counts": counts,
        "purchases": purchases,
        "agent": st.model.user_agent(user_id),
        "customer": st.model.customer(user_id),
        "sessions": latest,
        "sources": sources,
    }


@router.get("/health", response_model=schemas.Health)
def health(request: Request) -> dict[str, Any]:
    """Each service's state, API traffic, consumer lag, the last DAG runs and the streaming job,
    as the background monitor last saw them (it looks every `refresh_s`)."""
    return _state(request).monitor.current()
