"""The generator: coherent, reproducible cohorts, delivered once each through the real API to Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from importlib import import_module

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kafka import KafkaConsumer
from pydantic import TypeAdapter
from typer.testing import CliRunner

from conftest import ServerThread, end_offsets, free_port
from shopstream.contracts import (
    MAX_PURCHASES_PER_REQUEST,
    EventName,
    Purchase,
    PurchaseRecord,
    UserEvent,
    UserEventRecord,
)
from shopstream.contracts.enrichment import UNKNOWN, DeviceClass
from shopstream.contracts.records import ADDED
from shopstream.enrichment import device, place
from shopstream.settings import REPO_ROOT
from shopstream_generator import cli, dimensions
from shopstream_generator.catalogue import CATEGORIES, build_world, seeded_faker
from shopstream_generator.cohort import Cohort, Session, build_cohort
from shopstream_generator.runner import Plan, run
from shopstream_generator.sender import Sender, purchase_batches
from shopstream_generator.visitors import BROWSERS, CRAWLERS, Visitor

NOW = datetime(2026, 11, 22, 10, 15, 30, 123456, tzinfo=UTC)
PURCHASES = TypeAdapter(list[Purchase])


def cohorts(
    seed: int, count: int, sessions: int = 50, users: int = 500, products: int = 200, now: datetime = NOW
) -> list[Cohort]:
    world, fake = build_world(seed, users, products), seeded_faker(f"cohorts:{seed}")
    return [build_cohort(world, fake, now + timedelta(seconds=i), sessions) for i in range(count)]


def dump(cohort: Cohort) -> tuple[list[dict], list[dict]]:
    return [e.model_dump(mode="json") for e in cohort.events], [p.model_dump(mode="json") for p in cohort.purchases]


def assert_coherent(cohort: Cohort) -> None:
    """Every rule the analyses rely on, for one cohort."""
    assert len({s.session_id for s in cohort.sessions}) == len(cohort.sessions)
    assert len({p.OrderId for p in cohort.purchases}) == len(cohort.purchases)
    for session in cohort.sessions:
        events = session.events
        assert events and events[0].EventName == EventName.PageVisited
        assert {(e.UserId, e.SessionId) for e in events} == {(session.user_id, session.session_id)}
        times = [e.TimeStamp for e in events]
        assert times == sorted(times) and len(set(times)) == len(times), "strictly increasing"
        visited = set()
        basket: dict[str, UserEvent] = {}
        for e in events:  # reviews and basket only for a product already visited in the session
            if e.EventName == EventName.PageVisited:
                visited.add(e.Attributes.ProductId)
            else:
                assert e.Attributes.ProductId in visited
            if e.EventName == EventName.AddedBasket:
                basket[e.Attributes.ProductId] = e
        end = events[-1].TimeStamp
        purchase = session.purchase
        if purchase is not None:
            assert (purchase.UserId, purchase.SessionId) == (session.user_id, session.session_id)
            assert purchase.TimeStamp > end
            end = purchase.TimeStamp
            for line in purchase.Products:
                added = basket[line.ProductId]  # KeyError: bought without an AddedBasket
                assert added.TimeStamp < purchase.TimeStamp
                assert (line.ItemPrice, line.ItemDiscount) == (added.Attributes.Price, added.Attributes.Discount)
            exact = sum((ln.ItemCount * (ln.ItemPrice - ln.ItemDiscount) for ln in purchase.Products), Decimal(0))
            assert purchase.TotalPrice == exact and purchase.TotalPrice.as_tuple().exponent >= -2
        assert cohort.now - timedelta(seconds=1) <= end <= cohort.now, "sessions end within the last second"


# --- cohorts: contracts, determinism, coherence ----------------------------------------------------


def test_cohort_records_round_trip_through_the_contracts_as_json():
    cohort = cohorts(seed=1, count=1)[0]
    events, purchases = dump(cohort)
    assert len(events) > 50 and len(purchases) > 5
    assert [UserEvent.model_validate_json(json.dumps(e)) for e in events] == cohort.events
    assert PURCHASES.validate_json(json.dumps(purchases)) == cohort.purchases
    assert {e["TimeStamp"][-1] for e in events} == {"Z"}
    assert {type(e["Attributes"]["Price"]) for e in events} == {float}  # money is a JSON number


def test_same_seed_and_now_give_identical_cohorts_and_another_seed_does_not():
    first, again, other = cohorts(7, 3), cohorts(7, 3), cohorts(8, 3)
    assert [dump(c) for c in first] == [dump(c) for c in again]
    assert build_world(7) == build_world(7) and build_world(7) != build_world(8)
    for a, b in zip(first, other, strict=True):
        assert [(e.UserId, e.Attributes) for e in a.events] != [(e.UserId, e.Attributes) for e in b.events]
    # ids carry the cohort's time: the same seed later on does not reuse SessionIds or OrderIds
    later = cohorts(7, 1, now=NOW + timedelta(hours=1))[0]
    assert not {s.session_id for s in later.sessions} & {s.session_id for c in first for s in c.sessions}


def test_the_catalogue_and_customers_are_labelled_and_the_same_seed_labels_them_the_same():
    world = build_world(7)
    ps, cs = dimensions.products(world), dimensions.customers(world)
    assert (ps, cs) == (dimensions.products(build_world(7)), dimensions.customers(build_world(7)))
    assert [p.Name for p in ps] != [p.Name for p in dimensions.products(build_world(8))]
    assert [p.ProductId for p in ps] == [p.product_id for p in world.products]
    for info, product in zip(ps, world.products, strict=True):
        assert info.Category in CATEGORIES and info.Name.startswith(f"{info.Brand} ")
        assert info.Name.endswith(CATEGORIES[info.Category]) and info.ListPrice == product.price
    assert len({p.Category for p in ps}) == len(CATEGORIES)  # 200 products: every department has some
    assert len({c.UserId for c in cs}) == len(cs) == len(world.users)
    assert all(date(2019, 1, 1) <= c.SignupDate < date(2026, 1, 1) for c in cs)
    assert len({c.SignupDate for c in cs}) > 100


def test_a_customers_home_is_where_enrichment_places_their_stored_address():
    world = build_world(21, users=300)
    for user, customer in zip(world.users, dimensions.customers(world), strict=True):
        network = ".".join(user.visitor.client_ip.split(".")[:3]) + ".0"  # the API's /24
        country, _, city = place(network)
        assert (customer.HomeCountry, customer.HomeCity) == (country, city) and city != UNKNOWN


def test_purchases_come_after_their_sessions_events_and_only_hold_basket_items():
    batch = cohorts(seed=2, count=20)
    for cohort in batch:
        assert_coherent(cohort)
    sessions = [s for c in batch for s in c.sessions]
    bought = [s for s in sessions if s.purchase]
    added = [s for s in sessions if any(e.EventName == EventName.AddedBasket for e in s.events)]
    # a funnel worth analysing: every session visits, fewer add to the basket, fewer still buy
    assert len(sessions) > len(added) > len(bought) > len(sessions) * 0.1
    assert {e.EventName for s in sessions for e in s.events} == set(EventName)


def test_users_return_and_buy_the_same_products_again():
    batch = cohorts(seed=3, count=60, sessions=50)
    sessions = [s for c in batch for s in c.sessions]
    visits = Counter(s.user_id for s in sessions)
    assert len(visits) <= 500 and visits.most_common(1)[0][1] >= 20  # a stable pool, with regulars
    orders_per_user_product = Counter(
        (p.UserId, line.ProductId) for c in batch for p in c.purchases for line in p.Products
    )
    repeaters = {user for (user, _), n in orders_per_user_product.items() if n > 1}
    assert len(repeaters) >= 20, "customers who bought the same product more than once"
    products_sold = Counter(line.ProductId for c in batch for p in c.purchases for line in p.Products)
    top, tenth = products_sold.most_common(10)[0][1], products_sold.most_common(10)[-1][1]
    assert top > 2 * tenth, "some products clearly sell best"
    payments = Counter(p.PaymentType for c in batch for p in c.purchases)
    assert len(payments) >= 6 and payments.most_common(1)[0][1] > 2 * payments.most_common()[-1][1]
    totals = Counter()
    for c in batch:
        for p in c.purchases:
            totals[p.UserId] += p.TotalPrice
    assert len(totals) >= 10 and all(isinstance(v, Decimal) for v in totals.values())


def test_total_price_is_exactly_the_sum_of_the_lines():
    for cohort in cohorts(seed=4, count=10):
        for p in cohort.purchases:
            assert p.TotalPrice == sum(line.amount for line in p.Products)
            assert all(line.ItemDiscount <= line.ItemPrice for line in p.Products)
    assert any(line.ItemDiscount > 0 for c in cohorts(4, 10) for p in c.purchases for line in p.Products)
    assert any(line.ItemCount > 1 for c in cohorts(4, 10) for p in c.purchases for line in p.Products)


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**63),
    sessions=st.integers(min_value=1, max_value=40),
    users=st.integers(min_value=1, max_value=60),
    products=st.integers(min_value=1, max_value=40),
    now=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)),
)
def test_every_cohort_is_coherent_and_valid_whatever_the_seed_and_sizes(seed, sessions, users, products, now):
    world = build_world(seed, users, products)
    built = [build_cohort(world, seeded_faker(seed), now, sessions) for _ in range(2)]
    assert dump(built[0]) == dump(built[1])
    cohort = built[0]
    assert len(cohort.sessions) == sessions
    assert_coherent(cohort)
    events, purchases = dump(cohort)
    assert [UserEvent.model_validate(e) for e in events] == cohort.events
    if purchases:
        assert PURCHASES.validate_python(purchases) == cohort.purchases
    user_ids = {u.user_id for u in world.users}
    assert {s.user_id for s in cohort.sessions} <= user_ids


def test_a_cohort_of_50_sessions_builds_in_milliseconds():
    world, fake = build_world(5), seeded_faker(5)
    build_cohort(world, fake, NOW, 50)
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        build_cohort(world, fake, NOW, 50)
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[len(timings) // 2] < 0.05, timings


def test_purchase_batches_split_within_the_api_limits_and_keep_every_order():
    cohort = cohorts(seed=6, count=1, sessions=300, users=20)[0]  # few users: several orders each
    buyers = {s.session_id: s.visitor for s in cohort.sessions if s.purchase is not None}
    batches = list(purchase_batches(cohort, max_records=3, max_bytes=2_000))
    assert len({key for key, *_ in batches}) == len(batches)
    rebuilt = []
    for _key, count, body, visitor in batches:
        assert count <= 3 and len(body) <= 2_000
        parsed = PURCHASES.validate_json(body)
        assert len(parsed) == count
        assert {buyers[p.SessionId] for p in parsed} == {visitor}  # one buyer's purchases per POST
        rebuilt += parsed
    assert sorted(p.OrderId for p in rebuilt) == sorted(p.OrderId for p in cohort.purchases)
    whole = list(purchase_batches(cohort, MAX_PURCHASES_PER_REQUEST, 10**9))
    assert len(whole) == len(set(buyers.values()))  # unbounded: one POST per buyer


def test_every_browser_is_read_as_the_device_it_stands_for_and_every_crawler_as_a_bot():
    for browser in BROWSERS:
        _, _, device_class, bot = device(browser.user_agent)
        assert (device_class, bot) == (browser.device, False), browser.user_agent
    for crawler in CRAWLERS:
        assert device(crawler)[2:] == (DeviceClass.bot, True), crawler


def test_users_keep_one_browser_and_an_address_in_a_known_city_and_a_few_are_crawlers():
    world = build_world(21, users=3_000, products=50)
    assert world == build_world(21, users=3_000, products=50)  # the same seed, the same visitors
    visitors = [u.visitor for u in world.users]
    assert all(place(stored_ip(v))[2] != UNKNOWN for v in visitors)  # as the API stores it
    devices = Counter(DeviceClass.bot if v.is_bot else device(v.user_agent)[2] for v in visitors)
    shares = {d: n / len(visitors) for d, n in devices.items()}
    weights = Counter()
    for b in BROWSERS:
        weights[b.device] += b.weight
    for d, w in weights.items():  # within 4 points of the mix the weights give (3,000 draws)
        assert abs(shares[d] / (1 - shares[DeviceClass.bot]) - w / sum(weights.values())) < 0.04, shares
    assert 0.01 < shares[DeviceClass.bot] < 0.035
    assert len({place(stored_ip(v))[2] for v in visitors}) > 500  # many cities
    # a crawler views many pages, never a basket or a purchase
    fake = seeded_faker(21)
    crawled = [s for c in range(40) for s in build_cohort(world, fake, NOW, 50).sessions if s.visitor.is_bot]
    assert crawled and all(s.purchase is None for s in crawled)
    assert {e.EventName for s in crawled for e in s.events} == {EventName.PageVisited}
    assert min(len(s.events) for s in crawled) >= 10


# --- delivery through the real API ------------------------------------------------------------------


def consume(settings, wanted: set[str], timeout_s: float = 60) -> dict[str, list[dict]]:
    """Records on both topics whose EventId is in `wanted`, every copy, read until all are seen."""
    consumer = KafkaConsumer(
        settings.kafka.user_events_topic,
        settings.kafka.purchases_topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=f"gen-test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    found: dict[str, list[dict]] = defaultdict(list)
    deadline = time.monotonic() + timeout_s
    idle_after_complete = 0
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000)
            for records in batch.values():
                for msg in records:
                    value = json.loads(msg.value)
                    if value["EventId"] in wanted:
                        found[value["EventId"]].append(value | {"_topic": msg.topic, "_key": msg.key.decode()})
            if wanted <= found.keys():
                idle_after_complete += 1
                if idle_after_complete >= 2:  # one more empty-ish poll, to catch late copies
                    break
    finally:
        consumer.close()
    return found


def send_cohorts(url: str, batch: list[Cohort], **options):
    async def go():
        async with Sender(url, **options) as sender:
            reports = [await sender.send(c) for c in batch]
            return reports, sender.totals

    return asyncio.run(go())


def sent_purchases(cohort: Cohort) -> dict[str, tuple[Purchase, Visitor]]:
    """EventId -> (purchase, who sent it): each POST is one visitor's purchases, the i-th with `<key>:<i>`."""
    return {
        f"{key}:{i}": (p, visitor)
        for key, _, body, visitor in purchase_batches(cohort, MAX_PURCHASES_PER_REQUEST, 1_048_576)
        for i, p in enumerate(PURCHASES.validate_json(body))
    }


