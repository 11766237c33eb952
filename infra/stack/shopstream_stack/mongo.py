"""MongoDB-protocol server for the embedded stack: SecantusDB (Python over WiredTiger).

No mongod or FerretDB installs from PyPI, Debian or npm. SecantusDB speaks the wire
protocol pymongo uses, including unique indexes, upserts and transactions, and keeps
its data across restarts. It presents itself as a one-member replica set, hence
`directConnection=true` in the default URI.

It runs without `--sync-on-commit` (`SYNC_ON_COMMIT`): every write the pipeline depends on
already asks for `j: true`, which SecantusDB fsyncs before it answers (and the aggregation's
per-pair writes, sent without it, are flushed by the journaled write that marks their batch applied),
so the flag buys nothing we rely on and costs an fsync at every other commit, one per
pair document the aggregation writes included (`invoke bench`: `insert_many` by 100 documents at 1.01x
the default write concern's rate with `j: true`, 1.00x with the flag, 1.04x with both, all
within the noise; by hand, an aggregation of 10,000 new events 1.16x as long with the flag,
on a disk whose fsync takes 0.12 ms, so more on slower disks).
"""

from __future__ import annotations

import sys
from pathlib import Path

from shopstream.adapters.mongo import mongo_client, mongo_health
from shopstream.settings import Settings

from .process import Proc
from .service import Endpoint, Service, host_port

SETTING = "SHOPSTREAM_MONGO__URI"
# `--sync-on-commit`: fsync the journal at every commit, whatever the write concern asked.
SYNC_ON_COMMIT = False


class MongoServer(Service):
    name = "mongo"

    def __init__(self, settings: Settings, sync_on_commit: bool | None = None) -> None:
        super().__init__(settings)
        self.sync_on_commit = SYNC_ON_COMMIT if sync_on_commit is None else sync_on_commit

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
        argv = [
            str(exe),
            "--host",
            host,
            "--port",
            str(port),
            "--storage-path",
            str(self.data_dir),
            "--cache-size",
            "256M",
            "--log-level",
            "WARNING",
        ]
        if self.sync_on_commit:
            argv.append("--sync-on-commit")
        # cwd is the service folder, so no stray ./secantusd.toml is picked up.
        return [self._proc("server", argv)]

    def healthy(self) -> bool:
        client = mongo_client(self.settings.mongo, timeout_ms=1000)
        try:
            mongo_health(client)
            return True
        finally:
            client.close()
