"""`invoke analyze`: execute the notebooks headless against the running stack and save, per
notebook, an HTML report (tables and charts) and a JSON file of its answers (`answers.py`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

from shopstream.settings import REPO_ROOT, Settings

NOTEBOOKS = REPO_ROOT / "components" / "notebooks"
ORDER = ("01_sales_insights.ipynb", "02_repeat_purchases_sql.ipynb")


class AnalysisFailed(RuntimeError):
    pass


def ensure_data(settings: Settings) -> int:
    """How many committed Parquet files the lake holds; NoDataYet when none (a clear message, no Spark)."""
    from shopstream.adapters.s3 import s3_client
    from shopstream.locations import output_url

    from .lake import NoDataYet

    prefix = settings.streaming.output_path.rstrip("/") + "/"
    files = [
        o
        for o in s3_client(settings.s3).list_objects(settings.s3.bucket, prefix=prefix, recursive=True)
        if o.object_name.endswith(".parquet")
    ]
    if not files:
        raise NoDataYet(
            f"no purchases in {output_url(settings)} yet: start the pipeline with `invoke up` "
            "and wait for the streaming job's first batch (a few seconds after the first purchase)"
        )
    return len(files)


def run_notebooks(
    settings: Settings,
    out_dir: Path,
    as_of: str | None = None,
    say: Callable[[str], None] = print,
    timeout_s: int = 900,
    names: tuple[str, ...] = ORDER,
) -> list[Path]:
    """Execute each notebook of `names` in order (with the settings in its environment) and
    write <name>.html and <name>.json; returns the HTML paths."""
    from .answers import collect, without_answers

    ensure_data(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    env_before = dict(os.environ)
    os.environ.update(settings.to_env())  # the kernel inherits this process's environment
    if as_of:
        os.environ["SHOPSTREAM_AS_OF"] = as_of
    written = []
    try:
        for name in names:
            nb = nbformat.read(NOTEBOOKS / name, as_version=4)
            kernel_log = out_dir / name.replace(".ipynb", ".kernel.log")
            say(f"running {name} ... (kernel and Spark messages: {kernel_log})")
            try:
                # Spark's JVM writes its log to the kernel's stderr: into the kernel log, not
                # into the cells (ipykernel forwards what its child processes write, by default)
                with kernel_log.open("w") as log:
                    NotebookClient(
                        nb,
                        timeout=timeout_s,
                        kernel_name="python3",
                        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
                        resources={"metadata": {"path": str(NOTEBOOKS)}},
                    ).execute(stderr=log)
            except CellExecutionError as e:
                raise AnalysisFailed(f"{name} failed (see also {kernel_log}):\n{str(e)[-3000:]}") from None
            html, _ = HTMLExporter().from_notebook_node(without_answers(nb))
            path = out_dir / name.replace(".ipynb", ".html")
            path.write_text(html)
            path.with_suffix(".json").write_text(json.dumps(collect(nb), indent=1) + "\n")
            written.append(path)
            say(f"wrote {path} and {path.with_suffix('.json').name}")
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return written
