"""All Delta Lake I/O goes through here: reads pin versions, writes are atomic and idempotent.

Spark side (delta-spark): :func:`read_delta`, :func:`write_delta`, :func:`table_version`,
:func:`table_properties`. Outside Spark (trainer, petastorm): :func:`active_file_uris` lists the
Parquet files of one pinned table version with the ``deltalake`` package. Never point Spark or
petastorm at a table *directory*: it also holds files the log has removed (docs/stack.md).
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)


def is_delta_table(path: str) -> bool:
    local = _local(path)
    return os.path.isdir(os.path.join(local, "_delta_log")) if local else False


def _local(path: str) -> str | None:
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


def read_delta(spark: "SparkSession", path: str, version: int | None = None) -> "DataFrame":
    """Read table ``path``, optionally as of ``version`` (time travel)."""
    if _local(path) is not None and not is_delta_table(path):
        raise FileNotFoundError(f"no Delta table at {path!r} (missing _delta_log)")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(path)


def write_delta(df: "DataFrame", path: str, *, mode: str,
                partition_by: Sequence[str] = (),
                replace_where: str | None = None,
                properties: Mapping[str, str] | None = None) -> int:
    """Write ``df`` to ``path`` in one Delta commit and return the new table version.

    ``mode`` is required: ``"overwrite"`` replaces the table (or, with ``replace_where``, exactly
    the rows matching the predicate, e.g. one day's partition, so a re-run of a day is
    idempotent); ``"append"`` adds. A failing write commits nothing, so readers keep seeing the
    previous version. ``properties`` become Delta table properties (``mtf.*`` keys): with a
    plain overwrite they are part of the data commit (the table is replaced, ``CREATE OR REPLACE
    TABLE AS SELECT``: a new table id, earlier properties carried over unless given); with
    ``replace_where`` or ``"append"`` they follow in a second commit (Delta sets arbitrary
    properties only when it creates or replaces a table).
    """
    if mode not in ("overwrite", "append"):
        raise ValueError(f"write_delta mode must be 'overwrite' or 'append', got {mode!r}")
    spark = df.sparkSession
    if properties and mode == "overwrite" and replace_where is None:
        _replace_with_properties(df, path, partition_by, properties)
        version = table_version(spark, path)
        logger.info("replaced Delta table %s -> version %d", path, version)
        return version
    writer = df.write.format("delta").mode(mode)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if replace_where is not None:
        if mode != "overwrite":
            raise ValueError("replace_where needs mode='overwrite'")
        writer = writer.option("replaceWhere", replace_where)
    elif mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    writer.save(path)
    if properties:
        set_table_properties(spark, path, properties)
    version = table_version(spark, path)
    logger.info("wrote Delta table %s (%s) -> version %d", path, mode, version)
    return version


# Derived from the table's protocol, not settable as ordinary properties.
_PROTOCOL_PROPERTIES = ("delta.minReaderVersion", "delta.minWriterVersion")


def _replace_with_properties(df: "DataFrame", path: str, partition_by: Sequence[str],
                             properties: Mapping[str, str]) -> None:
    """Overwrite ``path`` with ``df`` and set ``properties`` in the same commit."""
    spark = df.sparkSession
    old = table_properties(spark, path) if is_delta_table(path) else {}
    merged = {k: v for k, v in old.items() if k not in _PROTOCOL_PROPERTIES}
    merged.update({k: str(v) for k, v in properties.items()})
    writer = df.writeTo(f"delta.`{_sql_path(path)}`").using("delta")
    if partition_by:
        writer = writer.partitionedBy(*partition_by)
    for k, v in merged.items():
        writer = writer.tableProperty(k, v)
    writer.createOrReplace()


def set_table_properties(spark: "SparkSession", path: str, properties: Mapping[str, str]) -> None:
    """Set Delta table properties (one commit). Values are stored as strings."""
    from delta.tables import DeltaTable

    sets = ", ".join(f"'{_sql_str(k)}' = '{_sql_str(str(v))}'" for k, v in properties.items())
    spark.sql(f"ALTER TABLE delta.`{_sql_path(path)}` SET TBLPROPERTIES ({sets})")
    DeltaTable.forPath(spark, path)  # validates the table still resolves


def _sql_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")


def _sql_path(path: str) -> str:
    if "`" in path:
        raise ValueError(f"table path must not contain a backtick: {path!r}")
    return path


def table_version(spark: "SparkSession", path: str) -> int:
    """The latest committed version of table ``path``."""
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).history(1).select("version").first()
    if row is None:
        raise ValueError(f"Delta table {path!r} has no history")
    return int(row["version"])


def table_properties(spark: "SparkSession", path: str) -> dict[str, str]:
    rows = spark.sql(f"SHOW TBLPROPERTIES delta.`{_sql_path(path)}`").collect()
    return {r["key"]: r["value"] for r in rows}


def json_property(value: Any) -> str:
    """Serialise a config/feature layout for a table property (stable key order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# ---- outside Spark ---------------------------------------------------------------------------

def delta_snapshot(path: str, version: int | None = None) -> tuple[int, list[str], dict[str, str]]:
    """(version, active Parquet file URIs, table properties) of one table version, without Spark.

    URIs carry the ``file://`` scheme for local tables, as petastorm requires.
    """
    from deltalake import DeltaTable

    if _local(path) is not None and not is_delta_table(path):
        raise FileNotFoundError(f"no Delta table at {path!r} (missing _delta_log)")
    table = DeltaTable(path, version=version)
    uris = []
    for uri in table.file_uris():
        if "://" not in uri:
            uri = "file://" + os.path.abspath(uri)
        uris.append(uri)
    props = dict(table.metadata().configuration or {})
    return table.version(), sorted(uris), props


def active_file_uris(path: str, version: int | None = None) -> list[str]:
    """The Parquet files of table ``path`` at ``version`` (latest when None)."""
    return delta_snapshot(path, version)[1]
