"""Tasks for `invoke` (or `./shopstream TASK` on a machine that has not been set up yet).

Thin on purpose: each task forwards to shopstream_stack.commands.
"""

from __future__ import annotations

import os
import shlex
import sys

from invoke import Argument, Collection, Exit, Task, task

from shopstream.settings import Settings
from shopstream_stack import commands
from shopstream_stack import keys as stack_keys
from shopstream_stack.process import StackError


def _run(fn, *args, **kwargs):
    try:
        return fn(Settings(), *args, **kwargs)
    except StackError as e:
        raise Exit(f"shopstream: {e}", code=1) from None


@task
def setup(c, tests=False):
    """Install what is missing: Debian packages (Java, PostgreSQL) and Spark's S3 jars."""
    _run(commands.setup, for_tests=tests)


@task(
    iterable=["only"],
    help={
        "only": "start just this service (repeatable)",
        "spark_cluster": "also start a Spark standalone cluster (a master, 2 workers) and run the streaming job on it",
    },
)
def up(c, only=None, spark_cluster=False):
    """Set up what is missing and start the whole pipeline."""
    _run(commands.up, names=only or None, spark_cluster=spark_cluster)


@task(help={"wipe": "also delete all data in the run directory"})
def down(c, wipe=False):
    """Stop everything `up` started (data stays unless --wipe)."""
    _run(commands.down, wipe=wipe)


@task(help={"json": "print JSON (state, restarts, pids, address, folder of each service) instead of the table"})
def status(c, json=False):
    """Show every service and whether it answers; exit 1 if one does not."""
    if not _run(commands.status, as_json=json):
        raise Exit(code=1)


@task(help={"lines": "how many lines", "follow": "keep printing new lines"})
def logs(c, service, lines=50, follow=False):
    """Show the log of one service (kafka, mongo, postgres, s3, api, streaming, airflow, dashboard, generator, spark-cluster)."""  # noqa: E501 - invoke --list shows a docstring's first line only
    _run(commands.logs, service, lines=lines, follow=follow)


@task(
    help={
        "sessions_per_second": "cohort size: sessions built and sent each second (default: settings)",
        "seconds": "stop after this many seconds (default: until Ctrl-C)",
        "cohorts": "stop after this many cohorts (default: until Ctrl-C)",
        "seed": "same seed, same data (default: settings, else random and printed)",
        "users": "size of the user pool (default: 500)",
        "products": "size of the product catalogue (default: 200)",
        "start": "time of the first cohort, ISO 8601 with offset (default: the clock)",
        "api_url": "ingestion API base URL (default: settings)",
        "concurrency": "requests in flight at most (default: 16)",
        "no_dimensions": "do not publish the products and customers to their Kafka topics first",
    }
)
def generate(
    c,
    sessions_per_second=None,
    seconds=None,
    cohorts=None,
    seed=None,
    users=None,
    products=None,
    start=None,
    api_url=None,
    concurrency=None,
    no_dimensions=False,
):
    """Send Faker-made shop traffic (events and purchases) to the ingestion API every second; Ctrl-C stops."""
    from shopstream_generator.cli import main as generate_main

    options = {
        "--sessions-per-second": sessions_per_second,
        "--seconds": seconds,
        "--cohorts": cohorts,
        "--seed": seed,
        "--users": users,
        "--products": products,
        "--start": start,
        "--api-url": api_url,
        "--concurrency": concurrency,
    }
    argv = [str(arg) for name, value in options.items() if value is not None for arg in (name, value)]
    if no_dimensions:
        argv.append("--no-dimensions")
    try:
        generate_main(argv)
    except SystemExit as e:  # typer exits; keep invoke's own exit handling
        if e.code:
            raise Exit(code=e.code if isinstance(e.code, int) else 1) from None


