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
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from mtf.errors import MissingInputError, TableVersionError, TableVersionGoneError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)
T = TypeVar("T")


def is_delta_table(path: str) -> bool:
    local = _local(path)
    return os.path.isdir(os.path.join(local, "_delta_log")) if local else False


def _local(path: str) -> str | None:
    if path.startswith("file://"):
        return path[len("file://"):]
    return None if "://" in path else path


def require_table(path: str) -> None:
    """Raise MissingInputError when the local ``path`` holds no Delta table (a remote path is
    left to the reader, which names it)."""
    if _local(path) is not None and not is_delta_table(path):
        raise MissingInputError(f"no Delta table at {path!r} (missing _delta_log)")


def _no_version(path: str, version: int, latest: int) -> TableVersionError:
    return TableVersionError(f"Delta table {path!r} has no version {version}; its latest "
                             f"version is {latest}", latest=latest)


GONE = ("its log entries or data files were removed (Delta log retention or VACUUM) after it "
        "was pinned")


def _gone(path: str, version: int, latest: int, condition: str = "") -> TableVersionGoneError:
    why = f" ({condition})" if condition else ""
    if "TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION" in condition:
        # The files may still be there, but Delta refuses: the version is older than
        # delta.deletedFileRetentionDuration. mtf maintain raises it for pinned versions.
        return TableVersionGoneError(
            f"Delta table {path!r} refuses time travel to version {version}{why}: it is older "
            f"than the table's delta.deletedFileRetentionDuration; run `mtf maintain` with the "
            f"version pinned (it raises the property, docs/maintenance.md) or pin a newer "
            f"version (latest: {latest})", latest=latest)
    return TableVersionGoneError(f"Delta table {path!r} version {version} can no longer be "
                                 f"read{why}: {GONE}; its latest version is {latest}",
                                 latest=latest)


# Spark's error conditions for a path that holds no Delta table (local or remote storage).
_MISSING_CONDITIONS = ("PATH_NOT_FOUND", "DELTA_TABLE_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE")


def error_condition(exc: BaseException) -> str:
    """The ``[CONDITION]`` a Spark error message starts with ("" when there is none)."""
    text = str(exc).lstrip()
    return text[1:text.index("]")] if text.startswith("[") and "]" in text else ""


def read_delta(spark: "SparkSession", path: str, version: int | None = None) -> "DataFrame":
    """Read table ``path``, optionally as of ``version`` (time travel).

    Raises:
        MissingInputError: no Delta table at ``path`` (checked up front for a local path; from
            Spark's error for remote storage).
        TableVersionError: ``version`` is newer than the table's latest version.
        TableVersionGoneError: ``version`` is older and its log was cleaned up.
    """
    require_table(path)
    reader = spark.read.format("delta")
    try:
        if version is None:
            return reader.load(path)
        return reader.option("versionAsOf", int(version)).load(path)
    except Exception as exc:  # Delta's own error is a multi-line JVM stack
        condition = error_condition(exc)
        if condition in _MISSING_CONDITIONS:
            raise MissingInputError(f"no Delta table at {path!r} ({condition})") from exc
        if version is None:
            raise
        latest = table_version(spark, path)
        if version > latest:
            raise _no_version(path, version, latest) from exc
        raise _gone(path, version, latest, condition) from exc


def write_delta(df: "DataFrame", path: str, *, mode: str,
                partition_by: Sequence[str] = (),
                replace_where: str | None = None,
                properties: Mapping[str, str] | None = None,
                max_rows_per_file: int = 0) -> int:
    """Write ``df`` to ``path`` in one Delta commit and return the new table version.

    ``mode`` is required: ``"overwrite"`` replaces the table (or, with ``replace_where``, exactly
    the rows matching the predicate, e.g. one day's partition, so a re-run of a day is
    idempotent); ``"append"`` adds. A failing write commits nothing, so readers keep seeing the
    previous version. ``properties`` become Delta table properties (``mtf.*`` keys): with a
    plain overwrite they are part of the data commit (the table is replaced, ``CREATE OR REPLACE
    TABLE AS SELECT``: a new table id, earlier properties carried over unless given); with
    ``replace_where`` or ``"append"`` they follow in a second commit (Delta sets arbitrary
    properties only when it creates or replaces a table). ``max_rows_per_file`` > 0 splits a
    task's output into files of at most that many rows (Spark's ``maxRecordsPerFile``).
    """
    if mode not in ("overwrite", "append"):
        raise ValueError(f"write_delta mode must be 'overwrite' or 'append', got {mode!r}")
    spark = df.sparkSession
    if properties and mode == "overwrite" and replace_where is None:
        _replace_with_properties(df, path, partition_by, properties, max_rows_per_file)
        version = table_version(spark, path)
        logger.info("replaced Delta table %s -> version %d", path, version)
        return version
    writer = df.write.format("delta").mode(mode)
    if max_rows_per_file > 0:
        writer = writer.option("maxRecordsPerFile", int(max_rows_per_file))
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