def expected_ids(cohort: Cohort) -> set[str]:
    return {f"{s.session_id}.{n}" for s in cohort.sessions for n in range(len(s.events))} | set(sent_purchases(cohort))


def stored_ip(visitor: Visitor) -> str:
    return visitor.client_ip.rsplit(".", 1)[0] + ".0"  # as the API truncates it


@pytest.mark.services
def test_cohorts_reach_kafka_through_the_api_exactly_as_built(api_server, settings):
    batch = cohorts(seed=11, count=3, sessions=15, now=datetime.now(UTC))
    reports, totals = send_cohorts(api_server.url, batch)

    records = sum(len(c.events) + len(c.purchases) for c in batch)
    assert (totals.total.sent, totals.total.accepted) == (records, records)
    assert (totals.total.rejected, totals.total.failed, totals.total.retried) == (0, 0, 0)
    assert totals.events.accepted == sum(len(c.events) for c in batch) and totals.cohorts == 3
    returned = {i for r in reports for i in r.event_ids}
    assert returned == set().union(*(expected_ids(c) for c in batch))  # EventId = our Idempotency-Key

    found = consume(settings, returned)
    assert found.keys() == returned
    assert all(len(copies) == 1 for copies in found.values()), "no record published twice"
    sent_events = {
        f"{s.session_id}.{n}": (e, s.visitor) for c in batch for s in c.sessions for n, e in enumerate(s.events)
    }
    purchases = {i: sent for c in batch for i, sent in sent_purchases(c).items()}
    record: UserEventRecord | PurchaseRecord
    for event_id, [value] in found.items():
        topic, key = value.pop("_topic"), value.pop("_key")
        if event_id in sent_events:
            assert topic == settings.kafka.user_events_topic
            record = UserEventRecord.model_validate(value)
            sent, visitor = sent_events[event_id]
        else:
            assert topic == settings.kafka.purchases_topic
            record = PurchaseRecord.model_validate(value)
            sent, visitor = purchases[event_id]
        assert type(sent).model_validate(record.model_dump(exclude=set(ADDED))) == sent
        assert key == record.UserId
        # sent as the shop's front proxy would: the API records the user's own address and browser
        assert (record.ClientIp, record.UserAgent) == (stored_ip(visitor), visitor.user_agent)