@task(
    iterable=["only"],
    help={
        "quick": "smaller data sets (a smoke run, not the reference figures)",
        "only": "run just the benchmarks whose title has this word, in any case: api, batch, streaming, analysis, "
        "dashboard, footprint",
        "footprint_seconds": "the footprint's window over the running stack (default 300; 120 with --quick)",
    },
)
def bench(c, quick=False, only=None, footprint_seconds=None):
    """Run the benchmarks, each on an isolated embedded stack; reports go to reports/bench/."""
    from shopstream.settings import REPO_ROOT
    from shopstream_bench.run import NoSuchBenchmark, main, selected

    try:
        selected(only or None)  # before the set-up: a word that matches nothing fails at once
    except NoSuchBenchmark as e:
        raise Exit(f"shopstream: {e}", code=2) from None
    _run(commands.setup, for_bench=True)  # wrk, Spark's S3 jars
    window = float(footprint_seconds) if footprint_seconds else None
    main(REPO_ROOT / "reports" / "bench", quick=quick, only=only or None, footprint_s=window)


@task(
    help={
        "as_of": "the analysis' now, ISO 8601 with offset (default: now)",
        "spark_cluster": "run on the Spark cluster `invoke up --spark-cluster` started",
    }
)
def analyze(c, as_of=None, spark_cluster=False):
    """Run both analysis notebooks headless against the running stack; HTML reports in reports/analysis/."""
    code = _run(commands.analyze, as_of=as_of, spark_cluster=spark_cluster)
    if code:
        raise Exit(code=code)


@task(help={"out": "where to write the PNG (default: docs/dashboard.png)"})
def screenshot(c, out="docs/dashboard.png"):
    """Screenshot the running dashboard in headless Chromium, once its data has loaded (for the README)."""
    _run(commands.setup, for_tests=True)  # Debian's chromium
    _run(commands.screenshot, out=out)


@task(help={"available_now": "write what PurchasedItem holds now, then exit (a backfill)"})
def stream(c, available_now=False):
    """Run the Spark streaming job (PurchasedItem -> raw Parquet on S3) in the foreground; Ctrl-C stops after the current batch."""  # noqa: E501 - invoke --list shows a docstring's first line only
    from shopstream_streaming.cli import main as stream_main

    _run(commands.setup)  # Spark's S3 jars, once
    try:
        stream_main(["--available-now"] if available_now else [])
    except SystemExit as e:  # typer exits; keep invoke's own exit handling
        if e.code:
            raise Exit(code=e.code if isinstance(e.code, int) else 1) from None


@task
def batch_check(c):
    """Recount UserEvents from Kafka and compare with the counts in MongoDB; exit 1 if they differ."""
    if not _run(commands.batch_check):
        raise Exit(code=1)


@task(help={"days": "the latest days shown (default: 7)"})
def sessions(c, days=7):
    """Print the daily session metrics (sessions, users, duration, bounce and conversion rates) and product engagement."""  # noqa: E501 - invoke --list shows a docstring's first line only
    if _run(commands.sessions, days=int(days)):
        raise Exit(code=1)


@task(help={"check": "write nothing; exit 1 if a file is stale or a change breaks its version"})
def schemas(c, check=False):
    """Write the contracts' JSON Schemas (current versions) under shopstream/contracts/schemas; refuse a breaking change."""  # noqa: E501 - invoke --list shows a docstring's first line only
    from shopstream.contracts import versions
    from shopstream.settings import REPO_ROOT

    breaks, stale = versions.problems()
    for line in breaks + (stale if check else []):
        print(line)
    if breaks:
        raise Exit("shopstream: a contract changed incompatibly: raise its version in VERSIONS", code=1)
    if check:
        if stale:
            raise Exit("shopstream: the committed schemas are out of date: run `invoke schemas`", code=1)
        return
    for file in versions.write():
        commands.say(f"wrote {file.relative_to(REPO_ROOT)}")


@task(help={"samples": "missing and doubled EventIds shown per stage (default: 10)"})
def audit(c, samples=None):
    """Find every acknowledged record in Kafka, MongoDB, the counts and the lake; exit 1 if one is missing or doubled."""  # noqa: E501 - invoke --list shows a docstring's first line only
    from shopstream_audit.cli import main as audit_main

    try:
        audit_main(["--samples", str(samples)] if samples is not None else [])
    except SystemExit as e:  # typer exits; keep invoke's own exit handling
        if e.code:
            raise Exit(code=e.code if isinstance(e.code, int) else 1) from None


