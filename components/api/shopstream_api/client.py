"""Who sent a request: the client's address and User-Agent, as the records' envelope keeps them.

The address is the connection's peer, unless that peer is a trusted proxy
(`api.trusted_proxies`): then X-Forwarded-For is read from its end, past every trusted
proxy, so a client cannot name an address of its choice by sending the header itself. It is
truncated before anything stores it (`api.truncate_ips`, on by default): IPv4 to its /24,
IPv6 to its /48, still enough for a city.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from starlette.datastructures import Headers
from starlette.types import Scope

from shopstream.settings import ApiSettings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PREFIX = {4: 24, 6: 48}  # bits kept when truncating


class ClientIdentity:
    def __init__(self, api: ApiSettings) -> None:
        self.proxies = tuple(api.trusted_proxies)
        self.truncate = api.truncate_ips
        self._kept = lru_cache(maxsize=65_536)(self._keep)

    def address(self, scope: Scope, headers: Headers) -> str | None:
        """The client's address as it is stored, or None when the server was not told one."""
        peer = scope.get("client")
        if not peer:
            return None
        address = self._parse(peer[0])
        if address is None:
            return None
        if self.proxies and self._trusted(address):
            for hop in reversed([h.strip() for h in ",".join(headers.getlist("x-forwarded-for")).split(",")]):
                forwarded = self._parse(hop)
                if forwarded is None:
                    break  # a hop that is not an address: trust nothing before it
                address = forwarded
                if not self._trusted(forwarded):
                    break
        return self._kept(address)

    def _trusted(self, address: IpAddress) -> bool:
        return any(address in network for network in self.proxies)

    @staticmethod
    def _parse(text: str) -> IpAddress | None:
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            return None

    def _keep(self, address: IpAddress) -> str:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not self.truncate:
            return str(address)
        return str(ipaddress.ip_network(f"{address}/{PREFIX[address.version]}", strict=False).network_address)
