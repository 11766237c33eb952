"""Enrichment: a record's envelope (ClientIp, UserAgent) read as device and place.

One module for every consumer (the drain, the streaming job, the dashboard), so an
event and a purchase from the same visitor are described alike. The libraries:

- `ua-parser` (the uap-core rules, shipped as `ua-parser-builtins`) for browser, OS and
  device; `crawlerdetect` (its crawler list) beside ua-parser's own spider rules for bots;
- `maxminddb-geolite2`: MaxMind's GeoLite2 City database of 2018-07-03, offline (CC BY-SA
  4.0: "This product includes GeoLite2 data created by MaxMind, available from
  https://www.maxmind.com"). A newer GeoLite2 needs a MaxMind licence key, no package ships it.

A shop sees few distinct user agents, and a visitor sends many records from one (truncated)
address, so both are cached: a user agent's first parse costs about 0.2 ms with the crawler
check, an address's first lookup about 8 µs, a repeat well under a microsecond. An
`Enrichment` is immutable, so the cached one is handed out as it is.
"""

from __future__ import annotations

import ipaddress
from functools import cache, lru_cache
from typing import Any

from shopstream.contracts.enrichment import NOT_KNOWN, UNKNOWN, DeviceClass, Enrichment

DESKTOP_OS = frozenset({"Windows", "Mac OS X", "Linux", "Ubuntu", "Fedora", "Chrome OS", "FreeBSD", "Debian"})
MOBILE_OS = frozenset({"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS"})
TABLET_MARKS = ("iPad", "Tablet", "Kindle", "Nexus 7", "Nexus 9", "SM-T", "Tab ")


@lru_cache(maxsize=4096)
def device(user_agent: str | None) -> tuple[str, str, DeviceClass, bool]:
    """(browser, OS, device class, is a bot) of a User-Agent; "unknown" where it tells nothing."""
    if not user_agent:
        return UNKNOWN, UNKNOWN, DeviceClass.unknown, False
    from crawlerdetect import CrawlerDetect
    from ua_parser import parse

    parsed = parse(user_agent)
    browser = parsed.user_agent.family if parsed.user_agent and parsed.user_agent.family != "Other" else UNKNOWN
    os_name = parsed.os.family if parsed.os and parsed.os.family != "Other" else UNKNOWN
    family = parsed.device.family if parsed.device else ""
    bot = family == "Spider" or CrawlerDetect(user_agent=user_agent).isCrawler()
    return browser, os_name, _device_class(user_agent, os_name, family, bot), bot


def _device_class(user_agent: str, os_name: str, family: str, bot: bool) -> DeviceClass:
    if bot:
        return DeviceClass.bot
    if any(mark in family or mark in user_agent for mark in TABLET_MARKS) or (
        os_name == "Android" and "Mobile" not in user_agent
    ):
        return DeviceClass.tablet
    if os_name in MOBILE_OS or "Mobile" in user_agent:
        return DeviceClass.mobile
    if os_name in DESKTOP_OS:
        return DeviceClass.desktop
    return DeviceClass.unknown


@cache
def _geo_reader() -> Any:
    from geolite2 import geolite2

    return geolite2.reader()


def place(client_ip: str | None) -> tuple[str, str, str]:
    """(country code, region, city) of an address; "unknown" for a private, reserved or unlisted one."""
    try:
        found = _geo_reader().get(ipaddress.ip_address(client_ip)) if client_ip else None
    except ValueError:  # not an address
        found = None
    if not found:
        return UNKNOWN, UNKNOWN, UNKNOWN
    country = (found.get("country") or found.get("registered_country") or {}).get("iso_code") or UNKNOWN
    subdivisions = found.get("subdivisions") or [{}]
    region = subdivisions[0].get("names", {}).get("en") or UNKNOWN
    city = (found.get("city") or {}).get("names", {}).get("en") or UNKNOWN
    return country, region, city


@lru_cache(maxsize=65_536)
def enrich(client_ip: str | None, user_agent: str | None) -> Enrichment:
    """What a record's envelope tells; every field "unknown" for a record with neither."""
    if not client_ip and not user_agent:
        return NOT_KNOWN
    browser, os_name, device_class, bot = device(user_agent)
    country, region, city = place(client_ip)
    return Enrichment(
        Browser=browser, Os=os_name, Device=device_class, IsBot=bot, Country=country, Region=region, City=city
    )


def enrichment_fields(client_ip: str | None, user_agent: str | None) -> dict[str, str | bool]:
    """`enrich` as the stores keep it (MongoDB's Enrichment document, the lake's column): a new dict."""
    return enrich(client_ip, user_agent).model_dump(mode="json")
