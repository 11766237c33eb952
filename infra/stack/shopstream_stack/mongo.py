"""MongoDB-protocol server for the embedded stack: SecantusDB (Python over WiredTiger).

No mongod or FerretDB installs here (see INFRA-NOTES). SecantusDB speaks the wire
protocol pymongo uses, including unique indexes, $merge and transactions, and keeps
its data across restarts. It presents itself as a one-member replica set, hence
`directConnection=true` in the default URI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shopstream.adapters.mongo import mongo_client

from .process import Proc
from .service import Endpoint, Service, host_port

SETTING = "SHOPSTREAM_MONGO__URI"


class MongoServer(Service):
    name = "mongo"

    @property
    def hp(self) -> tuple[str, int]:
        return host_port(self.settings.mongo.uri, 27017)

    @property
    def address(self) -> str:
        return self.settings.mongo.uri

    def endpoints(self) -> list[Endpoint]:
        host, port = self.hp
        return [Endpoint("server", host, port, SETTING)]

    def procs(self) -> list[Proc]:
        host, port = self.hp
        exe = Path(sys.executable).parent / "secantusd-py"
        argv = [str(exe), "--host", host, "--port", str(port), "--storage-path", str(self.data_dir),
                "--cache-size", "256M", "--log-level", "WARNING"]
        # cwd is the service folder, so no stray ./secantusd.toml is picked up.
        return [self._proc("server", argv)]

    def healthy(self) -> bool:
        client = mongo_client(self.settings.mongo, timeout_ms=1000)
        try:
            return client.admin.command("ping").get("ok") == 1
        finally:
            client.close()
