"""Concurrent jobs on one lake: Delta commit conflicts are retried, nothing is lost.

* A real conflict, made deterministic: while Spark's replaceWhere transaction runs, a second
  writer (delta-rs, the ``deltalake`` package) appends to the replaced partition; Delta refuses
  Spark's commit, :func:`mtf.delta.retry_on_conflict` re-runs the write on the new version.
* Two real ``mtf build-transitions`` processes started at once on an empty lake (adjacent
  days: day 2's run also rewrites day 1's last rows) both land: the table equals a sequential
  build, no row twice. (A sequential re-run of a day is
  tests/etl/test_incremental.py::test_rerun_of_a_day_is_idempotent.)
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from mtf.config import load_config
from mtf.delta import CommitConflictError, is_commit_conflict, retry_on_conflict, table_version
from mtf.etl.pipeline import run_build_transitions
from tests.etl.logs import DAY1, at, write_logs, write_profiles
from tests.etl.test_job import PROFILES, bad_rows, good_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPLIT = "etl.test_start_ts=2026-01-01T10:30:00"   # a fixed split: runs are comparable


def _rows(spark, path: str) -> dict:
    return {(r.user_id, r.ts.replace(tzinfo=dt.timezone.utc)): r.asDict()
            for r in spark.read.format("delta").load(path).collect()}


def _delta_rs_append(path: str, x: int) -> None:
    from deltalake import write_deltalake
    write_deltalake(path, pa.table({"ds": pa.array([dt.date(2026, 1, 1)], pa.date32()),
                                    "x": pa.array([x], pa.int64())}), mode="append")


def test_a_real_commit_conflict_is_retried_on_the_new_version(spark, tmp_path) -> None:
    path = str(tmp_path / "t")
    spark.createDataFrame([(dt.date(2026, 1, 1), 1)], "ds date, x bigint") \
        .write.format("delta").partitionBy("ds").save(path)
    marker = tmp_path / "interfered"

    def interfere(x):  # runs inside Spark's write job, after its transaction has started
        if not marker.exists():
            marker.write_text("1")
            _delta_rs_append(path, 100)
        return x

    bump = F.udf(interfere, "bigint")
    attempts = []

    def write() -> int:
        attempts.append(1)
        current = spark.read.format("delta").load(path)   # read inside the attempt
        out = current.groupBy("ds").agg(F.max("x").alias("x")).select("ds", bump("x").alias("x"))
        out.write.format("delta").mode("overwrite") \
            .option("replaceWhere", "ds = DATE'2026-01-01'").save(path)
        return table_version(spark, path)

    version = retry_on_conflict(write, what="test write", retries=2, backoff_s=0.01, seed=0)
    # Attempt 1 lost to the delta-rs append (version 1); attempt 2 read it and replaced ds.
    assert len(attempts) == 2 and version == 2
    assert sorted(r.x for r in spark.read.format("delta").load(path).collect()) == [100]


def test_conflicts_are_recognised_and_give_up_with_a_clear_error() -> None:
    class ConcurrentAppendException(Exception):
        pass

    assert is_commit_conflict(ConcurrentAppendException("files were added"))
    assert is_commit_conflict(RuntimeError("io.delta.exceptions.MetadataChangedException: x"))
    assert not is_commit_conflict(ValueError("a bug"))
    calls = []

    def always_conflicts() -> None:
        calls.append(1)
        raise ConcurrentAppendException("files were added to partition [ds=2026-01-01]")

    with pytest.raises(CommitConflictError, match="re-run it") as err:
        retry_on_conflict(always_conflicts, what="build-transitions", retries=2, backoff_s=0)
    assert len(calls) == 3 and "build-transitions" in str(err.value)
    with pytest.raises(ValueError, match="a bug"):   # anything else: no retry
        retry_on_conflict(lambda: (_ for _ in ()).throw(ValueError("a bug")), what="x",
                          retries=5, backoff_s=0)


# Each process's own Spark: one core, no UI, tiny shuffles and Delta snapshots (the data is a
# few rows; start-up and task scheduling are what cost), and a JVM for a short run: the client
# JIT only and the serial collector (about 40% less CPU per process than the defaults).
SMALL_SPARK = ["spark.master=local[1]", "spark.shuffle_partitions=2", "spark.driver_memory=1g",
               'spark.conf={"spark.ui.enabled": "false", "spark.default.parallelism": "1", '
               '"spark.databricks.delta.snapshotPartitions": "2", "spark.driver.extraJavaOptions": '
               '"-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}']


def _start(root, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen(
        [sys.executable, "-m", "mtf.cli", "build-transitions", f"lake.root={root}", SPLIT,
         *SMALL_SPARK, *overrides],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_processes_building_days_at_once_all_land(spark, tmp_path) -> None:
    raw = str(tmp_path / "raw_impressions")
    write_logs(spark, good_rows() + bad_rows(), raw)
    write_profiles(spark, PROFILES, str(tmp_path / "user_profiles"))
    # Sequential references on another lake: day 1 alone, then day 1 -> day 2.
    ref = [f"lake.root={tmp_path}/ref", f"lake.raw_logs={raw}",
           f"lake.user_profiles={tmp_path}/user_profiles", SPLIT]
    ref_path = load_config(None, ref).lake.path("transitions")
    run_build_transitions(spark, load_config(None, [*ref, "etl.start_ds=2026-01-01"]))
    day1_only = _rows(spark, ref_path)
    run_build_transitions(spark, load_config(None, [*ref, "etl.start_ds=2026-01-02"]))
    sequential = _rows(spark, ref_path)

    # Day 1 and day 2 at once on an empty lake: both create the tables, so commits lose to
    # each other and are retried.
    procs = [_start(tmp_path, f"etl.start_ds={ds}") for ds in ("2026-01-01", "2026-01-02")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    lake = load_config(None, [f"lake.root={tmp_path}"]).lake
    got = _rows(spark, lake.path("transitions"))
    assert spark.read.format("delta").load(lake.path("transitions")).count() == len(sequential)
    assert got.keys() == sequential.keys()
    # Every row equals the sequential build, except day 1's row of the session that crosses
    # midnight: fixed by day 2 if the day-2 run committed last, still truncated if day 1 did.
    crossing = ("b", at(DAY1, 23, 50))
    for key, row in got.items():
        if key != crossing:
            assert row == sequential[key], key
    assert got[crossing] in (sequential[crossing], day1_only[crossing])
    ref_q = spark.read.format("delta").load(load_config(None, ref).lake.path("quarantine"))
    quarantine = spark.read.format("delta").load(lake.path("quarantine"))
    by_reason = lambda df: sorted(map(tuple, df.groupBy("ds", "reject_reason").count()  # noqa
                                      .collect()))
    assert by_reason(quarantine) == by_reason(ref_q) and quarantine.count() > 0
    print(f"commit conflicts retried: {sum(o.count('Delta commit conflict') for o in outs)}")