class FlakyProxy:
    """A real ASGI app: forwards every request to the API, but answers the first `failures` tries
    of each Idempotency-Key with 503 (the API did publish: as if its answer was lost), recording all."""

    def __init__(self, upstream: str, failures: int = 2) -> None:
        self.upstream, self.failures = upstream, failures
        self.seen: list[tuple[str, str, str, bytes]] = []  # (method, path, Idempotency-Key, body)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        key = headers.get("idempotency-key", "")
        self.seen.append((scope["method"], scope["path"], key, body))
        async with httpx.AsyncClient(base_url=self.upstream) as client:
            upstream = await client.request(
                scope["method"],
                scope["path"],
                content=body,
                headers={"Idempotency-Key": key, "Content-Type": "application/json"},
            )
        tries = sum(1 for s in self.seen if s[2] == key)
        status, content = upstream.status_code, upstream.content
        if tries <= self.failures:
            status, content = 503, b'{"detail":"event broker unavailable"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": content})


@pytest.mark.services
def test_503_is_retried_with_the_same_idempotency_key_so_copies_share_one_event_id(api_server, settings):
    proxy = FlakyProxy(api_server.url, failures=2)
    batch = cohorts(seed=12, count=1, sessions=6, now=datetime.now(UTC))
    with ServerThread(proxy) as server:
        (report,), totals = send_cohorts(server.url, batch, backoff_initial_s=0.01, attempts=4)

    records = len(batch[0].events) + len(batch[0].purchases)
    posts = {key for key, *_ in purchase_batches(batch[0], MAX_PURCHASES_PER_REQUEST, 1_048_576)}
    requests = len(batch[0].events) + len(posts)  # one PUT per event, one POST per buyer
    assert (totals.total.accepted, totals.total.rejected, totals.total.failed) == (records, 0, 0)
    assert totals.total.retried == 2 * requests
    tries: dict[str, list[tuple[str, str, bytes]]] = defaultdict(list)
    for method, path, key, body in proxy.seen:
        tries[key].append((method, path, body))
    assert set(tries) == {f"{s.session_id}.{n}" for s in batch[0].sessions for n in range(len(s.events))} | posts
    for key, attempts in tries.items():
        assert len(attempts) == 3 and len(set(attempts)) == 1, f"{key}: three identical requests"
    # a session's events went out in order, each only after the previous one was accepted
    for s in batch[0].sessions:
        first_try = [
            next(i for i, seen in enumerate(proxy.seen) if seen[2] == f"{s.session_id}.{n}")
            for n in range(len(s.events))
        ]
        last_try = [
            max(i for i, seen in enumerate(proxy.seen) if seen[2] == f"{s.session_id}.{n}")
            for n in range(len(s.events))
        ]
        assert all(last_try[n] < first_try[n + 1] for n in range(len(s.events) - 1))

    # Kafka holds three copies of each record (each try was published) under ONE EventId, identical
    # but for IngestedAt: a store keyed by EventId keeps exactly the records the generator built.
    found = consume(settings, set(report.event_ids))
    assert found.keys() == set(report.event_ids) == expected_ids(batch[0])
    for copies in found.values():
        assert len(copies) == 3
        assert len({json.dumps({k: v for k, v in c.items() if k != "IngestedAt"}, sort_keys=True) for c in copies}) == 1


