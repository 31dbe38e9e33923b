"""Logs written by other tools: accepted types are converted, values that do not fit their
canonical type are quarantined with out_of_range_<column> (never wrapped, never a job failure),
other timestamp forms are read with etl.ts_timezone / etl.ts_unit, void columns are nulls."""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from mtf import contract as S
from mtf.config import ConfigError, load_config
from mtf.etl.config import EtlConfig
from mtf.etl.ingest import read_raw_logs
from mtf.etl.validate import RowRules, add_row_reason
from tests.etl.logs import DAY1, TASKS, UTC, at, imp, logs_df, pandas_logs, write_logs_deltalake

RULES = RowRules(weights_lo=(0.0,) * 6, weights_hi=(2.0,) * 6)
CONTRACT = S.impression_contract(TASKS)
INT_MAX = 2**31 - 1


def spec(name: str) -> S.ColumnSpec:
    return next(c for c in CONTRACT if c.name == name)


def plan(name: str, found: str | None, unit: str = "", void: bool = False) -> S.ColumnPlan:
    return S.plan_column(spec(name), name, found, ts_settings=S.TsSettings(unit=unit),
                         declared_void=void)


@pytest.mark.parametrize("name, found, unit, action", [
    ("position", "int", "", S.AS_IS), ("position", "smallint", "", S.CAST),
    ("position", "bigint", "", S.RANGE_CHECKED), ("position", "double", "", S.RANGE_CHECKED),
    ("liked", "float", "", S.RANGE_CHECKED), ("user_id", "double", "", S.FATAL),
    ("ts", "double", "s", S.FATAL), ("position", "decimal(10,0)", "", S.FATAL),
    ("liked", "tinyint", "", S.CAST), ("liked", "bigint", "", S.RANGE_CHECKED),
    ("liked", "boolean", "", S.CAST), ("liked", "string", "", S.FATAL),
    ("play_time_s", "bigint", "", S.CAST), ("play_time_s", "decimal(38,0)", "", S.CAST),
    ("pred_click", "float", "", S.CAST), ("action_logp", "void", "", S.CAST),
    ("user_id", "bigint", "", S.CAST), ("app_session_id", "bigint", "", S.CAST),
    ("app_session_id", "void", "", S.CAST), ("explore_group", "bigint", "", S.FATAL),
    ("ts", "timestamp", "", S.AS_IS), ("ts", "timestamp_ntz", "", S.CAST),
    ("ts", "bigint", "", S.FATAL), ("ts", "string", "", S.FATAL), ("ts", "date", "s", S.FATAL),
    ("ts", "bigint", "s", S.RANGE_CHECKED), ("ts", "int", "s", S.CAST),
    ("ts", "bigint", "ms", S.RANGE_CHECKED), ("ts", "int", "us", S.CAST),
    ("ts", "bigint", "us", S.RANGE_CHECKED), ("ts", "bigint", "ns", S.CAST),
    ("ds", "string", "", S.CAST), ("ds", "timestamp", "", S.FATAL),
    ("fusion_weights", "array<float>", "", S.CAST), ("fusion_weights", "array<int>", "", S.FATAL),
])
def test_what_each_found_type_gets(name, found, unit, action) -> None:
    assert plan(name, found, unit).action == action


def test_missing_and_void_columns() -> None:
    assert plan("app_session_id", None, void=True) == S.ColumnPlan(
        spec("app_session_id"), "app_session_id", "void", S.CAST, "void: every value null")
    assert plan("app_session_id", None).how == \
        "column 'app_session_id' is missing (expected string)"
    assert plan("liked", None, void=True).how == ("column 'liked' is missing (expected int): "
                                                  "the table declares it void (every value null)")
    assert plan("liked", "void").action == S.FATAL


