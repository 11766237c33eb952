"""Sessions, daily session metrics and product engagement (`shopstream_batch.sessions`).

Checked against answers computed independently: by hand for a small example, and for
generated traffic from the generator's own sessions (what it meant to send), stored through
the real MongoDB and S3 in pieces, in an order where purchases come before their events,
with a run that dies between merging a batch and marking it done, and with a run killed
(SIGKILL) in the middle of its transactions.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import text

from shopstream.adapters.mongo import collections, mongo_client
from shopstream.adapters.postgres import ensure_database, pg_engine
from shopstream.adapters.s3 import s3_client
from shopstream.contracts import PurchaseRecord, UserEventRecord
from shopstream.contracts.dimensions import PRODUCTS, ProductInfo
from shopstream.contracts.sessions import ProductEngagement, SessionDay
from shopstream_api.client import stored_address
from shopstream_batch.aggregate import update_event_counts
from shopstream_batch.sessionize import Deltas, contribution, merge_events, merge_orders
from shopstream_batch.sessions import merge_batch, update_sessions
from shopstream_batch.store import ensure_collections, event_document, insert_new
from shopstream_generator.catalogue import build_world, seeded_faker
from shopstream_generator.cohort import Session, build_cohort
from shopstream_stack import commands

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
HUMAN = {"Device": "desktop", "Browser": "Chrome", "Os": "Windows", "Country": "GB", "Region": "England"}


def event(eid: str, sid: str, user: str, name: str, product: str, at: datetime, bot: bool = False) -> dict:
    enrichment = {**HUMAN, "City": "Willesden", "IsBot": bot} | ({"Device": "bot"} if bot else {})
    return {
        "_id": eid,
        "SessionId": sid,
        "UserId": user,
        "EventName": name,
        "TimeStamp": at,
        "Attributes": {"ProductId": product},
        "Enrichment": enrichment,
    }


def order(oid: str, user: str, at: datetime, cents: int, products: list[str]) -> dict:
    return {"OrderId": oid, "UserId": user, "At": at, "Cents": cents, "Products": products}


class Store:
    """The sums as `sessions._apply` keeps them, in memory: for the pure tests."""

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self.deltas = Deltas()

    def put(self, sid: str, new: dict | None) -> None:
        if new is not None:
            self.deltas.change(self.docs.get(sid), new)
            self.docs[sid] = new


def test_a_small_day_by_hand():
    s = Store()
    # a: a page, its basket, then a purchase 20 s after the first event
    s.put("a", merge_orders(None, "a", [order("o1", "u1", T0 + timedelta(seconds=20), 1234, ["p1"])]))
    a_events = [
        event("e1", "a", "u1", "PageVisited", "p1", T0),
        event("e2", "a", "u1", "AddedBasket", "p1", T0 + timedelta(seconds=5)),
    ]
    s.put("a", merge_events(s.docs.get("a"), a_events, "b1"))
    # b: one page and nothing else, by the same user: a bounce
    s.put("b", merge_events(None, [event("e3", "b", "u1", "PageVisited", "p2", T0 + timedelta(minutes=5))], "b1"))
    # c: another user views two products, across two batches
    s.put("c", merge_events(None, [event("e4", "c", "u2", "PageVisited", "p1", T0 + timedelta(minutes=1))], "b1"))
    s.put(
        "c", merge_events(s.docs["c"], [event("e5", "c", "u2", "PageVisited", "p2", T0 + timedelta(minutes=2))], "b2")
    )
    # a bot: three pages, counted apart
    bot = [
        event(f"x{i}", "x", "crawler", "PageVisited", f"p{i}", T0 + timedelta(seconds=i), bot=True) for i in range(3)
    ]
    s.put("x", merge_events(None, bot, "b2"))
    # merged again (a retry): nothing changes
    assert merge_events(s.docs["a"], a_events, "b1") is None
    assert merge_orders(s.docs["a"], "a", [order("o1", "u1", T0, 1234, ["p1"])]) is None

    a = s.docs["a"]
    assert (a["DurationMs"], a["Pages"], a["Events"], a["Purchased"], a["RevenueCents"]) == (20_000, 1, 2, True, 1234)
    assert (a["Viewed"], a["Added"], a["City"], a["IsBot"]) == (["p1"], ["p1"], "Willesden", False)
    assert s.docs["c"]["DurationMs"] == 60_000

    day = SessionDay(Day="2026-12-04", **dict(s.deltas.days["2026-12-04"]), Users=2).metrics().model_dump()
    assert day == {
        "Day": "2026-12-04",
        "Sessions": 3,
        "Users": 2,
        "AvgDurationS": round((20 + 0 + 60) / 3, 3),
        "PagesPerSession": round(4 / 3, 3),
        "BounceRate": round(1 / 3, 4),
        "ConversionRate": round(1 / 3, 4),
        "Revenue": "12.34",
        "BotShare": 0.25,
    }
    products = {p: dict(c) for p, c in s.deltas.products.items()}
    assert products == {"p1": {"Viewed": 2, "Added": 1, "Bought": 1}, "p2": {"Viewed": 2}}
    assert ProductEngagement(ProductId="p1", **products["p1"]).rates().ViewToBasket == 0.5


pieces = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 5), st.booleans()), min_size=1, max_size=25)


@hsettings(max_examples=200, deadline=None)
@given(pieces, st.randoms(use_true_random=False))
def test_merging_pieces_in_any_order_and_again_gives_the_sums_of_the_final_sessions(plan, rnd):
    """Each piece (a batch of a session's events, or an order) merged in any order, some
    twice: the sessions come out the same, and the kept sums are exactly their contributions."""
    steps = []
    for sid, k, is_order in plan:
        if is_order:
            steps.append((sid, "o", [order(f"o{sid}{k}", "u", T0 + timedelta(seconds=k * 7), 100 + k, [f"p{k}"])]))
        else:
            at = T0 + timedelta(seconds=k * 3 - 5)
            steps.append(
                (sid, f"b{k}", [event(f"e{sid}{k}", sid, "u", ("PageVisited", "AddedBasket")[k % 2], f"p{k}", at)])
            )
    rnd.shuffle(steps)
    stores = []
    for order_of_steps in (steps, [*reversed(steps), *steps]):
        s = Store()
        for sid, kind, piece in order_of_steps:
            old = s.docs.get(sid)
            s.put(sid, merge_orders(old, sid, piece) if kind == "o" else merge_events(old, piece, kind))
        stores.append(s)
    once, again = stores
    strip = lambda d: {k: v for k, v in d.items() if k != "Batches"}  # noqa: E731 (the merge order only)
    assert {k: strip(v) for k, v in once.docs.items()} == {k: strip(v) for k, v in again.docs.items()}
    for s in stores:
        fresh = Deltas()
        for doc in s.docs.values():
            fresh.add(contribution(doc), +1)
        assert dict(s.deltas.day_incs()) == dict(fresh.day_incs())
        assert dict(s.deltas.product_incs()) == dict(fresh.product_incs())
        assert dict(s.deltas.user_incs()) == dict(fresh.user_incs())
        for p, c in s.deltas.products.items():  # a funnel: an ordered product was in the basket, and seen
            assert c["Viewed"] >= c["Added"] >= c["Bought"] >= 0, (p, c)


# ---- against the real MongoDB and S3 ------------------------------------------------------------


@pytest.fixture
def isolated(stack, settings):
    tag = uuid.uuid4().hex[:8]
    cfg = settings.model_copy(
        update={
            "mongo": settings.mongo.model_copy(update={"database": f"sessions_{tag}"}),
            "streaming": settings.streaming.model_copy(update={"output_path": f"test/sessions-{tag}/purchases"}),
            "postgres": settings.postgres.model_copy(update={"database": f"sessions_{tag}"}),
        }
    )
    ensure_database(cfg.postgres)
    yield cfg
    client = mongo_client(cfg.mongo)
    client.drop_database(cfg.mongo.database)
    client.close()


def generated_sessions(cohorts: int) -> list[Session]:
    world = build_world(seed=7, users=60, products=25)
    fake = seeded_faker("sessions-test")
    return [s for i in range(cohorts) for s in build_cohort(world, fake, T0 + timedelta(seconds=i), 40).sessions]


def store_events(cfg, sessions: list[Session]) -> None:
    """As the drain stores them: each event enriched from the session's visitor."""
    colls = ensure_collections(mongo_client(cfg.mongo)[cfg.mongo.database], cfg.batch)
    docs = []
    for s in sessions:
        for e in s.events:
            record = UserEventRecord(
                **e.model_dump(),
                EventId=uuid.uuid4().hex,
                IngestedAt=datetime.now(UTC),
                ClientIp=stored_address(s.visitor.client_ip, True),
                UserAgent=s.visitor.user_agent,
            )
            docs.append(event_document(record, 0, 0))
    assert insert_new(colls.events, docs) == (len(docs), 0)


def write_purchases(cfg, sessions: list[Session], name: str) -> None:
    """A Parquet file of the sessions' purchases under the lake's output path."""
    rows = [
        PurchaseRecord(**s.purchase.model_dump(), EventId=uuid.uuid4().hex, IngestedAt=datetime.now(UTC)).model_dump()
        for s in sessions
        if s.purchase is not None
    ]
    for r in rows:
        r["PaymentType"] = r["PaymentType"].value
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    client = s3_client(cfg.s3)
    client.put_object(
        cfg.s3.bucket, f"{cfg.streaming.output_path}/{name}.parquet", io.BytesIO(buf.getvalue()), len(buf.getvalue())
    )


def expected(sessions: list[Session]) -> tuple[dict, dict, dict]:
    """Per session, per day and per product, straight from what the generator sent."""
    per_session, days, users, products = {}, defaultdict(Counter), defaultdict(set), defaultdict(Counter)
    for s in sessions:
        start = min(e.TimeStamp for e in s.events)
        end = max([e.TimeStamp for e in s.events] + ([s.purchase.TimeStamp] if s.purchase else []))
        pages = [e for e in s.events if e.EventName.value == "PageVisited"]
        revenue = int(s.purchase.TotalPrice * 100) if s.purchase else 0
        per_session[s.session_id] = {
            "UserId": s.user_id,
            "DurationMs": int((end - start) / timedelta(milliseconds=1)),
            "Pages": len(pages),
            "Purchased": s.purchase is not None,
            "RevenueCents": revenue,
            "IsBot": s.visitor.is_bot,
        }
        day = days[start.strftime("%Y-%m-%d")]
        if s.visitor.is_bot:
            day["BotSessions"] += 1
            continue
        users[start.strftime("%Y-%m-%d")].add(s.user_id)
        day.update(
            Sessions=1,
            Bounces=int(len(s.events) == 1 and s.purchase is None),
            Converted=int(s.purchase is not None),
            DurationMs=per_session[s.session_id]["DurationMs"],
            Pages=len(pages),
            Orders=int(s.purchase is not None),
            RevenueCents=revenue,
        )
        for p in {e.Attributes.ProductId for e in pages}:
            products[p]["Viewed"] += 1
        for p in {e.Attributes.ProductId for e in s.events if e.EventName.value == "AddedBasket"}:
            products[p]["Added"] += 1
        for p in {line.ProductId for line in s.purchase.Products} if s.purchase else ():
            products[p]["Bought"] += 1
    day_docs = {d: {**{k: v for k, v in c.items() if v}, "Users": len(users[d])} for d, c in days.items()}
    return per_session, day_docs, {p: dict(c) for p, c in products.items()}


def stored(cfg) -> tuple[dict, dict, dict]:
    c = collections(mongo_client(cfg.mongo)[cfg.mongo.database], cfg.batch)
    keys = ("UserId", "DurationMs", "Pages", "Purchased", "RevenueCents", "IsBot")
    per_session = {d["_id"]: {k: d[k] for k in keys} for d in c.sessions.find({"Start": {"$ne": None}})}
    days = {d["_id"]: {k: v for k, v in d.items() if k not in ("_id", "Day") and v} for d in c.session_days.find()}
    products = {d["_id"]: {k: v for k, v in d.items() if k != "_id" and v} for d in c.product_engagement.find()}
    return per_session, days, products


@pytest.mark.services
def test_generated_traffic_stored_in_pieces_gives_the_independent_answers(isolated, capfd):
    cfg = isolated
    sessions = generated_sessions(cohorts=6)
    assert any(s.visitor.is_bot for s in sessions) and any(s.purchase for s in sessions)
    first, second = sessions[: len(sessions) // 2], sessions[len(sessions) // 2 :]

    # the second half's purchases reach the lake before any of its events are stored
    write_purchases(cfg, second, "late-events")
    store_events(cfg, first)
    update_event_counts(cfg)
    report = update_sessions(cfg)
    assert report.files == 1 and report.batches >= 1 and not report.remaining_batches, report

    # a run dies after merging a batch, before marking it done: the next merges it again
    store_events(cfg, second)
    update_event_counts(cfg)
    colls = collections(mongo_client(cfg.mongo)[cfg.mongo.database], cfg.batch)
    pending = colls.agg_batches.find_one({"Sessions": None, "state": "applied"})
    merge_batch(colls, pending["_id"])
    colls.agg_batches.update_one({"_id": pending["_id"]}, {"$unset": {"Sessions": ""}})
    write_purchases(cfg, first, "early-events")
    update_sessions(cfg)
    assert update_sessions(cfg).sessions_written == 0  # nothing new: nothing changes

    want_sessions, want_days, want_products = expected(sessions)
    got_sessions, got_days, got_products = stored(cfg)
    assert got_sessions == want_sessions
    assert got_days == want_days
    assert got_products == want_products
    # the stored day reads as the metrics the dashboard shows
    day = next(iter(want_days))
    doc = colls.session_days.find_one({"_id": day}, {"_id": 0})
    metrics = SessionDay(**doc).metrics().model_dump()
    assert metrics["Sessions"] == want_days[day]["Sessions"]
    assert Decimal(metrics["Revenue"]) == Decimal(want_days[day]["RevenueCents"]) / 100
    # and `invoke sessions` prints them
    capfd.readouterr()
    assert commands.sessions(cfg) == 0
    out = capfd.readouterr().out
    assert day in out and f"{want_days[day]['Sessions']:,}" in out and metrics["Revenue"] in out
    top = max(want_products.items(), key=lambda kv: (kv[1].get("Viewed", 0), [-ord(c) for c in kv[0]]))[0]
    assert top in out and "Name" in out  # shown by id: the catalogue is not loaded yet
    # with the catalogue loaded, by its name too
    engine = pg_engine(cfg.postgres)
    with engine.begin() as conn:
        conn.execute(text(PRODUCTS.ddl))
        conn.execute(
            text(PRODUCTS.upsert),
            PRODUCTS.row(
                ProductInfo(
                    ProductId=top, Name="Lamp Of Note", Category="Home", Brand="Acme", ListPrice=Decimal("9.99")
                )
            ),
        )
    engine.dispose()
    assert commands.sessions(cfg) == 0
    out = capfd.readouterr().out
    assert "Lamp Of Note" in out and top in out


@pytest.mark.services
def test_a_lake_that_does_not_answer_holds_up_no_event(isolated):
    """S3 down: the run merges the events, says why the lake's files wait, and a later run
    with the lake back merges them."""
    from shopstream_stack.isolated import free_port

    cfg = isolated
    sessions = [s for s in generated_sessions(cohorts=1) if s.purchase is not None][:5]
    store_events(cfg, sessions)
    write_purchases(cfg, sessions, "while-down")
    update_event_counts(cfg)
    down = cfg.model_copy(update={"s3": cfg.s3.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}"})})
    report = update_sessions(down)
    assert report.batches >= 1 and report.files == 0 and report.lake_error, report
    got, _, _ = stored(cfg)
    assert set(got) == {s.session_id for s in sessions}
    assert not any(d["Purchased"] for d in got.values())  # the orders wait in the lake

    report = update_sessions(cfg)
    assert report.files == 1 and report.lake_error is None, report
    got, _, _ = stored(cfg)
    assert got == expected(sessions)[0]


KILLED_RUN = "from shopstream_batch.sessions import update_sessions; update_sessions(budget_s=600)"


@pytest.mark.services
def test_a_run_killed_mid_transaction_leaves_the_next_run_exact(isolated):
    """`kill -9` of a run while it merges: the next run (in this process) finishes the work and
    every figure is exact. It prints how long it took: a transaction the dead run left open
    must not hold up its writes (once, ~60 s of write conflicts until the server reaped it)."""
    cfg = isolated
    sessions = generated_sessions(cohorts=60)  # ~12,000 events, ~900 orders
    store_events(cfg, sessions)
    write_purchases(cfg, sessions, "killed")
    update_event_counts(cfg)
    colls = collections(mongo_client(cfg.mongo)[cfg.mongo.database], cfg.batch)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN], env={**os.environ, **cfg.to_env()})
    try:
        while colls.sessions.count_documents({}) < 300:
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it could be killed"
            time.sleep(0.02)  # polling the condition
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert colls.sessions.count_documents({}) < len(sessions)  # killed mid-run
    assert colls.session_runs.count_documents({}) == 1  # its logical session, left behind

    started = time.monotonic()
    report = update_sessions(cfg, budget_s=600)
    print(f"\nthe run after the SIGKILL: {time.monotonic() - started:.1f} s, {report.as_dict()}")
    assert not report.remaining_batches and not report.remaining_files, report
    assert update_sessions(cfg).sessions_written == 0  # nothing new: nothing changes
    assert colls.session_runs.count_documents({}) == 0  # runs that end well leave none
    assert stored(cfg) == expected(sessions)
