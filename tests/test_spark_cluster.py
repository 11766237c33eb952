"""Scale-out on this machine: a Spark standalone cluster (a master and two workers, started from
the pyspark install and supervised like every other service) runs the streaming job and the
analysis notebooks.

Purchases go through the API to the real broker; `python -m shopstream_streaming
--available-now` with `SHOPSTREAM_SPARK__MASTER=spark://…` writes them to the lake; notebook 1
runs in its own kernel on the cluster. The master's and the workers' own JSON then say that
both applications ran, each with an executor on each worker, and notebook 1's answers equal
those the same functions give in local mode over the same lake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from conftest import job_settings
from shopstream.adapters.postgres import pg_engine
from shopstream_analysis import answers, lake, sales, warehouse
from shopstream_analysis.report import run_notebooks
from shopstream_stack.spark_cluster import SparkCluster, master_state, on_cluster
from test_analysis_notebooks import AS_OF, as_json, best_sellers, shop

# JVMs (master, workers, executors, drivers) on a shared 2-core machine: more than the default 600 s
pytestmark = [pytest.mark.services, pytest.mark.usefixtures("stack"), pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def cluster(settings):
    """The cluster on the session's free ports; the settings that point at it."""
    svc = SparkCluster(settings)
    svc.start()
    try:
        yield on_cluster(settings), svc
    finally:
        svc.stop()


def test_cluster_is_healthy_with_every_worker_alive(cluster):
    cfg, svc = cluster
    state = master_state(cfg)
    assert state["status"] == "ALIVE" and state["url"] == cfg.spark.master
    alive = [w for w in state["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == cfg.embedded.spark_workers == 2
    assert all(w["host"] == "127.0.0.1" and w["cores"] == cfg.embedded.spark_worker_cores for w in alive)
    assert svc.status().state == "healthy" and len(svc.status().pids) == 3


def executors_by_worker(state: dict) -> dict[str, set[str]]:
    """Each ALIVE worker's id -> the application ids it ran (or runs) an executor for, from the
    worker's own JSON at its web UI."""
    found = {}
    for w in state["workers"]:
        if w["state"] != "ALIVE":
            continue
        own = httpx.get(f"{w['webuiaddress']}/json/", timeout=10).json()
        found[w["id"]] = {e["appid"] for e in own["executors"] + own["finishedexecutors"]}
    return found


@pytest.fixture(scope="module")
def streamed(cluster, api_server):
    """Purchases posted through the API, then written to the lake by the streaming job on the
    cluster: the settings it ran with, and the orders."""
    cfg, _ = cluster
    st = job_settings(cfg, "cluster")
    orders = shop(uuid.uuid4().hex[:6])
    r = httpx.post(f"{api_server.url}/PurchasedItems", json=[as_json(o) for o in orders], timeout=60)
    assert r.status_code == 200, r.text
    # the streaming job as the stack runs it, in a process of its own: a driver whose tasks run
    # in the cluster's executors (it exits once it has written what the topic holds)
    job = subprocess.run(
        [sys.executable, "-m", "shopstream_streaming", "--available-now"],
        env={**os.environ, **st.to_env()},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    return st, orders


def ran_on_every_worker(cfg, app_name: str) -> dict:
    """The application as the master lists it, once finished; it had an executor on each worker."""
    state = master_state(cfg)
    apps = {a["name"]: a for a in state["completedapps"]}
    assert app_name in apps, state["completedapps"]
    ran = executors_by_worker(state)
    assert len(ran) == cfg.embedded.spark_workers
    assert all(apps[app_name]["id"] in ids for ids in ran.values()), (app_name, ran)
    return apps[app_name]


def test_streaming_job_runs_on_the_cluster(streamed, spark):
    st, orders = streamed
    assert st.spark.master.startswith("spark://127.0.0.1:")
    assert ran_on_every_worker(st, "shopstream-streaming")["state"] == "FINISHED"
    purchases = lake.read_purchases(spark, st)  # this process's local Spark, over the same lake
    assert sorted(r.OrderId for r in purchases.select("OrderId").collect()) == sorted(o["OrderId"] for o in orders)


def test_notebooks_run_on_the_cluster_and_answer_as_in_local_mode(streamed, spark, tmp_path):
    st, orders = streamed
    # notebook 1 in a kernel of its own, whose SparkSession is on the cluster too
    run_notebooks(st, tmp_path, as_of=AS_OF.isoformat(), names=("01_sales_insights.ipynb",))
    on_cluster = json.loads((tmp_path / "01_sales_insights.json").read_text())
    assert ran_on_every_worker(st, "sales-insights")["state"] == "FINISHED"

    # the same computations in local mode (this process's local Spark) over the same lake
    purchases = lake.read_purchases(spark, st)
    catalogue = warehouse.read_products(spark, pg_engine(st.postgres))  # as the notebook reads it
    products = sales.with_products(sales.product_sales(purchases), catalogue)
    local = {
        "best_sellers_by_units": sales.top_products(products, by="units"),
        "best_sellers_by_revenue": sales.top_products(products, by="revenue"),
        "revenue_by_category": sales.revenue_by_category(purchases, catalogue),
        "payment_types": sales.payment_type_shares(purchases),
        "top_customers_last_hour": sales.top_customers_last_hour(purchases, AS_OF),
        "repeat_buyers": sales.repeat_buyers(purchases),
    }
    for name, frame in local.items():
        assert on_cluster[name] == answers.as_rows(frame.toPandas()), name
    assert [r["ProductId"] for r in on_cluster["best_sellers_by_units"]] == [
        r["ProductId"] for r in best_sellers(orders, "Units")
    ]
