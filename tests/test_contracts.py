"""Property tests: the contracts accept every valid record and name the field of a broken one."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shopstream.contracts import Purchase, PurchaseRecord, Stamp, UserEvent, UserEventRecord, json_schemas
from shopstream.contracts.records import ADDED, MAX_USER_AGENT
from strategies import purchases, user_events

SCHEMAS = json_schemas()


def _decimal_equal(a, b) -> bool:
    return Decimal(str(a)) == Decimal(str(b))


@given(user_events())
def test_valid_user_events_are_accepted_and_round_trip(raw):
    event = UserEvent.model_validate_json(json.dumps(raw))
    assert event.TimeStamp.tzinfo == UTC
    again = UserEvent.model_validate_json(event.model_dump_json())
    assert again == event
    assert _decimal_equal(again.Attributes.Price, raw["Attributes"]["Price"])
    jsonschema.validate(raw, SCHEMAS["UserEvent"])


@given(purchases())
def test_valid_purchases_are_accepted_and_round_trip(raw):
    purchase = Purchase.model_validate_json(json.dumps(raw))
    again = Purchase.model_validate_json(purchase.model_dump_json())
    assert again == purchase
    assert [line.ItemCount for line in again.Products] == [line["ItemCount"] for line in raw["Products"]]
    jsonschema.validate(raw, SCHEMAS["Purchase"])


@given(user_events(), st.uuids())
def test_records_round_trip_with_their_envelope(raw, uid):
    record = UserEventRecord.model_validate({**raw, "EventId": str(uid), "IngestedAt": "2026-01-01T00:00:00Z"})
    assert UserEventRecord.model_validate_json(record.model_dump_json()) == record
    jsonschema.validate(json.loads(record.model_dump_json()), SCHEMAS["UserEventRecord"])


@given(
    st.one_of(
        user_events().map(lambda r: (UserEvent, UserEventRecord, r)),
        purchases().map(lambda r: (Purchase, PurchaseRecord, r)),
    ),
    st.one_of(st.uuids().map(str), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:@-]{0,120}\Z")),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)),
    st.none() | st.ip_addresses().map(str),
    st.none() | st.text(max_size=MAX_USER_AGENT + 10),
    st.none() | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"),
)
def test_a_stamped_record_is_written_exactly_as_its_record_model_writes_it(case, event_id, now, ip, user_agent, source):
    """The API publishes `Stamp.json`, not the record model: the bytes must be the same
    (a User-Agent past the contract's limit is cut to it)."""
    client_model, record_model, raw = case
    client = client_model.model_validate_json(json.dumps(raw))
    envelope = {"ClientIp": ip, "UserAgent": None if user_agent is None else user_agent[:MAX_USER_AGENT]}
    record = record_model.model_validate({**raw, "EventId": event_id, "IngestedAt": now, **envelope, "Source": source})
    assert Stamp(now, ip, user_agent, source).json(client, event_id) == record.model_dump_json().encode()


def test_records_from_before_write_keys_read_with_a_null_source():
    """A record published before the envelope had Source (nor ClientIp and UserAgent) is still
    valid: the drain, the streaming job and the audit read old topics."""
    from shopstream_api.examples import PURCHASE_EXAMPLE

    old = {**PURCHASE_EXAMPLE, "EventId": "e-1", "IngestedAt": "2026-11-22T10:00:00Z"}
    record = PurchaseRecord.model_validate_json(json.dumps(old))
    assert (record.ClientIp, record.UserAgent, record.Source) == (None, None, None)
    assert json.loads(record.model_dump_json())["Source"] is None


# Each breaker spoils exactly one field; the error must name that field (its path).
EVENT_BREAKERS = {
    ("UserId",): lambda r: r.update(UserId=""),
    ("SessionId",): lambda r: r.update(SessionId="x" * 65),
    ("EventName",): lambda r: r.update(EventName="Purchased"),
    ("TimeStamp",): lambda r: r.update(TimeStamp="2026-11-22T10:00:00"),  # no offset
    ("Attributes", "ProductId"): lambda r: r["Attributes"].update(ProductId="bad id!"),
    ("Attributes", "Price"): lambda r: r["Attributes"].update(Price=-1),
    ("Attributes", "Discount"): lambda r: r["Attributes"].update(Discount=r["Attributes"]["Price"] + 1),
    ("Attributes",): lambda r: r.update(Attributes="not an object"),
    ("Unknown",): lambda r: r.update(Unknown=1),
}

PURCHASE_BREAKERS = {
    ("TotalPrice",): lambda r: r.update(TotalPrice=r["TotalPrice"] + 0.02),
    ("OrderId",): lambda r: r.pop("OrderId"),
    ("Products",): lambda r: r.update(Products=[]),
    ("Products", 0, "ItemCount"): lambda r: r["Products"][0].update(ItemCount=0),
    ("Products", 0, "ItemPrice"): lambda r: r["Products"][0].update(ItemPrice="12.50"),
    ("Products", 0, "ItemDiscount"): lambda r: r["Products"][0].update(ItemDiscount=r["Products"][0]["ItemPrice"] + 1),
    ("PaymentType",): lambda r: r.update(PaymentType="Bitcoin"),
    ("TimeStamp",): lambda r: r.update(TimeStamp="1999-12-31T23:59:59Z"),
    ("UserId",): lambda r: r.update(UserId=42),
}


def _broken_at(model, raw, breaker):
    bad = copy.deepcopy(raw)
    breaker(bad)
    with pytest.raises(ValidationError) as err:
        model.model_validate_json(json.dumps(bad))
    return {tuple(e["loc"]) for e in err.value.errors()}


@settings(max_examples=30)
@given(user_events(), st.sampled_from(sorted(EVENT_BREAKERS, key=str)))
def test_a_user_event_broken_in_one_field_is_rejected_naming_it(raw, path):
    assert _broken_at(UserEvent, raw, EVENT_BREAKERS[path]) == {path}


@settings(max_examples=30)
@given(purchases(max_lines=3), st.sampled_from(sorted(PURCHASE_BREAKERS, key=str)))
def test_a_purchase_broken_in_one_field_is_rejected_naming_it(raw, path):
    if path == ("TotalPrice",) and raw["TotalPrice"] + 0.02 > 1_000_000:
        return
    assert _broken_at(Purchase, raw, PURCHASE_BREAKERS[path]) == {path}


def test_total_price_is_tolerant_within_a_cent_only():
    raw = {
        "SessionId": "s",
        "TimeStamp": "2026-11-22T05:00:00Z",
        "UserId": "u",
        "OrderId": "o",
        "Products": [{"ProductId": "p", "ItemCount": 3, "ItemPrice": 9.99, "ItemDiscount": 1.0}],
        "PaymentType": "PayPal",
    }
    for total, ok in [(26.97, True), (26.98, True), (26.96, True), (26.99, False), (26.95, False)]:
        if ok:
            Purchase.model_validate({**raw, "TotalPrice": total})
        else:
            with pytest.raises(ValidationError):
                Purchase.model_validate({**raw, "TotalPrice": total})


def test_timestamps_are_normalised_to_utc():
    raw = {
        "UserId": "u",
        "SessionId": "s",
        "EventName": "PageVisited",
        "TimeStamp": "2026-11-22T06:30:00+01:30",
        "Attributes": {"ProductId": "p", "Price": 1, "Discount": 0},
    }
    assert UserEvent.model_validate(raw).model_dump(mode="json")["TimeStamp"] == "2026-11-22T05:00:00Z"


def test_records_schemas_extend_client_schemas():
    for name in ("UserEvent", "Purchase"):
        client, record = SCHEMAS[name], SCHEMAS[f"{name}Record"]
        assert set(record["properties"]) == set(client["properties"]) | set(ADDED)
        assert client["additionalProperties"] is False


def test_the_drain_and_the_streaming_job_give_a_bad_record_the_same_reason():
    """One rule (shopstream.contracts.why_invalid) for dead letters and quarantine: the same
    bytes get the same words, saying where the record broke the contract."""
    from shopstream.contracts import why_invalid
    from shopstream_batch.drain import Message, split
    from shopstream_streaming.job import check_contract

    record = {
        "EventId": "e-1",
        "IngestedAt": "2026-11-22T10:00:00Z",
        "UserId": "u",
        "SessionId": "s",
        "EventName": "PageVisited",
        "TimeStamp": "2026-11-22T10:00:00Z",
        "Attributes": {"ProductId": "p", "Price": 10, "Discount": 20},
    }
    purchase = {
        "EventId": "p-1",
        "IngestedAt": "2026-11-22T10:00:00Z",
        "SessionId": "s",
        "UserId": "u",
        "TimeStamp": "2026-11-22T10:00:00Z",
        "TotalPrice": 1.0,
        "OrderId": "o",
        "PaymentType": "PayPal",
        "Products": [{"ProductId": "p", "ItemCount": 2, "ItemPrice": 3.0, "ItemDiscount": 0.0}],
    }
    for value, model, want in [
        (b"{not json", UserEventRecord, "invalid JSON: Invalid JSON: "),
        (json.dumps(record).encode(), UserEventRecord, "breaks the contract: Attributes.Discount: "),
        (b'"a bare string"', UserEventRecord, "breaks the contract: record: "),
        (b"{not json", PurchaseRecord, "invalid JSON: Invalid JSON: "),
        (json.dumps(purchase).encode(), PurchaseRecord, "breaks the contract: TotalPrice: "),
        (json.dumps({**purchase, "Coupon": "x"}).encode(), PurchaseRecord, "breaks the contract: "),
    ]:
        with pytest.raises(ValidationError) as err:
            model.model_validate_json(value)
        reason = why_invalid(err.value)
        assert reason.startswith(want), reason
        if model is UserEventRecord:
            _, (letter,) = split([Message("UserEvents", 0, 7, b"u", value)])
            assert letter["Reason"] == reason
        else:
            assert check_contract(value) == (reason, None)
    assert why_invalid(KeyError("x")) == "unreadable: KeyError: 'x'"


def test_the_streaming_job_checks_a_batch_of_records_as_it_checks_each():
    """The job's Arrow UDF takes a whole batch per call: each record gets the verdict it gets
    alone, in its place, and a valid one comes back as the contract reads it, in the Arrow
    type Spark expects for the schema derived from the contract."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_type

    from shopstream_api.examples import PURCHASE_EXAMPLE
    from shopstream_streaming.job import CHECK, check_contract, check_contracts

    good = {**PURCHASE_EXAMPLE, "EventId": "ok-1", "IngestedAt": "2026-11-22T12:21:31.5+01:00"}
    values = [
        json.dumps(good).encode(),
        b"{not json",
        None,
        json.dumps({**good, "TotalPrice": 1.0}).encode(),
        json.dumps({**good, "EventId": "ok-2"}).encode(),
    ]
    checked = check_contracts(pa.array(values, pa.binary()))
    assert checked.type == to_arrow_type(CHECK, timezone="UTC")
    rows = checked.to_pylist()
    assert [c["reason"] for c in rows] == [check_contract(v)[0] for v in values]
    for value, row in zip(values, rows, strict=True):
        if row["reason"] is None:
            assert row["record"] == PurchaseRecord.model_validate_json(value).model_dump()
        else:
            assert row["record"] is None
    assert [c["reason"] is None for c in rows] == [True, False, False, False, True]
    assert rows[0]["record"]["IngestedAt"].isoformat() == "2026-11-22T11:21:31.500000+00:00"
    assert check_contracts(pa.array([], pa.binary())).to_pylist() == []
    only_bad = check_contracts(pa.array([None, b"x"], pa.binary()))
    assert only_bad.type == checked.type and [c["record"] for c in only_bad.to_pylist()] == [None, None]


def test_a_valid_record_the_lake_schema_cannot_hold_is_rejected_with_the_reason_not_nulled(monkeypatch):
    """Should the Spark schema ever drift from the contract, what Arrow cannot hold in it is
    rejected with the reason, alone: the records beside it in the batch are kept."""
    import pyarrow as pa

    from shopstream_api.examples import PURCHASE_EXAMPLE
    from shopstream_streaming import job

    good = {**PURCHASE_EXAMPLE, "IngestedAt": "2026-11-22T12:21:31.5Z"}
    values = [json.dumps({**good, "EventId": f"ok-{i}"}).encode() for i in range(3)]
    narrow = pa.struct(
        [f if f.name != "TotalPrice" else pa.field(f.name, pa.decimal128(3, 2), False) for f in job.RECORD_ARROW]
    )
    monkeypatch.setattr(job, "RECORD_ARROW", narrow)
    monkeypatch.setattr(job, "_ARROW_JSON", job.pa_json.ParseOptions(explicit_schema=pa.schema(list(narrow))))
    fits = json.dumps(
        {
            **good,
            "EventId": "ok-small",
            "TotalPrice": 5.0,
            "Products": [{**good["Products"][0], "ItemCount": 1, "ItemPrice": 5.0, "ItemDiscount": 0.0}],
        }
    ).encode()
    rows = job.check_contracts(pa.array([*values, fits], pa.binary())).to_pylist()
    assert [r["reason"] is None for r in rows] == [False, False, False, True]
    assert all(r["reason"].startswith(job.UNREADABLE) and "decimal" in r["reason"] for r in rows[:3]), rows[0]
    assert rows[3]["record"]["EventId"] == "ok-small"
