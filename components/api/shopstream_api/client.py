"""Who sent a request: the client's address as the records' envelope keeps it.

uvicorn resolves the address (its proxy-headers middleware): the connection's peer, or,
when the peer is one of `api.trusted_proxies` (uvicorn's `--forwarded-allow-ips`, which the
stack sets from it), the last address in X-Forwarded-For that is not a trusted proxy, so a
client cannot name an address of its choice by sending the header itself. Here it is
truncated before anything stores it (`api.truncate_ips`, on by default): IPv4 to its /24,
IPv6 to its /48, still enough for a city.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache, partial

from starlette.types import Scope

from shopstream.settings import ApiSettings

PREFIX = {4: 24, 6: 48}  # bits kept when truncating


def stored_address(host: str, truncate: bool = True) -> str | None:
    """`host` as a record keeps it (truncated unless `truncate` is off); None if it is no address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a Unix socket's peer, or a forwarded value that is no address
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not truncate:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/{PREFIX[address.version]}", strict=False).network_address)


class ClientIdentity:
    def __init__(self, api: ApiSettings) -> None:
        self._stored = lru_cache(maxsize=65_536)(partial(stored_address, truncate=api.truncate_ips))

    def address(self, scope: Scope) -> str | None:
        """The client's address as it is stored, or None when the server was not told one."""
        peer = scope.get("client")
        return self._stored(peer[0]) if peer else None
