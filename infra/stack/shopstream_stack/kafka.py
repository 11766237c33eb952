"""Kafka-protocol broker for the embedded stack: noida-db (one Rust binary from PyPI).

No Apache Kafka broker installs from PyPI, Debian or npm (no Docker engine either), so
compose and clusters run the real one. noida-db keeps data in memory and snapshots it to its
data folder on a graceful stop, so `invoke down` (SIGTERM) keeps topics and offsets.
"""

from __future__ import annotations

from pathlib import Path

from shopstream.adapters.kafka import admin_client, ensure_topics, kafka_health

from .process import Proc, port_accepts
from .service import Endpoint, Service, host_port

SETTING = "SHOPSTREAM_KAFKA__BOOTSTRAP_SERVERS"


def broker_binary() -> Path:
    import noida_db

    return Path(noida_db.__file__).parent / "noida-db"


class KafkaBroker(Service):
    name = "kafka"

    @property
    def hp(self) -> tuple[str, int]:
        return host_port(self.settings.kafka.bootstrap_servers, 9092)

    @property
    def address(self) -> str:
        return self.settings.kafka.bootstrap_servers

    def endpoints(self) -> list[Endpoint]:
        host, port = self.hp
        return [Endpoint("broker", host, port, SETTING)]

    def procs(self) -> list[Proc]:
        host, port = self.hp
        # The binary itself, not the `noida-db` console script: the script does not
        # forward SIGTERM, so a stop through it would lose the in-memory data.
        argv = [
            str(broker_binary()),
            "start",
            "--only",
            "kafka",
            "--host",
            host,
            "--kafka-port",
            str(port),
            "--data-dir",
            str(self.data_dir),
        ]
        return [self._proc("broker", argv)]

    def healthy(self) -> bool:
        if not port_accepts(*self.hp):
            return False
        admin = admin_client(self.settings.kafka, timeout_ms=2000)
        try:
            kafka_health(admin)
            return True
        finally:
            admin.close()

    def prepare(self) -> str:
        topics = ensure_topics(self.settings.kafka)
        return "topics " + ", ".join(f"{t} ({n} partitions)" for t, n in topics.items())