def test_epoch_ts_without_a_unit_and_string_ts_are_refused_naming_the_fix(spark) -> None:
    df = logs_df(spark, [imp("u", "r", at(DAY1, 1))]).withColumn("ts", F.lit(1_767_225_600))
    with pytest.raises(S.SchemaMismatchError) as err:
        S.conform(df, CONTRACT, where="raw_logs '/lake/raw'")
    assert str(err.value) == (
        "raw_logs '/lake/raw': schema does not match the input contract (docs/contract.md "
        "section 1): column 'ts' has type int, an epoch: set etl.ts_unit to its unit "
        "(s, ms, us, ns)")
    with pytest.raises(S.SchemaMismatchError, match=r"column 'ts' has type string, expected "
                                                    r"timestamp \(convert it to a timestamp"):
        S.conform(df.withColumn("ts", F.lit("2026-01-01T00:00:00Z")), CONTRACT, where="raw")


def _replace(spark, df, name: str, ddl: str, values: dict[str, object]):
    """``df`` with column ``name`` replaced by ``values`` (event_id -> value) of type ``ddl``."""
    sub = spark.createDataFrame(list(values.items()), f"event_id string, `{name}` {ddl}")
    return df.drop(name).join(sub, S.EVENT_ID)


def _rows(n: int) -> list[dict]:
    return [imp("u", f"r{i}", at(DAY1, 12), event_id=f"e{i}") for i in range(n)]


def _conformed(spark, df, ansi: str) -> tuple[dict, dict]:
    """Conform ``df`` with Spark's ANSI mode set to ``ansi``: per event_id, (position, liked,
    cast_reject_reason) and the row's reject_reason; position and liked come out as int."""
    old = spark.conf.get("spark.sql.ansi.enabled")
    spark.conf.set("spark.sql.ansi.enabled", ansi)
    try:
        out = S.conform(df, CONTRACT, where="raw")
        assert dict(out.dtypes)["position"] == "int" and dict(out.dtypes)["liked"] == "int"
        got = {r.event_id: (r.position, r.liked, r.cast_reject_reason) for r in out.collect()}
        reasons = {r.event_id: r.reject_reason
                   for r in add_row_reason(out, rules=RULES).collect()}
    finally:
        spark.conf.set("spark.sql.ansi.enabled", old)
    return got, reasons


@pytest.mark.parametrize("ansi", ["true", "false"])
def test_out_of_range_integers_are_quarantined_not_wrapped(spark, ansi) -> None:
    position = {"e0": 3, "e1": INT_MAX, "e2": INT_MAX + 1, "e3": -INT_MAX - 2, "e4": 2**62,
                "e5": 1, "e6": 1, "e7": None, "e8": 2**40}
    liked = {"e0": 0, "e1": 1, "e2": 0, "e3": 0, "e4": 0, "e5": 2**40, "e6": 7, "e7": 0,
             "e8": -2**40}
    df = _replace(spark, logs_df(spark, _rows(9)), "position", "bigint", position)
    df = _replace(spark, df, "liked", "bigint", liked)
    got, reasons = _conformed(spark, df, ansi)
    assert got == {
        "e0": (3, 0, None), "e1": (INT_MAX, 1, None),
        "e2": (None, 0, "out_of_range_position"), "e3": (None, 0, "out_of_range_position"),
        "e4": (None, 0, "out_of_range_position"), "e5": (1, None, "out_of_range_liked"),
        "e6": (1, 7, None), "e7": (None, 0, None),
        "e8": (None, None, "out_of_range_position")}     # both out: the first column wins
    assert reasons == {"e0": None, "e1": None, "e2": "out_of_range_position",
                       "e3": "out_of_range_position", "e4": "out_of_range_position",
                       "e5": "out_of_range_liked", "e6": "invalid_interaction",
                       "e7": "null_position", "e8": "out_of_range_position"}