class _InsteadOfSource(Argument):
    """A flag that names the source itself (--lake, --dead-letters, --quarantine): given, it fills
    the positional SOURCE with "" (invoke requires every positional argument, so without this
    `invoke replay --dead-letters` would be refused for its missing SOURCE)."""

    source: Argument

    def set_value(self, value, cast=True):
        super().set_value(value, cast)
        if self.value and self.source.value is None:
            self.source.set_value("", cast=False)


class _ReplayTask(Task):
    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help)
        source = next(a for a in args if a.name == "source")
        for arg in args:
            if arg.name in ("lake", "dead_letters", "quarantine"):
                arg.__class__ = _InsteadOfSource
                arg.source = source
        return args


@task(
    klass=_ReplayTask,
    positional=["source"],
    iterable=["map"],
    help={
        "source": "a CSV, JSON Lines or Parquet file of events or purchases (a glob pattern takes several)",
        "lake": "instead: the purchases of a lake (--path s3://bucket/prefix or a folder; default: this lake)",
        "path": "with --lake: where that lake is",
        "dead_letters": "instead: MongoDB's dead letters, validated again; those that pass now are replayed",
        "quarantine": "instead: the lake's quarantine, validated again; those that pass now are replayed",
        "reason": "with --dead-letters or --quarantine: only records whose reason contains this text",
        "kind": "events or purchases (default: told by the file's columns)",
        "map": "Column=Field: the file's column that fills a contract field (repeatable)",
        "format": "csv, jsonl or parquet (default: by the file's suffix)",
        "dry_run": "list what would be rejected and why; send nothing",
        "rate": "records per second at most",
        "json": "print the summary as one JSON object",
    },
)
def replay(
    c,
    source=None,
    lake=False,
    path=None,
    dead_letters=False,
    quarantine=False,
    reason=None,
    kind=None,
    map=None,
    format=None,
    dry_run=False,
    rate=None,
    json=False,
):
    """Send historical records (files, a lake, dead letters, quarantine) through the API's validation, each stored once."""  # noqa: E501 - invoke --list shows a docstring's first line only
    import glob

    from shopstream_replay.cli import main as replay_main

    chosen = [
        name
        for name, on in (
            ("SOURCE", source),
            ("--lake", lake),
            ("--dead-letters", dead_letters),
            ("--quarantine", quarantine),
        )
        if on
    ]
    if len(chosen) != 1:
        raise Exit("shopstream: say one of SOURCE, --lake, --dead-letters, --quarantine", code=2)
    if source:
        files = sorted(glob.glob(source)) or [source]
        argv = ["file", *files]
        argv += ["--kind", kind] if kind else []
        argv += ["--format", format] if format else []
    elif lake:
        argv = ["lake", *(["--path", path] if path else [])]
    else:
        argv = ["dead-letters" if dead_letters else "quarantine", *(["--reason", reason] if reason else [])]
    if source or lake:
        argv += [arg for m in map or [] for arg in ("--map", m)]
    argv += ["--dry-run"] if dry_run else []
    argv += ["--rate", str(rate)] if rate else []
    argv += ["--json"] if json else []
    for k, v in replay_key_env().items():  # the stack's replay key, unless one is set already
        os.environ.setdefault(k, v)
    replay_main(argv)  # ends the process, with the replay's exit code


@task(
    help={
        "minutes": "how long faults are injected, or the outage lasts (default: 10)",
        "seed": "same seed, same faults (default: random, printed)",
        "outage": "instead of random faults, stop this one service (kafka, mongo, s3, postgres, ...) for the minutes",
    }
)
def chaos(c, minutes=10.0, seed=None, outage=None):
    """Kill random components under load; the supervisor restarts them; wait for the catch-up, then audit (exit 1 on any loss)."""  # noqa: E501 - invoke --list shows a docstring's first line only
    code = _run(commands.chaos, minutes=float(minutes), seed=int(seed) if seed is not None else None, outage=outage)
    if code:
        raise Exit(code=code)


