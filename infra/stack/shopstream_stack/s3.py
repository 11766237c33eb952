"""S3 server for the embedded stack: Ceph's RADOS gateway on a one-node Ceph cluster.

No MinIO server binary is installable here (compose runs MinIO). Debian's Ceph gives
a real, persistent S3 API: one monitor, one BlueStore OSD on a sparse file, and
radosgw in front, all bound to 127.0.0.1 with authentication between them off.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

from minio.error import S3Error

from shopstream.adapters.s3 import ensure_bucket, s3_client, s3_health

from .process import Proc, StackError, wait_until
from .service import Endpoint, Service, host_port

SETTING = "SHOPSTREAM_S3__ENDPOINT_URL"
MON_SETTING = "SHOPSTREAM_EMBEDDED__CEPH_MON_PORT"
RGW_NAME = "client.rgw.a"


class CephS3(Service):
    name = "s3"

    @property
    def hp(self) -> tuple[str, int]:
        return host_port(self.settings.s3.endpoint_url, 9000)

    @property
    def mon_port(self) -> int:
        return self.settings.embedded.ceph_mon_port

    @property
    def conf(self) -> Path:
        return self.folder / "ceph.conf"

    @property
    def address(self) -> str:
        return f"{self.settings.s3.endpoint_url}/{self.settings.s3.bucket}"

    def endpoints(self) -> list[Endpoint]:
        host, port = self.hp
        return [Endpoint("mon.a", "127.0.0.1", self.mon_port, MON_SETTING),
                Endpoint(RGW_NAME, host, port, SETTING)]

    def procs(self) -> list[Proc]:
        c = ["-f", "-c", str(self.conf)]  # -f: stay in the foreground, under our supervision
        return [
            self._proc("mon.a", ["ceph-mon", "-i", "a", *c]),
            self._proc("osd.0", ["ceph-osd", "-i", "0", *c]),
            self._proc(RGW_NAME, ["radosgw", "-n", RGW_NAME, *c]),
        ]

    # -- set-up between processes ------------------------------------------------
    def _ceph(self, *args: str, timeout: float = 30) -> str:
        env = {**os.environ, "CEPH_CONF": str(self.conf)}
        try:
            out = subprocess.run(list(args), env=env, check=True, capture_output=True, text=True,
                                 timeout=timeout, cwd=self.folder)
        except subprocess.CalledProcessError as e:
            raise StackError(f"s3: `{' '.join(args)}` failed: {e.stderr.strip()[-2000:]}") from e
        return out.stdout.strip()

    def _write_conf(self) -> None:
        d = self.folder
        fsid_file = d / "fsid"
        if not fsid_file.exists():
            fsid_file.write_text(str(uuid.uuid4()))
        host, port = self.hp
        self.conf.write_text(f"""[global]
fsid = {fsid_file.read_text().strip()}
mon host = v2:127.0.0.1:{self.mon_port}
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
# with auth off the monitor client must not ask for "secure" mode
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 5
mon data avail crit = 2
osd crush chooseleaf type = 0
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/$name.log
mon data = {d}/data/mon-$id
osd data = {d}/data/osd-$id
osd objectstore = bluestore
bluestore block path = {d}/data/osd-$id/block.file
bluestore block create = true
# a sparse file: only what is written takes disk space
bluestore block size = {20 * 1024**3}
osd memory target = 939524096
osd max object name len = 460
osd max object namespace len = 64
[{RGW_NAME}]
rgw frontends = beast endpoint={host}:{port}
rgw data = {d}/data/rgw
rgw dns name = localhost
""")
        for sub in ("run", "data/rgw"):
            (d / sub).mkdir(parents=True, exist_ok=True)

    def launch(self, proc: Proc) -> None:
        data = self.data_dir
        if proc.name == "mon.a":
            self._write_conf()
            if not (data / "mon-a" / "store.db").exists():
                monmap = self.folder / "monmap"
                self._ceph("monmaptool", "--create", "--clobber", "--addv", "a",
                           f"[v2:127.0.0.1:{self.mon_port}]", "--fsid", (self.folder / "fsid").read_text().strip(),
                           str(monmap))
                self._ceph("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
            proc.start()
            if not wait_until(lambda: self._ceph("ceph", "mon", "stat", "--connect-timeout", "3", timeout=10),
                              self.timeout_s, give_up=lambda: not proc.alive()):
                raise self._fail("the Ceph monitor did not start", proc)
        elif proc.name == "osd.0":
            osd_dir = data / "osd-0"
            if not (osd_dir / "ready").exists():
                osd_dir.mkdir(parents=True, exist_ok=True)
                osd_uuid = str(uuid.uuid4())
                osd_id = self._ceph("ceph", "osd", "new", osd_uuid)
                if osd_id != "0":
                    raise StackError(f"s3: expected OSD id 0, got {osd_id!r}; remove {self.folder} to start over")
                self._ceph("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
                (osd_dir / "ready").touch()
            proc.start()
        else:
            proc.start()

    # -- health and preparation ----------------------------------------------------
    def healthy(self) -> bool:
        """radosgw answers S3 requests (any S3 reply, even an auth error, means it serves)."""
        s3_health(s3_client(self.settings.s3, timeout_s=2.0), self.settings.s3.bucket)
        return True

    def prepare(self) -> str:
        s3 = self.settings.s3
        info = subprocess.run(["radosgw-admin", "-c", str(self.conf), "user", "info", f"--uid={s3.access_key}"],
                              capture_output=True, text=True, cwd=self.folder)
        if info.returncode != 0:
            self._ceph("radosgw-admin", "user", "create", f"--uid={s3.access_key}",
                       f"--display-name={s3.access_key}", f"--access-key={s3.access_key}",
                       f"--secret-key={s3.secret_key.get_secret_value()}")
        try:
            created = ensure_bucket(s3)
        except S3Error as e:
            raise StackError(f"s3: cannot create bucket {s3.bucket}: {e}") from e
        return f"bucket {s3.bucket}" + (" created" if created else "")