@pytest.mark.parametrize("ansi", ["true", "false"])
def test_whole_doubles_are_integers_and_nan_is_missing(spark, ansi) -> None:
    """pandas writes an integer column with a missing value as float64 with NaN."""
    nan, inf = float("nan"), float("inf")
    position = {"e0": 3.0, "e1": nan, "e2": 2.5, "e3": inf, "e4": -inf, "e5": 2.0**31,
                "e6": -2.0**31, "e7": None, "e8": 1.0}
    liked = {"e0": 1.0, "e1": 0.0, "e2": 0.0, "e3": 0.0, "e4": 0.0, "e5": 0.0, "e6": 0.0,
             "e7": 0.0, "e8": nan}
    df = _replace(spark, logs_df(spark, _rows(9)), "position", "double", position)
    df = _replace(spark, df, "liked", "float", liked)
    got, reasons = _conformed(spark, df, ansi)
    assert got == {
        "e0": (3, 1, None), "e1": (None, 0, None), "e2": (None, 0, "out_of_range_position"),
        "e3": (None, 0, "out_of_range_position"), "e4": (None, 0, "out_of_range_position"),
        "e5": (None, 0, "out_of_range_position"), "e6": (-2**31, 0, None),
        "e7": (None, 0, None), "e8": (1, None, None)}
    assert reasons == {"e0": None, "e1": "null_position", "e2": "out_of_range_position",
                       "e3": "out_of_range_position", "e4": "out_of_range_position",
                       "e5": "out_of_range_position", "e6": None,
                       "e7": "null_position", "e8": "null_feedback"}


def test_booleans_and_integer_ids_become_canonical(spark) -> None:
    df = _replace(spark, logs_df(spark, _rows(3)), "liked", "boolean",
                  {"e0": True, "e1": False, "e2": None})
    df = _replace(spark, df, "app_session_id", "bigint",
                  {"e0": 2**53 + 1, "e1": None, "e2": -7})       # exact, beyond a double
    df = _replace(spark, df, "user_id", "int", {"e0": 12, "e1": 12, "e2": 3})
    out = S.conform(df, CONTRACT, where="raw")
    assert S.CAST_REJECT_REASON not in out.columns              # nothing to range-check
    assert out.columns == [c.name for c in CONTRACT]
    got = {r.event_id: (r.liked, r.app_session_id, r.user_id) for r in out.collect()}
    assert got == {"e0": (1, "9007199254740993", "12"), "e1": (0, None, "12"),
                   "e2": (None, "-7", "3")}


def test_timestamp_ntz_is_read_in_the_configured_zone(spark) -> None:
    walls = {"e0": dt.datetime(2026, 7, 1, 10, 0, 0, 123456),   # Paris summer: UTC+2
             "e1": dt.datetime(2026, 1, 1, 0, 30),               # winter UTC+1: previous day
             "e2": None}
    df = _replace(spark, logs_df(spark, _rows(3)), "ts", "timestamp_ntz", walls)
    paris = S.conform(df, CONTRACT, where="raw", ts_settings=S.TsSettings("Europe/Paris"))
    utc = S.conform(df, CONTRACT, where="raw")
    assert dict(paris.dtypes)["ts"] == "timestamp"
    got = {r.event_id: r.ts for r in paris.collect()}
    assert got == {"e0": dt.datetime(2026, 7, 1, 8, 0, 0, 123456),
                   "e1": dt.datetime(2025, 12, 31, 23, 30), "e2": None}
    assert {r.event_id: r.ts for r in utc.collect()} == walls
    # ds must be the UTC date: e1 is logged on 2026-01-01 but happened on 2025-12-31 UTC.
    reasons = {r.event_id: r.reject_reason
               for r in add_row_reason(paris, rules=RULES).collect()}
    assert reasons == {"e0": "ds_mismatch", "e1": "ds_mismatch", "e2": "null_ts"}


EPOCH_S = int(dt.datetime(2026, 1, 1, 10, tzinfo=UTC).timestamp())   # 1767261600
MICROS = EPOCH_S * 10**6


