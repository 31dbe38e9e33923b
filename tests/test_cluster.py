"""A job submitted with spark-submit to a real standalone cluster (master + 2 workers)."""
from __future__ import annotations

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


def test_delta_job_runs_on_standalone_cluster(spark, tmp_path) -> None:
    from mtf.delta import read_delta, write_delta

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    write_delta(spark.range(1000), src, mode="overwrite")
    job = tmp_path / "job.py"
    job.write_text(JOB)
    with StandaloneCluster(n_workers=2) as cluster:
        assert cluster.alive_workers() == 2
        proc = cluster.submit(str(job), [src, dst])
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    assert line == f"RESULT master={cluster.master_url} executors=2 rows=1000"
    got = read_delta(spark, dst).selectExpr("sum(double)").first()[0]
    assert got == 2 * sum(range(1000))


def test_cluster_is_torn_down(tmp_path) -> None:
    cluster = StandaloneCluster(n_workers=1).start()
    procs = [cluster.master, *cluster.workers]
    cluster.cleanup()
    assert all(p is not None and p.poll() is not None for p in procs)
