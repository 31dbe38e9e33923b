"""A job submitted with spark-submit to a real standalone cluster (master + 2 workers)."""
from __future__ import annotations

import os
import textwrap

import pytest

from mtf.localcluster import StandaloneCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

JOB = textwrap.dedent('''
    import sys
    from pyspark.sql import functions as F
    from mtf.delta import read_delta, write_delta
    from mtf.spark import get_spark

    src, dst = sys.argv[1], sys.argv[2]
    spark = get_spark("mtf-cluster-test")
    df = read_delta(spark, src).withColumn("double", F.col("id") * 2)
    write_delta(df.repartition(4), dst, mode="overwrite")
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    print(f"RESULT master={spark.sparkContext.master} executors={executors} "
          f"rows={read_delta(spark, dst).count()}")
    spark.stop()
''')


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    with StandaloneCluster(n_workers=2) as c:
        yield c


def test_delta_job_runs_on_standalone_cluster(spark, tmp_path, cluster) -> None:
    from mtf.delta import read_delta, write_delta

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_delta(spark.range(1000), src, mode="overwrite")
    job = tmp_path / "job.py"
    job.write_text(JOB)
    assert cluster.alive_workers() == 2
    proc = cluster.submit(str(job), [src, dst])
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    assert line == f"RESULT master={cluster.master_url} executors=2 rows=1000"
    got = read_delta(spark, dst).selectExpr("sum(double)").first()[0]
    assert got == 2 * sum(range(1000))


def test_simulate_and_build_transitions_jobs_on_standalone_cluster(spark, tmp_path,
                                                                   cluster) -> None:
    """The real spark-submit entry points, as a scheduler would run them."""
    from mtf.delta import read_delta

    lake = [f"lake.root={tmp_path}", "sim.n_users=200", "sim.users_per_shard=100",
            "sim.n_days=2", "etl.files_per_day=2"]
    cluster.submit(os.path.join(ROOT, "jobs", "simulate.py"), lake, cwd=ROOT)
    cluster.submit(os.path.join(ROOT, "jobs", "build_transitions.py"), lake, cwd=ROOT)
    raw = read_delta(spark, str(tmp_path / "raw_impressions"))
    tr = read_delta(spark, str(tmp_path / "transitions"))
    n_requests = raw.select("request_id").distinct().count()
    assert n_requests > 0
    assert tr.count() == n_requests          # one transition per request (no bad rows)
    assert {r["ds"].isoformat() for r in tr.select("ds").distinct().collect()} <= {
        "2026-01-01", "2026-01-02"}


def test_cluster_is_torn_down(tmp_path) -> None:
    cluster = StandaloneCluster(n_workers=1).start()
    procs = [cluster.master, *cluster.workers]
    cluster.cleanup()
    assert all(p is not None and p.poll() is not None for p in procs)