@pytest.mark.parametrize("unit, values, want", [   # want: micros since the epoch
    ("s", {"e0": EPOCH_S, "e1": 253_402_300_799, "e2": 253_402_300_800,
           "e3": -62_135_596_800, "e4": -62_135_596_801, "e5": 2**62},
     {"e0": MICROS, "e1": S.MAX_TS_MICROS - 999_999, "e3": S.MIN_TS_MICROS}),
    ("ms", {"e0": EPOCH_S * 1000 + 123, "e1": -62_135_596_800_000, "e2": -62_135_596_800_001,
            "e3": 2**62, "e4": -2**63},
     {"e0": MICROS + 123_000, "e1": S.MIN_TS_MICROS}),
    ("us", {"e0": MICROS + 123456, "e1": -1, "e2": S.MAX_TS_MICROS, "e3": S.MAX_TS_MICROS + 1,
            "e4": -2**63},
     {"e0": MICROS + 123456, "e1": -1, "e2": S.MAX_TS_MICROS}),
    ("ns", {"e0": EPOCH_S * 10**9 + 123456789, "e1": -1, "e2": -2**63},  # never out of range
     {"e0": MICROS + 123456, "e1": -1, "e2": -2**63 // 1000}),          # floor to micros
])
def test_integer_epochs_are_converted_with_etl_ts_unit(spark, unit, values, want) -> None:
    df = _replace(spark, logs_df(spark, _rows(len(values))), "ts", "bigint", values)
    out = S.conform(df, CONTRACT, where="raw", ts_settings=S.TsSettings(unit=unit))
    # ns: every bigint is a timestamp in range, so nothing is range-checked.
    assert (S.CAST_REJECT_REASON in out.columns) == (unit != "ns")
    reason = F.col(S.CAST_REJECT_REASON) if unit != "ns" else F.lit(None)
    got = {r.event_id: (r.micros, r.reason)
           for r in out.select("event_id", F.unix_micros("ts").alias("micros"),
                               reason.alias("reason")).collect()}
    out_of_range = {e: (None, "out_of_range_ts") for e in values if e not in want}
    assert got == {**{e: (us, None) for e, us in want.items()}, **out_of_range}
    if unit == "s":
        assert out.where(F.col("event_id") == "e0").first().ts == dt.datetime(2026, 1, 1, 10)


def test_ds_text_is_parsed_only_in_its_exact_form(spark) -> None:
    ds = {"e0": "2026-01-01", "e1": "2026-1-1", "e2": "01/01/2026", "e3": "2026-02-30",
          "e4": "2026-01-01 00:00", "e5": None}
    df = _replace(spark, logs_df(spark, _rows(len(ds))), "ds", "string", ds)
    out = S.conform(df, CONTRACT, where="raw")
    got = {r.event_id: (r.ds, r.reject_reason)
           for r in add_row_reason(out, rules=RULES).collect()}
    assert got == {"e0": (DAY1, None), **{e: (None, "ds_mismatch") for e in ds if e != "e0"}}


def test_void_columns_from_deltalake_are_nulls_where_nulls_are_allowed(spark, tmp_path) -> None:
    import pandas as pd

    rows = _rows(2)
    nulls = [None] * len(rows)
    etl = EtlConfig()
    path = str(tmp_path / "voids")
    write_logs_deltalake(pandas_logs(rows, app_session_id=nulls, explore_group=nulls,
                                     action_logp=nulls), path)
    assert "app_session_id" not in spark.read.format("delta").load(path).columns  # Spark drops it
    out = read_raw_logs(spark, path, TASKS, etl)
    # pandas wrote int64 position and flags: range-checked, hence the reason column.
    assert out.columns == [*(c.name for c in CONTRACT), S.CAST_REJECT_REASON]
    assert [(r.app_session_id, r.explore_group, r.action_logp) for r in out.collect()] == \
        [(None, None, None)] * 2
    bad = str(tmp_path / "void_flag")
    write_logs_deltalake(pandas_logs(rows, liked=pd.Series(nulls, dtype=object)), bad)
    with pytest.raises(S.SchemaMismatchError, match=r"column 'liked' is missing \(expected "
                                                    r"int\): the table declares it void"):
        read_raw_logs(spark, bad, TASKS, etl)


def test_ts_settings_are_validated_with_the_config() -> None:
    assert EtlConfig(ts_timezone="America/New_York", ts_unit="ms").ts_unit == "ms"
    with pytest.raises(ConfigError, match=r"etl: ts_unit must be one of \['s', 'ms', 'us', "
                                          r"'ns'\] or '' \(no epoch ts\), got 'min'"):
        load_config(None, ["etl.ts_unit=min"])
    with pytest.raises(ConfigError, match="etl: ts_timezone must be a time-zone name like "
                                          "'UTC' or 'Europe/Paris', got 'Mars/Olympus'"):
        load_config(None, ["etl.ts_timezone=Mars/Olympus"])