@pytest.mark.services
def test_a_record_the_api_refuses_is_counted_rejected_and_not_retried(api_server):
    cohort = cohorts(seed=13, count=1, sessions=10, now=datetime.now(UTC))[0]
    good = next(s for s in cohort.sessions if s.purchase)
    bad = Purchase.model_construct(**{**good.purchase.__dict__, "TotalPrice": good.purchase.TotalPrice + 5})
    broken = Cohort(cohort.tag, cohort.now, (Session(good.session_id, good.user_id, good.events, bad, good.visitor),))
    (report,), totals = send_cohorts(api_server.url, [broken], backoff_initial_s=0.01)
    assert (totals.purchases.sent, totals.purchases.rejected, totals.purchases.retried) == (1, 1, 0)
    assert totals.events.accepted == len(good.events) and not totals.ok
    assert "422" in report.errors[0] and "TotalPrice" in report.errors[0]


@pytest.mark.services
def test_run_keeps_the_pace_of_one_cohort_per_second(api_server):
    plan = Plan(api_url=api_server.url, sessions_per_cohort=10, seed=21, cohorts=3)
    started = time.monotonic()
    outcome = asyncio.run(run(plan, asyncio.Event()))
    elapsed = time.monotonic() - started
    assert outcome.cohorts == 3 and outcome.totals.ok and outcome.totals.total.accepted > 30
    assert 2.0 <= elapsed < 6.0