# (name, command after `python -m`): what `invoke lint` runs, configured in pyproject.toml
LINTERS = [
    ("ruff check", ["ruff", "check", "."]),
    ("ruff format", ["ruff", "format", "--check", "."]),
    ("mypy", ["mypy"]),  # the packages and files of [tool.mypy]
]


@task
def lint(c):
    """Check the code with ruff (lint and format) and mypy; exit 1 on any finding."""
    from shopstream.settings import REPO_ROOT

    failed = []
    with c.cd(str(REPO_ROOT)):
        for name, tool in LINTERS:
            result = c.run(shlex.join([sys.executable, "-m", *tool]), warn=True, hide=True, pty=False)
            output = (result.stdout + result.stderr).strip()
            if result.ok:
                commands.say(f"{name}: {output.splitlines()[-1] if output else 'ok'}")
            else:
                print(output)
                commands.say(f"{name}: [red]failed[/red]")
                failed.append(name)
    if failed:
        raise Exit(
            f"shopstream: lint failed: {', '.join(failed)} (`ruff format .` and `ruff check --fix .` fix some)", code=1
        )


@task(
    help={
        "k": "only tests matching this expression",
        "x": "stop at the first failure",
        "workers": "test processes, each with its own embedded stack (default: one per core, at most 4; 1: none)",
    }
)
def test(c, k="", x=False, workers=0):
    """Lint (as `invoke lint`), set up what the tests need and run the whole test suite."""
    lint(c)
    _run(commands.setup, for_tests=True)
    args = ["-k", k] if k else []
    args += ["-x"] if x else []
    # Most tests wait on servers, not on the CPU: two processes keep both cores busy. Each takes
    # whole test files (a file's tests share state and order), with its own stack on free ports.
    n = int(workers) or min(os.cpu_count() or 1, 4)
    # files go out in collection order, the longest first (tests/conftest.py), not by test count
    args += ["-n", str(n), "--dist", "loadfile", "--no-loadscope-reorder"] if n > 1 else []
    c.run(shlex.join([sys.executable, "-m", "pytest", *args]), pty=False)


def _keys_cli(*argv: str) -> None:
    from shopstream.write_keys.__main__ import main as keys_main

    try:
        keys_main(list(argv))
    except SystemExit as e:  # typer exits; keep invoke's own exit handling
        if e.code:
            raise Exit(code=e.code if isinstance(e.code, int) else 1) from None


def _keys_collection() -> Collection:
    """`invoke keys.create NAME`, `keys.list`, `keys.revoke NAME` (made here, not at the module's
    top level, where the namespace would take them as tasks of its own too)."""

    @task(
        name="create",
        help={
            "name": "the key's name, stamped on the records it sends (Source)",
            "rate": "requests per second at most (default 2000)",
            "burst": "requests at once at most (default: one second's worth)",
        },
    )
    def create(c, name, rate=None, burst=None):
        """Create a write key for the ingestion API and print it, once (only its hash is stored)."""
        options = {"--rate": rate, "--burst": burst}
        _keys_cli("create", name, *(str(a) for o, v in options.items() if v is not None for a in (o, v)))

    @task(name="list")
    def list_(c):
        """Show the write keys: name, created, revoked, rate, a hash prefix (never a key)."""
        _keys_cli("list")

    @task(name="revoke", help={"name": "the key's name"})
    def revoke(c, name):
        """Revoke a write key: the API answers 403 to it within about a second."""
        _keys_cli("revoke", name)

    return Collection("keys", create, list_, revoke)


def replay_key_env() -> dict[str, str]:
    """SHOPSTREAM_API__CLIENT_KEY for `invoke replay`'s process: the stack's `replay` key, if made."""
    return stack_keys.client_key_env(Settings(), "replay")


@task
def lock(c):
    """Re-resolve requirements.lock from pyproject.toml (after changing a dependency)."""
    c.run(
        f"{sys.executable} -m uv pip compile pyproject.toml --group embedded --group dev --universal "
        "--python-version 3.11 --generate-hashes --custom-compile-command 'invoke lock' "
        "-o requirements.lock"
    )


# Every task above, and `invoke keys.create|list|revoke`; keep this last so it sees them all.
ns = Collection.from_module(sys.modules[__name__])
ns.add_collection(_keys_collection())