# Delta's commit conflicts (optimistic concurrency): another writer committed to the table
# between this transaction's read and its commit. Java class names, so that the check works
# whether or not delta-spark's Python exception conversion is installed.
_CONFLICT_CLASSES = ("ConcurrentAppendException", "ConcurrentDeleteReadException",
                     "ConcurrentDeleteDeleteException", "MetadataChangedException",
                     "ProtocolChangedException", "ConcurrentWriteException",
                     "ConcurrentTransactionException", "DeltaConcurrentModificationException")


def is_commit_conflict(exc: BaseException) -> bool:
    """True when ``exc`` is a Delta commit conflict (a concurrent writer won the race).

    Delta raises these instead of committing, so the table is unchanged by the failed
    transaction; re-running the whole (idempotent) job on the new table version is safe.
    """
    names = {c.__name__ for c in type(exc).__mro__}
    if names & set(_CONFLICT_CLASSES):
        return True
    text = str(exc)
    return any(f"io.delta.exceptions.{c}" in text or f"delta.exceptions.{c}" in text
               for c in _CONFLICT_CLASSES)


def retry_on_conflict(run: Callable[[], T], *, what: str, retries: int,
                      backoff_s: float = 2.0, seed: int | None = None) -> T:
    """``run()``, re-run up to ``retries`` times when it fails with a Delta commit conflict.

    ``run`` must be idempotent (each attempt re-reads the tables and replaces exactly what it
    owns). Waits ``backoff_s * attempt`` seconds plus jitter between attempts, so that two jobs
    that collided do not collide again. After the last attempt the conflict is raised as a
    :class:`CommitConflictError` that says nothing was lost and the job can be re-run.
    """
    rng = random.Random(seed)
    for attempt in range(retries + 1):
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - only conflicts are retried, others re-raised
            if not is_commit_conflict(exc):
                raise
            if attempt == retries:
                raise CommitConflictError(
                    f"{what}: another job committed to the same Delta table {retries + 1} times "
                    f"while this one ran; this run's failed commits changed nothing, re-run it "
                    f"(or raise the retry count)") from exc
            wait = backoff_s * (attempt + 1) * (1.0 + rng.random())
            logger.warning("%s: Delta commit conflict (%s); retrying in %.1f s (attempt %d of "
                           "%d)", what, _first_line(exc), wait, attempt + 2, retries + 1)
            time.sleep(wait)
    raise AssertionError("unreachable")


class CommitConflictError(RuntimeError):
    """A job lost every retry of its Delta commit to concurrent writers; nothing was written by
    the failed attempts."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# Derived from the table's protocol, not settable as ordinary properties.
_PROTOCOL_PROPERTIES = ("delta.minReaderVersion", "delta.minWriterVersion")


def _replace_with_properties(df: "DataFrame", path: str, partition_by: Sequence[str],
                             properties: Mapping[str, str], max_rows_per_file: int = 0) -> None:
    """Overwrite ``path`` with ``df`` and set ``properties`` in the same commit."""
    spark = df.sparkSession
    old = table_properties(spark, path) if is_delta_table(path) else {}
    merged = {k: v for k, v in old.items() if k not in _PROTOCOL_PROPERTIES}
    merged.update({k: str(v) for k, v in properties.items()})
    writer = df.writeTo(f"delta.`{_sql_path(path)}`").using("delta")
    if max_rows_per_file > 0:
        writer = writer.option("maxRecordsPerFile", str(int(max_rows_per_file)))
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

    require_table(path)
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

    require_table(path)
    try:
        table = DeltaTable(path, version=version)
    except Exception as exc:  # deltalake's error does not name the versions there are
        try:
            latest = DeltaTable(path).version() if version is not None else None
        except Exception:  # noqa: BLE001 - deltalake raises its own types per store
            latest = None
        if latest is None:
            if type(exc).__name__ == "TableNotFoundError":   # remote storage, no table there
                raise MissingInputError(f"no Delta table at {path!r} "
                                        f"({str(exc).splitlines()[0]})") from exc
            raise
        if version > latest:
            raise _no_version(path, version, latest) from exc
        raise _gone(path, version, latest) from exc
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


def void_columns(path: str) -> frozenset[str]:
    """Top-level columns that table ``path`` declares void (every value null).

    Writers such as ``deltalake.write_deltalake`` declare an all-null pandas column void, and
    Spark leaves void columns out of what it reads, so they look missing; the table's own schema
    (read here without Spark) tells them apart from a truly missing column. Empty when the
    ``deltalake`` package cannot read the store.
    """
    from deltalake import DeltaTable

    try:
        schema = json.loads(DeltaTable(path).schema().to_json())
    except Exception as exc:  # noqa: BLE001 - deltalake raises its own types per store
        logger.info("cannot read the schema of %s without Spark (%s: %s); void columns unknown",
                    path, type(exc).__name__, str(exc).strip()[:200])
        return frozenset()
    return frozenset(f["name"] for f in schema.get("fields", []) if f.get("type") == "void")