# --- the command line --------------------------------------------------------------------------------


def test_the_declared_console_script_is_the_cli_main():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    module, _, name = pyproject["project"]["scripts"]["shopstream-generate"].partition(":")
    assert getattr(import_module(module), name) is cli.main


@pytest.mark.services
def test_cli_sends_one_cohort_and_summarises(api_server):
    # the default settings' Kafka is not the session's: the dimensions are published elsewhere (test_dimensions)
    args = ["--api-url", api_server.url, "--cohorts", "1", "-n", "8", "--seed", "5", "--no-dimensions"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert "1 cohorts in" in result.output and "(seed 5)" in result.output
    assert "0 rejected, 0 failed" in result.output


def test_cli_exits_non_zero_when_records_fail():
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["--api-url", dead, "--cohorts", "1", "-n", "1", "--seed", "1", "--no-dimensions"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 1, result.output
    assert "0 accepted" in result.output and "ClientConnectorError" in result.output  # aiohttp's, with the reason


@pytest.mark.services
def test_ctrl_c_stops_cleanly_after_the_current_cohort(api_server, settings):
    topic = settings.kafka.user_events_topic
    before = sum(end_offsets(settings, topic).values())
    proc = subprocess.Popen(
        [sys.executable, "-m", "shopstream_generator", "--api-url", api_server.url, "-n", "10", "--seed", "9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **settings.to_env()},  # the session's Kafka, for the dimension data
    )
    try:
        first_line = proc.stderr.readline()  # printed once started
        assert first_line.startswith("sending 10 sessions/s"), first_line
        published = proc.stderr.readline()  # before the first cohort
        assert published.startswith("published 200 products to Products and 500 customers to Customers"), published
        # stopped while it sends: once the API has accepted some of its events (a wait on a
        # condition, not a sleep: a busy machine may take seconds for a cohort)
        deadline = time.monotonic() + 120
        while sum(end_offsets(settings, topic).values()) == before:
            assert time.monotonic() < deadline and proc.poll() is None, "the generator sent nothing"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping after the current cohort" in err
    summary = out.strip().splitlines()[-1]
    assert " cohorts in " in summary and "0 rejected, 0 failed" in summary
    assert int(summary.split()[0]) >= 1


@pytest.mark.services
def test_a_broker_down_at_the_start_delays_the_dimension_data_not_the_cohorts(api_server, settings):
    """The dimension data's broker is down when the generator starts: the cohorts go out all the
    same, the generator says why the catalogue waits, and publishes it once the broker is back."""
    import queue
    import threading

    from conftest import broker_back, own_broker

    with own_broker(settings, "shopstream-gen-dims-") as own:
        own.broker.stop()
        topic = settings.kafka.user_events_topic
        before = sum(end_offsets(settings, topic).values())
        proc = subprocess.Popen(
            [sys.executable, "-m", "shopstream_generator", "--api-url", api_server.url, "-n", "5", "--seed", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, **own.settings.to_env()},  # the stopped broker, for the dimension data only
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()

        def next_line(timeout_s: float = 180) -> str:
            """The next line that is not the progress display's."""
            while (line := lines.get(timeout=timeout_s)).startswith("cohorts "):
                pass
            return line

        try:
            assert next_line().startswith("sending 5 sessions/s")
            waiting = next_line()
            assert waiting.startswith("dimension data not published yet"), waiting
            deadline = time.monotonic() + 120  # the cohorts went out meanwhile, through the API
            while sum(end_offsets(settings, topic).values()) == before:
                assert time.monotonic() < deadline and proc.poll() is None, "no cohort while the broker was down"
                time.sleep(0.2)
            broker_back(own.broker)
            while not (line := next_line()).startswith("published"):
                assert line.startswith("dimension data not published yet"), line
            assert line.startswith("published 200 products to Products and 500 customers to Customers"), line
            products = end_offsets(own.settings, own.settings.kafka.products_topic)
            assert sum(products.values()) == 200
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode == 0
