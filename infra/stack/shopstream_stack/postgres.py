"""PostgreSQL for the embedded stack: the system's PostgreSQL binaries, our own cluster.

The cluster lives in the run directory; `initdb` and the server run as the
`postgres` user when we are root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from shopstream.adapters.postgres import MAINTENANCE_DB, ensure_database, pg_engine_unpooled, pg_health

from .process import Proc, StackError
from .service import Endpoint, Service

SETTING = "SHOPSTREAM_POSTGRES__PORT"
# A commit PostgreSQL has answered is on disk, whatever crashes next. These are PostgreSQL's
# defaults, pinned so that an edited postgresql.conf or an ALTER SYSTEM cannot turn them off.
DURABILITY = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def pg_bindir() -> Path:
    found = shutil.which("postgres") or shutil.which("pg_ctl")
    if found:
        real = Path(found).resolve().parent
        if (real / "initdb").exists():
            return real
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not candidates:
        raise StackError("PostgreSQL binaries not found: run `invoke setup` (installs Debian's postgresql).")
    return Path(candidates[-1])


class PostgresServer(Service):
    name = "postgres"

    @property
    def run_as(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    @property
    def address(self) -> str:
        c = self.settings.postgres
        return f"postgresql://{c.user}@{c.host}:{c.port}/{c.database}"

    def endpoints(self) -> list[Endpoint]:
        c = self.settings.postgres
        return [Endpoint("server", c.host, c.port, SETTING)]

    def procs(self) -> list[Proc]:
        c = self.settings.postgres
        argv = [
            str(pg_bindir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(c.port),
            "-c",
            f"listen_addresses={c.host}",
            "-c",
            f"unix_socket_directories={self.folder / 'sock'}",
        ]
        for setting, value in DURABILITY.items():  # the command line wins over postgresql(.auto).conf
            argv += ["-c", f"{setting}={value}"]
        # SIGINT is PostgreSQL's "fast" shutdown: clean, without waiting for clients.
        return [self._proc("server", argv, user=self.run_as, stop_signal=signal.SIGINT)]

    def launch(self, proc: Proc) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        proc.start()

    def _initdb(self) -> None:
        c = self.settings.postgres
        sock = self.folder / "sock"
        for d in (self.data_dir, sock):
            d.mkdir(parents=True, exist_ok=True)
            if self.run_as:
                pw = pwd.getpwnam(self.run_as)
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self.data_dir.chmod(0o700)
        with tempfile.NamedTemporaryFile("w", dir=sock, delete=False) as f:
            f.write(c.password.get_secret_value())
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(f.name, pw.pw_uid, pw.pw_gid)
        try:
            subprocess.run(
                [
                    str(pg_bindir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    c.user,
                    f"--pwfile={f.name}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                user=self.run_as,
                check=True,
                capture_output=True,
                text=True,
                cwd=self.folder,
            )
        except subprocess.CalledProcessError as e:
            hint = (
                f"\nThe `{self.run_as}` user must be able to reach {self.folder} "
                "(every parent folder needs the x permission for others)."
                if self.run_as
                else ""
            )
            raise StackError(f"postgres: initdb failed:\n{e.stdout}\n{e.stderr}{hint}") from e
        finally:
            os.unlink(f.name)

    def healthy(self) -> bool:
        engine = pg_engine_unpooled(self.settings.postgres, connect_timeout_s=2, database=MAINTENANCE_DB)
        try:
            pg_health(engine)
            return True
        finally:
            engine.dispose()

    def prepare(self) -> str:
        db = self.settings.postgres.database
        return f"database {db} created" if ensure_database(self.settings.postgres) else f"database {db}"
