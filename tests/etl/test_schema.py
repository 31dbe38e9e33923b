"""The input contract: missing/mistyped columns fail naming the column; accepted types cast."""
from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from mtf import contract as S
from tests.etl.logs import DAY1, TASKS, at, imp, logs_df


def test_contract_follows_fusion_tasks() -> None:
    names = [c.name for c in S.impression_contract(("click", "exit"))]
    assert "pred_click" in names and "pred_exit" in names and "pred_like" not in names
    with pytest.raises(ValueError, match="at least one fusion task"):
        S.impression_contract(())


def test_conform_passes_a_valid_table_and_drops_extra_columns(spark) -> None:
    df = logs_df(spark, [imp("u", "r", at(DAY1, 1))]).withColumn("pred_unknown_task", F.lit(1.0))
    out = S.conform(df, S.impression_contract(TASKS), where="raw_logs")
    assert out.columns == [c.name for c in S.impression_contract(TASKS)]


def test_missing_and_mistyped_columns_are_all_named(spark) -> None:
    df = (logs_df(spark, [imp("u", "r", at(DAY1, 1))]).drop("liked", "pred_exit")
          .withColumn("play_time_s", F.lit("10")))
    with pytest.raises(S.SchemaMismatchError) as err:
        S.conform(df, S.impression_contract(TASKS), where="raw_logs '/lake/raw'")
    msg = str(err.value)
    assert "raw_logs '/lake/raw'" in msg
    assert "column 'liked' is missing (expected int)" in msg
    assert "column 'pred_exit' is missing (expected double)" in msg
    assert "column 'play_time_s' has type string, expected double" in msg


def test_accepted_types_are_cast_and_column_map_renames(spark) -> None:
    df = (logs_df(spark, [imp("u", "r", at(DAY1, 1))])
          .withColumn("play_time_s", F.col("play_time_s").cast("float"))
          .withColumn("liked", F.col("liked").cast("smallint"))
          .withColumnRenamed("ts", "event_time"))
    out = S.conform(df, S.impression_contract(TASKS), where="raw",
                    column_map={"ts": "event_time"})
    types = dict(out.dtypes)
    assert types["play_time_s"] == "double" and types["liked"] == "int"
    assert types["ts"] == "timestamp"
    with pytest.raises(S.SchemaMismatchError, match=r"column 'ts \(mapped from 'time'\)' is "
                                                    r"missing"):
        S.conform(df, S.impression_contract(TASKS), where="raw", column_map={"ts": "time"})


def test_simulator_schema_satisfies_the_contract() -> None:
    sim_schema = pytest.importorskip("mtf.contract")
    from mtf.fusion import DEFAULT_TASKS
    tasks = tuple(t.name for t in DEFAULT_TASKS)
    assert S.schema_problems(sim_schema.impression_log_schema(tasks),
                             S.impression_contract(tasks)) == []
    assert S.schema_problems(sim_schema.user_profile_schema(),
                             S.profile_contract(sim_schema.PROFILE_COLUMNS)) == []
