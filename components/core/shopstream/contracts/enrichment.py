"""What the pipeline derives from a record's envelope (ClientIp, UserAgent): device and place.

Every field is always present; what cannot be told is the explicit `UNKNOWN`, never an
error or a missing field, so a reader counts "unknown" like any other value. The raw
envelope fields stay in the record beside it.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

UNKNOWN = "unknown"


class DeviceClass(str, Enum):
    desktop = "desktop"
    mobile = "mobile"
    tablet = "tablet"
    bot = "bot"
    unknown = UNKNOWN


class Enrichment(BaseModel):
    """The user agent's browser, OS, device class and bot flag; the IP's country, region, city."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    Browser: str = Field(description='browser family, e.g. "Chrome", "Mobile Safari"; "unknown" when not told')
    Os: str = Field(description='operating system family, e.g. "Windows", "iOS"; "unknown" when not told')
    Device: DeviceClass
    IsBot: bool = Field(description="a crawler, spider or script by its user agent")
    Country: str = Field(description='ISO 3166-1 alpha-2 code, e.g. "GB"; "unknown" when not found')
    Region: str = Field(description='first subdivision\'s English name, e.g. "England"; "unknown" when not found')
    City: str = Field(description='English name, e.g. "London"; "unknown" when not found')


NOT_KNOWN = Enrichment(
    Browser=UNKNOWN, Os=UNKNOWN, Device=DeviceClass.unknown, IsBot=False, Country=UNKNOWN, Region=UNKNOWN, City=UNKNOWN
)
