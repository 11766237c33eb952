"""Who the shop's users are on the wire: a browser on a device, at an address in a city.

Each user keeps one user agent and one address for good, so their device and city are
stable. The browsers follow a current shop's traffic, most of it on phones; a small share
of the users are crawlers, which only look at pages. Addresses are drawn from the
GeoLite2 City database that enrichment reads (`shopstream.enrichment.place`): each one's
/24, the form the API stores, is placed in a known city. Everything comes from the Faker
passed in, so the same seed gives the same visitors.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from itertools import accumulate

from faker import Faker

from shopstream.contracts.enrichment import UNKNOWN, DeviceClass
from shopstream.enrichment import place

P_BOT = 0.02  # share of users that are crawlers


@dataclass(frozen=True, slots=True)
class Browser:
    user_agent: str
    device: DeviceClass  # what enrichment must read it as (tests/test_generator.py checks)
    weight: int


# Current browsers' published User-Agent strings, weighted as a shop's traffic: about 60% phones.
BROWSERS = (
    Browser(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1",
        DeviceClass.mobile,
        26,
    ),
    Browser(
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
        "Mobile Safari/537.36",
        DeviceClass.mobile,
        22,
    ),
    Browser(
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
        DeviceClass.mobile,
        6,
    ),
    Browser(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
        DeviceClass.mobile,
        5,
    ),
    Browser(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
        "Safari/537.36",
        DeviceClass.desktop,
        17,
    ),
    Browser(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
        "Safari/537.36 Edg/131.0.0.0",
        DeviceClass.desktop,
        5,
    ),
    Browser(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        DeviceClass.desktop,
        3,
    ),
    Browser(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Safari/605.1.15",
        DeviceClass.desktop,
        5,
    ),
    Browser(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
        DeviceClass.desktop,
        4,
    ),
    Browser(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        DeviceClass.desktop,
        1,
    ),
    Browser(
        "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1",
        DeviceClass.tablet,
        5,
    ),
    Browser(
        "Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
        "Safari/537.36",
        DeviceClass.tablet,
        1,
    ),
)
BROWSER_CUM_WEIGHTS = tuple(accumulate(b.weight for b in BROWSERS))

CRAWLERS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)",
)


@dataclass(frozen=True, slots=True)
class Visitor:
    user_agent: str
    client_ip: str
    is_bot: bool

    @property
    def stored_ip(self) -> str:
        """The address as the API stores it (its /24), which enrichment places."""
        return str(ipaddress.ip_network(f"{self.client_ip}/24", strict=False).network_address)

    @property
    def headers(self) -> dict[str, str]:
        """What the generator sends as the shop's front proxy: the visitor's address and browser."""
        return {"X-Forwarded-For": self.client_ip, "User-Agent": self.user_agent}


def _address(fake: Faker) -> str:
    """A public IPv4 address whose /24 GeoLite2 places in a city."""
    rnd = fake.random
    while True:
        a, b, c = rnd.randrange(1, 224), rnd.randrange(256), rnd.randrange(256)
        if place(f"{a}.{b}.{c}.0")[2] != UNKNOWN:  # private and reserved ranges are not in it
            return f"{a}.{b}.{c}.{rnd.randrange(1, 255)}"


def draw_visitor(fake: Faker) -> Visitor:
    rnd = fake.random
    if rnd.random() < P_BOT:
        return Visitor(rnd.choice(CRAWLERS), _address(fake), is_bot=True)
    browser = rnd.choices(BROWSERS, cum_weights=BROWSER_CUM_WEIGHTS)[0]
    return Visitor(browser.user_agent, _address(fake), is_bot=False)
