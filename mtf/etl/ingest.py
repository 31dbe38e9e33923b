"""Reading the impression logs as the contract says (docs/contract.md section 1).

The logs come from other tools (pandas -> Parquet -> ``deltalake.write_deltalake``, Spark jobs,
warehouse exports), so their types vary: 64-bit integers, naive timestamps, epochs, string
dates, all-null columns. :func:`read_raw_logs` reads the table at ``lake.raw_logs`` and
conforms it with the ``etl`` settings (``column_map``, ``ts_timezone``, ``ts_unit``):
accepted types are converted, values that do not fit their canonical type are flagged for the
quarantine (``cast_reject_reason``), and anything else raises ``SchemaMismatchError`` before a
job writes anything. Every job that reads the logs goes through here, so they agree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mtf import contract as S
from mtf.delta import read_delta, void_columns
from mtf.errors import MissingInputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mtf.etl.config import EtlConfig


def ts_settings(etl: "EtlConfig") -> S.TsSettings:
    return S.TsSettings(timezone=etl.ts_timezone, unit=etl.ts_unit)


def declared_void(df: "DataFrame", path: str, contract: Sequence[S.ColumnSpec],
                  etl: "EtlConfig") -> frozenset[str]:
    """The contract columns missing from ``df`` that the table at ``path`` declares void (Spark
    does not read void columns). Reads the table's schema only when a column is missing."""
    missing = {etl.column_map.get(c.name, c.name) for c in contract} - set(df.columns)
    return void_columns(path) & missing if missing else frozenset()


def where(path: str) -> str:
    """How errors name the table."""
    return f"raw_logs {path!r}"


def raw_log_plans(df: "DataFrame", path: str, contract: Sequence[S.ColumnSpec],
                  etl: "EtlConfig") -> list[S.ColumnPlan]:
    """What :func:`read_raw_logs` does with each contract column of ``df`` (read from
    ``path``): as-is, cast, cast with a range check, or fatal."""
    return S.plan_columns(df.schema, contract, etl.column_map, ts_settings=ts_settings(etl),
                          void_columns=declared_void(df, path, contract, etl))


def conform_raw_logs(df: "DataFrame", path: str, contract: Sequence[S.ColumnSpec],
                     etl: "EtlConfig", *, keep_extra: bool = False) -> "DataFrame":
    """``df`` (the table at ``path`` as read) conformed to ``contract`` with the etl settings."""
    return S.conform(df, contract, where=where(path), column_map=etl.column_map,
                     keep_extra=keep_extra, ts_settings=ts_settings(etl),
                     void_columns=declared_void(df, path, contract, etl))


def read_raw_logs(spark: "SparkSession", path: str, task_names: Sequence[str],
                  etl: "EtlConfig") -> "DataFrame":
    """The impression logs at ``path`` with the contract columns for ``task_names`` (canonical
    types, contract order), plus ``cast_reject_reason`` when a range-checked cast applies.

    Raises:
        MissingInputError: no Delta table at ``path``.
        SchemaMismatchError: a column is missing or has a type the contract does not accept.
    """
    return conform_raw_logs(read_raw_table(spark, path), path, S.impression_contract(task_names),
                            etl)


def read_raw_table(spark: "SparkSession", path: str) -> "DataFrame":
    """The impression-log table at ``path`` as stored (MissingInputError when there is none)."""
    try:
        return read_delta(spark, path)
    except MissingInputError:
        raise MissingInputError(f"no impression logs at {path!r} (no Delta table there): "
                                f"write them there (`mtf simulate` does for simulated logs) "
                                f"or point lake.raw_logs at them") from None
