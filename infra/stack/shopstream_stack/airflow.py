"""Apache Airflow 3 for the embedded stack: API server + UI, scheduler, DAG processor, triggerer.

What `airflow standalone` runs, but as four supervised processes of our own, so
`invoke status` shows each PID, `invoke logs airflow` shows each log, a dead
component makes the service unhealthy instead of hiding behind a parent, and
`invoke down` stops every process each of them spawned.

- AIRFLOW_HOME is the service folder in the run directory (`.run/airflow`):
  airflow.cfg (written once by `airflow db migrate`, with the secret and JWT keys
  every component must share) and the task logs
  (`logs/dag_id=.../run_id=.../task_id=.../attempt=N.log`).
- Metadata in the stack's PostgreSQL, database `airflow.metadata_database` (created by
  the first `up`), with the LocalExecutor. Not SQLite, which Airflow keeps for development:
  its processes (API server, scheduler, DAG processor, triggerer, task runners) write
  the same file, and a write that waits over SQLite's busy timeout fails.
- DAGs come from the repo's components/dags; every component, so every task, gets the
  stack's settings as SHOPSTREAM_* variables (`Settings.to_env()`).
- Auth: the simple auth manager. On a loopback address everyone is admin without a
  login (a developer's UI on 127.0.0.1); on any other address the `admin` user logs in
  with the password Airflow generates in AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.
- Inherited AIRFLOW* variables are dropped (a shell's AIRFLOW_HOME, a test process's
  unit-test mode): this Airflow is configured by the settings above and nothing else.

With SHOPSTREAM_STACK=compose (or external) Airflow is not ours to run: compose's
container serves the same port, so `up` and `status` only check that it answers.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shopstream.adapters.airflow import airflow_client, airflow_health
from shopstream.adapters.postgres import ensure_database
from shopstream.settings import REPO_ROOT, PostgresSettings, Settings, StackMode

from .process import Proc, StackError, inherited_env, tail, wait_until
from .service import Endpoint, Service, Status

AIRFLOW = Path(sys.executable).parent / "airflow"
DAGS_FOLDER = REPO_ROOT / "components" / "dags"
SETTING = "SHOPSTREAM_AIRFLOW__PORT"
COMPONENTS = ("api-server", "dag-processor", "triggerer", "scheduler")  # start order
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
DROP_ENV = ("AIRFLOW",)
# No log servers: they bind fixed ports (8793, 8794) on every interface, which a second
# stack (the tests' next to a developer's) cannot have, and are only needed for workers on
# other machines; here the API server reads task logs from AIRFLOW_HOME/logs itself.
EXTRA_ARGS = {"scheduler": ("--skip-serve-logs",), "triggerer": ("--skip-serve-logs",)}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AirflowService(Service):
    name = "airflow"
    start_seconds = 10  # a JVM (or Airflow's imports) takes a while before it can fail

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._db_ready = False

    @property
    def home(self) -> Path:
        return self.folder

    @property
    def ours(self) -> bool:
        """Only the embedded stack runs Airflow from this venv; compose runs a container."""
        return self.settings.stack == StackMode.embedded

    @property
    def address(self) -> str:
        return self.settings.airflow.base_url

    @property
    def all_admins(self) -> bool:
        """No login: only when the UI is reachable from this machine alone."""
        return is_loopback(self.settings.airflow.host)

    @property
    def metadata_db(self) -> PostgresSettings:
        """Where Airflow keeps its metadata: a database of its own on the stack's PostgreSQL."""
        return self.settings.postgres.model_copy(update={"database": self.settings.airflow.metadata_database})

    def endpoints(self) -> list[Endpoint]:
        af = self.settings.airflow
        return [Endpoint("api-server", af.host, af.port, SETTING)] if self.ours else []

    def env(self) -> dict[str, str]:
        af = self.settings.airflow
        return {
            **self.settings.to_env(),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_CONFIG": str(self.home / "airflow.cfg"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_db.sqlalchemy_url,
            # A connection per session, none kept idle: PostgreSQL told to stop politely (SIGTERM,
            # its "smart" shutdown) waits for every open session, so a pool would keep it from stopping.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_ENABLED": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(self.all_admins),
            "AIRFLOW__API__HOST": af.host,
            "AIRFLOW__API__PORT": str(af.port),
            # Task runners report to the API server's execution API: off port 8080 they
            # only find it through these (else every task fails with "Connection refused").
            "AIRFLOW__API__BASE_URL": af.base_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{af.base_url}/execution/",
            # a new DAG file shows up within 30 s instead of 5 minutes
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            # an unchanged DAG file is parsed again every 10 minutes, not 30 s (each parse imports
            # the DAG's modules in a new process); an edited one is parsed at the next refresh
            # all the same (files are sorted by modification time)
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            # an idle scheduler loops every 5 s, not every second: a run due every 2 minutes starts,
            # and its next task follows, up to 5 s later
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "5",
            "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
            "NO_COLOR": "1",
            "TERM": "dumb",
        }

    def procs(self) -> list[Proc]:
        if not self.ours:
            return []
        env = self.env()
        return [
            self._proc(
                c, [str(AIRFLOW), c, *EXTRA_ARGS.get(c, ())], env=env, stop_family=True, drop_env_prefixes=DROP_ENV
            )
            for c in COMPONENTS
        ]

    @property
    def log_files(self) -> list[Path]:
        return [self.folder / "db-migrate.log", *super().log_files] if self.ours else []

    def launch(self, proc: Proc) -> None:
        if not self._db_ready:
            self._migrate()
            self._db_ready = True
        if proc.name == "scheduler":
            # The tasks it starts report to the API server at once (a due run starts within
            # seconds): let the API server answer first rather than lean on their retries.
            api = next(p for p in self.procs() if p.name == "api-server")
            wait_until(self._api_answers, self.timeout_s, give_up=lambda: not api.alive())
        proc.start()

    def _api_answers(self) -> bool:
        with airflow_client(self.settings.airflow, timeout_s=5) as client:
            return client.get("/api/v2/version").status_code == 200

    def _migrate(self) -> None:
        """Create or upgrade the metadata database (and write airflow.cfg, the first time)."""
        log = self.folder / "db-migrate.log"
        self.home.mkdir(parents=True, exist_ok=True)
        self._ensure_metadata_db()
        with log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} airflow db migrate\n".encode())
            out.flush()
            try:
                done = subprocess.run(
                    [str(AIRFLOW), "db", "migrate"],
                    env={**inherited_env(DROP_ENV), **self.env()},
                    cwd=self.folder,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=self.timeout_s,
                )
            except subprocess.TimeoutExpired:
                raise StackError(f"airflow: `airflow db migrate` took over {self.timeout_s:.0f} s; see {log}") from None
        if done.returncode != 0:
            raise StackError(f"airflow: `airflow db migrate` failed. Last lines of {log}:\n{tail(log, 15)}")

    def _ensure_metadata_db(self) -> None:
        """Create Airflow's database on the stack's PostgreSQL, waiting for it to answer."""
        db = self.metadata_db

        def there() -> bool:
            ensure_database(db)  # raises while PostgreSQL does not answer
            return True

        if not wait_until(there, self.timeout_s):
            raise StackError(
                f"airflow: its metadata database ({db.database}) is on the PostgreSQL at {db.host}:{db.port}, "
                "which did not answer: start it first (`invoke up`, or `invoke up --only postgres`)."
            )

    def healthy(self) -> bool:
        """Airflow's health rule (`shopstream.adapters.airflow`): all four components of ours healthy;
        someone else's may run without a DAG processor or triggerer of its own."""
        with airflow_client(self.settings.airflow, timeout_s=10) as client:
            airflow_health(client, runs_all=self.ours)
        return True

    # -- compose / external: someone else runs it; we only check it answers ---------
    def start(self) -> str:
        if self.ours:
            return super().start()
        if not wait_until(self.healthy, self.timeout_s):
            raise StackError(
                f"airflow: the {self.settings.stack.value} stack's Airflow does not answer at "
                f"{self.address}/api/v2/monitor/health (check SHOPSTREAM_AIRFLOW__PORT, and its "
                f"container's log: `docker compose -f infra/compose.yaml logs airflow`)."
            )
        return f"run by the {self.settings.stack.value} stack"

    def stop(self) -> bool:
        """All four at once (each waits for its own children: the scheduler for running
        tasks), so stopping takes the slowest one's time, not the sum."""
        if not self.ours:
            return False
        procs = self.procs()
        with ThreadPoolExecutor(len(procs)) as pool:
            stopped = any(list(pool.map(lambda p: p.stop(self.settings.embedded.stop_timeout_s), procs)))
        self.supervisor.release(self.name)
        return stopped

    def status(self) -> Status:
        if self.ours:
            return super().status()
        state = "healthy" if self._safe_healthy() else "unreachable"
        return Status(self.name, state, [], self.address, self.folder)
