"""The impression-log / user-profile contract (docs/contract.md section 1) as schemas."""
from __future__ import annotations

from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (ArrayType, DateType, DoubleType, IntegerType, StringType,
                               TimestampType)

from mtf import contract as S

# docs/contract.md section 1, in order, for the default fusion tasks.
CONTRACT = [
    ("event_id", StringType()), ("user_id", StringType()), ("request_id", StringType()),
    ("ts", TimestampType()), ("ds", DateType()), ("item_id", StringType()),
    ("position", IntegerType()),
    ("pred_click", DoubleType()), ("pred_like", DoubleType()), ("pred_share", DoubleType()),
    ("pred_finish", DoubleType()), ("pred_watch_time", DoubleType()),
    ("pred_exit", DoubleType()),
    ("fusion_weights", ArrayType(DoubleType(), containsNull=False)),
    ("explore_group", StringType()), ("action_logp", DoubleType()),
    ("play_time_s", DoubleType()), ("duration_s", DoubleType()),
    ("liked", IntegerType()), ("shared", IntegerType()), ("commented", IntegerType()),
    ("followed", IntegerType()), ("app_session_id", StringType()),
]
NULLABLE = {"explore_group", "action_logp", "app_session_id"}


def test_impression_log_schema_is_the_contract() -> None:
    got = [(f.name, f.dataType) for f in S.IMPRESSION_LOG_SCHEMA]
    assert got == CONTRACT
    assert {f.name for f in S.IMPRESSION_LOG_SCHEMA if f.nullable} == NULLABLE


def test_pred_columns_follow_the_configured_tasks() -> None:
    names = [f.name for f in S.impression_log_schema(("click", "exit"))]
    assert [n for n in names if n.startswith(S.PRED_PREFIX)] == ["pred_click", "pred_exit"]


def test_arrow_schemas_are_what_spark_expects() -> None:
    for tasks in (S.DEFAULT_TASK_NAMES, ("finish", "click")):
        spark_side = to_arrow_schema(S.impression_log_schema(tasks))
        assert S.impression_log_arrow_schema(tasks).equals(spark_side)
    assert S.user_profile_arrow_schema().equals(to_arrow_schema(S.USER_PROFILE_SCHEMA))


def test_user_profile_schema() -> None:
    assert [(f.name, f.dataType, f.nullable) for f in S.USER_PROFILE_SCHEMA] == [
        ("user_id", StringType(), False), ("age", DoubleType(), False),
        ("activity", DoubleType(), False), ("tenure", DoubleType(), False),
        ("gender", DoubleType(), False)]
