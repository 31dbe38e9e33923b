"""Real Delta Lake through delta-spark: round trip, overwrite, time travel, snapshots."""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from mtf.delta import (active_file_uris, delta_snapshot, is_delta_table, read_delta,
                       table_properties, table_version, write_delta)


def rows(df, *cols):
    return sorted(tuple(r) for r in df.select(*cols).collect())


def test_write_overwrite_and_time_travel(spark, tmp_path) -> None:
    path = str(tmp_path / "t")
    v0 = write_delta(spark.createDataFrame([(1, "a"), (2, "b")], "id long, v string"), path,
                     mode="overwrite")
    v1 = write_delta(spark.createDataFrame([(3, "c")], "id long, v string"), path, mode="append")
    v2 = write_delta(spark.createDataFrame([(9, "z")], "id long, v string"), path,
                     mode="overwrite")
    assert (v0, v1, v2) == (0, 1, 2)
    assert table_version(spark, path) == 2
    assert rows(read_delta(spark, path), "id", "v") == [(9, "z")]
    assert rows(read_delta(spark, path, version=0), "id", "v") == [(1, "a"), (2, "b")]
    assert rows(read_delta(spark, path, version=1), "id", "v") == [(1, "a"), (2, "b"), (3, "c")]


def test_replace_where_overwrites_exactly_one_partition(spark, tmp_path) -> None:
    path = str(tmp_path / "p")
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    df = spark.createDataFrame([(d1, 1), (d1, 2), (d2, 3)], "ds date, x int")
    write_delta(df, path, mode="overwrite", partition_by=["ds"])
    again = spark.createDataFrame([(d2, 30), (d2, 31)], "ds date, x int")
    for _ in range(2):  # idempotent: the same re-run twice gives the same table
        write_delta(again, path, mode="overwrite", partition_by=["ds"],
                    replace_where="ds = '2026-01-02'")
        assert rows(read_delta(spark, path), "ds", "x") == [(d1, 1), (d1, 2), (d2, 30), (d2, 31)]


def test_replace_where_rejects_rows_outside_the_predicate(spark, tmp_path) -> None:
    path = str(tmp_path / "p")
    d1 = dt.date(2026, 1, 1)
    write_delta(spark.createDataFrame([(d1, 1)], "ds date, x int"), path, mode="overwrite",
                partition_by=["ds"])
    stray = spark.createDataFrame([(dt.date(2026, 1, 5), 7)], "ds date, x int")
    with pytest.raises(Exception, match="(?i)replaceWhere|does not conform|DELTA_REPLACE_WHERE"):
        write_delta(stray, path, mode="overwrite", replace_where="ds = '2026-01-02'")
    assert table_version(spark, path) == 0


def test_failed_write_leaves_previous_version_intact(spark, tmp_path) -> None:
    path = str(tmp_path / "f")
    write_delta(spark.range(5), path, mode="overwrite")
    # A job that fails half-way through its tasks: division by zero under ANSI mode.
    poisoned = spark.range(100).withColumn("x", F.lit(1) / (F.col("id") - 50).cast("int"))
    spark.conf.set("spark.sql.ansi.enabled", "true")
    try:
        with pytest.raises(Exception, match="(?i)divide|division"):
            write_delta(poisoned.repartition(4), path, mode="overwrite")
    finally:
        spark.conf.unset("spark.sql.ansi.enabled")
    assert table_version(spark, path) == 0
    assert read_delta(spark, path).count() == 5


def test_properties_and_snapshot_outside_spark(spark, tmp_path) -> None:
    path = str(tmp_path / "s")
    v0 = write_delta(spark.range(0, 40, numPartitions=4), path, mode="overwrite",
                     properties={"mtf.feature_version": "v1", "mtf.note": "it's"})
    # The properties are part of the data commit: version 0 already carries them.
    assert v0 == 0 and delta_snapshot(path, 0)[2]["mtf.feature_version"] == "v1"
    write_delta(spark.range(0, 10, numPartitions=2), path, mode="overwrite")
    assert table_properties(spark, path)["mtf.feature_version"] == "v1"
    v_latest, files, props = delta_snapshot(path)
    assert v_latest == table_version(spark, path)
    assert props["mtf.note"] == "it's"
    assert len(files) == 2 and all(f.startswith("file://") for f in files)
    # The directory still holds the 4 files of version 0; the snapshot of version 0 lists them.
    assert len(active_file_uris(path, version=0)) == 4
    assert set(files).isdisjoint(active_file_uris(path, version=0))


def test_missing_table_is_a_clear_error(spark, tmp_path) -> None:
    assert not is_delta_table(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        read_delta(spark, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        delta_snapshot(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="mode must be"):
        write_delta(spark.range(1), str(tmp_path / "x"), mode="upsert")


def test_overwrite_with_properties_is_one_commit(spark, tmp_path) -> None:
    path = str(tmp_path / "o")
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    df = spark.createDataFrame([(d1, 1), (d2, 2)], "ds date, x int")
    write_delta(df, path, mode="overwrite", partition_by=["ds"], properties={"mtf.a": "1"})
    v1 = write_delta(df.where("x = 2"), path, mode="overwrite", partition_by=["ds"],
                     properties={"mtf.b": "2"})
    assert v1 == 1  # data and properties in one commit each
    assert rows(read_delta(spark, path), "ds", "x") == [(d2, 2)]
    assert rows(read_delta(spark, path, version=0), "ds", "x") == [(d1, 1), (d2, 2)]
    props = table_properties(spark, path)
    assert (props["mtf.a"], props["mtf.b"]) == ("1", "2")  # earlier properties carried over
    # replaceWhere cannot set properties in its commit: they follow in a second one.
    v3 = write_delta(df.where("x = 1"), path, mode="overwrite", partition_by=["ds"],
                     replace_where="ds = '2026-01-01'", properties={"mtf.a": "3"})
    assert v3 == 3 and table_properties(spark, path)["mtf.a"] == "3"
    assert rows(read_delta(spark, path), "ds", "x") == [(d1, 1), (d2, 2)]


@pytest.mark.parametrize("how", ["replace-with-properties", "overwrite", "replace-where"])
def test_max_rows_per_file_caps_every_file(spark, tmp_path, how) -> None:
    """Row groups (and the trainer's read-ahead) stay bounded whatever a partition's size."""
    import pyarrow.parquet as pq

    path = str(tmp_path / "capped")
    df = spark.range(0, 2500, numPartitions=1).selectExpr("DATE'2026-01-01' AS ds", "id")
    if how == "replace-where":
        write_delta(df, path, mode="overwrite", partition_by=["ds"])
    write_delta(df, path, mode="overwrite", partition_by=["ds"], max_rows_per_file=1000,
                properties={"mtf.a": "1"} if how == "replace-with-properties" else None,
                replace_where="ds = '2026-01-01'" if how == "replace-where" else None)
    counts = sorted(pq.ParquetFile(uri[len("file://"):]).metadata.num_rows
                    for uri in active_file_uris(path))
    assert counts == [500, 1000, 1000]
    assert read_delta(spark, path).count() == 2500
