"""Enrichment against known answers: user agents, GeoLite2 addresses, the API's view of a client.

The addresses are from MaxMind's own test ranges as the 2018 GeoLite2 City database
places them; the user agents are current browsers' and crawlers' published strings.
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime

import pytest

from shopstream.contracts import UserEventRecord
from shopstream.contracts.enrichment import NOT_KNOWN, UNKNOWN, DeviceClass
from shopstream.enrichment import device, enrich, place
from shopstream.settings import ApiSettings
from shopstream_api.client import ClientIdentity
from shopstream_api.examples import USER_EVENT_EXAMPLE
from shopstream_batch.store import event_document

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 13; SM-S901B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/112.0.0.0 Mobile Safari/537.36"
)
FIREFOX_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.1; rv:121.0) Gecko/20100101 Firefox/121.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (CHROME_WINDOWS, ("Chrome", "Windows", DeviceClass.desktop, False)),
        (FIREFOX_MAC, ("Firefox", "Mac OS X", DeviceClass.desktop, False)),
        (SAFARI_IPHONE, ("Mobile Safari", "iOS", DeviceClass.mobile, False)),
        (SAFARI_IPAD, ("Mobile Safari", "iOS", DeviceClass.tablet, False)),
        (CHROME_ANDROID_PHONE, ("Chrome Mobile", "Android", DeviceClass.mobile, False)),
        (GOOGLEBOT, ("Googlebot", UNKNOWN, DeviceClass.bot, True)),
        (BINGBOT, ("bingbot", UNKNOWN, DeviceClass.bot, True)),
        ("curl/8.4.0", ("curl", UNKNOWN, DeviceClass.bot, True)),  # a script: in the crawler list
        ("", (UNKNOWN, UNKNOWN, DeviceClass.unknown, False)),
        (None, (UNKNOWN, UNKNOWN, DeviceClass.unknown, False)),
        ("\x00not a browser", (UNKNOWN, UNKNOWN, DeviceClass.unknown, False)),
    ],
)
def test_user_agents_give_browser_os_device_and_bot(user_agent, expected):
    assert device(user_agent) == expected


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("81.2.69.160", ("GB", "England", "Willesden")),
        ("81.2.69.0", ("GB", "England", "Willesden")),  # truncated as the API stores it: same city
        ("89.160.20.128", ("SE", "Stockholm", "Stockholm")),
        ("128.101.101.101", ("US", "Minnesota", "Minneapolis")),
        ("2001:4860:4860::", ("US", "California", "Mountain View")),  # an IPv6 /48
        ("8.8.8.8", ("US", UNKNOWN, UNKNOWN)),  # a country, no city
        ("10.1.2.3", (UNKNOWN, UNKNOWN, UNKNOWN)),  # private
        ("127.0.0.0", (UNKNOWN, UNKNOWN, UNKNOWN)),
        ("not an address", (UNKNOWN, UNKNOWN, UNKNOWN)),
        (None, (UNKNOWN, UNKNOWN, UNKNOWN)),
    ],
)
def test_addresses_give_country_region_and_city(ip, expected):
    assert place(ip) == expected


def test_an_envelope_is_enriched_whole_and_an_empty_one_is_all_unknown():
    got = enrich("81.2.69.0", CHROME_WINDOWS)
    assert (got.Browser, got.Os, got.Device, got.IsBot) == ("Chrome", "Windows", DeviceClass.desktop, False)
    assert (got.Country, got.Region, got.City) == ("GB", "England", "Willesden")
    assert enrich(None, None) == NOT_KNOWN
    assert set(NOT_KNOWN.model_dump(mode="json").values()) == {UNKNOWN, False}


def test_a_stored_event_keeps_its_envelope_and_gets_the_enrichment_beside_it():
    record = UserEventRecord.model_validate(
        {
            **USER_EVENT_EXAMPLE,
            "EventId": "e-1",
            "IngestedAt": datetime.now(UTC),
            "ClientIp": "89.160.20.0",
            "UserAgent": SAFARI_IPHONE,
        }
    )
    doc = event_document(record, partition=0, offset=7)
    assert (doc["ClientIp"], doc["UserAgent"]) == ("89.160.20.0", SAFARI_IPHONE)  # raw fields untouched
    assert doc["Enrichment"] == {
        "Browser": "Mobile Safari",
        "Os": "iOS",
        "Device": "mobile",
        "IsBot": False,
        "Country": "SE",
        "Region": "Stockholm",
        "City": "Stockholm",
    }
    older = UserEventRecord.model_validate({**USER_EVENT_EXAMPLE, "EventId": "e-2", "IngestedAt": datetime.now(UTC)})
    assert event_document(older, 0, 8)["Enrichment"] == NOT_KNOWN.model_dump(mode="json")  # published before capture


def _scope(peer: str | None) -> dict:
    return {"type": "http", "client": (peer, 50000) if peer else None}


@pytest.mark.parametrize(
    ("peer", "truncate", "expected"),
    [
        ("81.2.69.160", True, "81.2.69.0"),
        ("81.2.69.160", False, "81.2.69.160"),
        ("2001:4860:4860::8888", True, "2001:4860:4860::"),  # to its /48
        ("::ffff:81.2.69.160", True, "81.2.69.0"),  # IPv4 mapped into IPv6: stored as IPv4
        ("not-an-address", True, None),  # a forwarded value uvicorn passed on as it was
        (None, True, None),  # no peer (a Unix socket)
    ],
)
def test_the_client_address_is_stored_truncated(peer, truncate, expected):
    assert ClientIdentity(ApiSettings(truncate_ips=truncate)).address(_scope(peer)) == expected


def test_trusted_proxies_are_read_from_the_environment_as_the_stack_hands_them_down(monkeypatch):
    from shopstream.settings import Settings

    env = Settings(api=ApiSettings(trusted_proxies=[ipaddress.ip_network("10.0.0.0/8")])).to_env()
    assert env["SHOPSTREAM_API__TRUSTED_PROXIES"] == '["10.0.0.0/8"]'
    monkeypatch.setenv("SHOPSTREAM_API__TRUSTED_PROXIES", env["SHOPSTREAM_API__TRUSTED_PROXIES"])
    assert Settings().api.trusted_proxies == [ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.services
def test_the_events_collection_validator_takes_the_enrichment_it_derives_from(stack, settings):
    """The real server checks a stored event against the validator derived from the contracts
    (the drain skips that check, having just validated): an enriched event passes it, an
    Enrichment the model would refuse does not."""
    from pymongo.errors import WriteError

    from shopstream.adapters.mongo import mongo_client
    from shopstream_batch.store import ensure_collections

    database = f"enrich_{uuid.uuid4().hex[:10]}"
    client = mongo_client(settings.mongo)
    try:
        events = ensure_collections(client[database], settings.batch).events
        record = UserEventRecord.model_validate(
            {
                **USER_EVENT_EXAMPLE,
                "EventId": "v-1",
                "IngestedAt": datetime.now(UTC),
                "ClientIp": "81.2.69.0",
                "UserAgent": CHROME_WINDOWS,
            }
        )
        events.insert_one(event_document(record, 0, 1))
        assert events.find_one({"_id": "v-1"})["Enrichment"]["City"] == "Willesden"
        bad = event_document(record.model_copy(update={"EventId": "v-2"}), 0, 2)
        bad["Enrichment"]["Device"] = "toaster"
        with pytest.raises(WriteError):
            events.insert_one(bad)
    finally:
        client.drop_database(database)
        client.close()
