"""``mtf maintain``: compact the lake's Delta tables and VACUUM them without losing pinned versions.

Per table of the ``maintenance`` section (docs/maintenance.md):

1. OPTIMIZE (``maintenance.optimize``): small files of each ds partition (of the last
   ``optimize_days`` days, or all) are rewritten into few large ones, in one commit that
   changes no row. A re-run finds nothing to compact and commits nothing.
2. VACUUM (``maintenance.tables``): files removed from the table before a cutoff are deleted.
   The cutoff is the earlier of ``now - retain_hours`` and the commit time of the oldest pinned
   version (:mod:`mtf.maintenance.pins`) less ``pin_margin_hours``, in whole hours rounded up
   (Delta rounds VACUUM's retention to hours), so every file of a pinned version stays. Before
   deleting anything:

   * the table's ``delta.deletedFileRetentionDuration`` and ``delta.logRetentionDuration`` are
     raised when shorter than that span: after the first, Delta forgets removals (VACUUM then
     deletes those files whatever retention it is given) and refuses time travel to older
     versions; after the second it deletes older log entries (time travel then fails);
   * a DRY RUN lists the files VACUUM would delete; if any belongs to a pinned version the job
     stops and deletes nothing.

   Two Delta settings are changed for the job's VACUUM statements only: Delta 4.4 ignores a
   ``RETAIN n HOURS`` other than 0 (``spark.databricks.delta.vacuum.retentionWindowIgnore
   .enabled``, true by default, makes it use ``delta.deletedFileRetentionDuration``), and it
   refuses a retention below that property, at least 168 h, unless
   ``spark.databricks.delta.retentionDurationCheck.enabled`` is false. The retention computed
   here is honoured, and that floor is replaced by the config's own (``retain_hours`` >= 168 h
   unless ``allow_short_retention``) and by the dry-run check of the pinned files.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from mtf.delta import (_sql_path, delta_snapshot, is_delta_table, retry_on_conflict,
                       set_table_properties, table_properties, table_version)
from mtf.errors import TableVersionError, UserError
from mtf.etl.pipeline import session_conf
from mtf.maintenance.config import MaintenanceConfig
from mtf.maintenance.pins import Pin, configured_pins, recorded_pins, table_key
from mtf.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)

DELETED_FILE_RETENTION = "delta.deletedFileRetentionDuration"
LOG_RETENTION = "delta.logRetentionDuration"
# Delta's defaults for the two properties, in hours.
DEFAULT_RETENTION_HOURS = {DELETED_FILE_RETENTION: 7 * 24.0, LOG_RETENTION: 30 * 24.0}
# A raised property covers the span it needs plus this, so that daily maintenance runs raise it
# again before the oldest pin's removals age out.
HEADROOM_DAYS = 7
# VACUUM's own settings for its statements (see the module docstring): honour RETAIN (Delta 4.4
# ignores any RETAIN but 0 and uses delta.deletedFileRetentionDuration unless told otherwise),
# and no 168 h floor (replaced by the config's check and the dry run's).
VACUUM_CONF = {"spark.databricks.delta.vacuum.retentionWindowIgnore.enabled": "false",
               "spark.databricks.delta.retentionDurationCheck.enabled": "false"}
# VACUUM lists the table directory with this many tasks (Spark's default, 10000, made a VACUUM
# of a small table on 2 cores take 100 s instead of 2 s).
LIST_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
MAX_FILE_SIZE = "spark.databricks.delta.optimize.maxFileSize"
_DS_DIR = re.compile(r"/ds=(\d{4}-\d{2}-\d{2})/")


@dataclass
class TableReport:
    """What maintenance did to one table (printed as JSON by ``mtf maintain``)."""

    table: str                       # lake table name
    path: str
    exists: bool = True
    files_before: int = 0            # active files before / after compaction
    files_after: int = 0
    compacted_from: str = ""         # first ds compacted ("" = every day, or not compacted)
    compaction_commit: int | None = None   # the OPTIMIZE commit's version (None: none made)
    pins: list[dict[str, Any]] = field(default_factory=list)
    retention_hours: int | None = None     # VACUUM's retention (None: not vacuumed)
    properties_set: dict[str, str] = field(default_factory=dict)
    files_deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def maintain(spark: "SparkSession", cfg: "MtfConfig") -> list[TableReport]:
    """Compact and vacuum every configured table; returns one report per table."""
    m = cfg.maintenance
    pins = configured_pins(cfg)
    if m.vacuum and m.pin_models:
        pins += recorded_pins(cfg.lake.path("models"), cfg.lake.path("serving"),
                              m.pin_models_days)
    reports = []
    for name in dict.fromkeys((*m.optimize, *(m.tables if m.vacuum else ()))):
        path = cfg.lake.path(name)
        report = TableReport(name, path)
        reports.append(report)
        if not _is_table(spark, path):
            logger.warning("maintenance: no Delta table %s at %s; skipped", name, path)
            report.exists = False
            continue
        report.files_before = report.files_after = _num_files(spark, path)
        if name in m.optimize:
            compact(spark, path, m, report)
        if m.vacuum and name in m.tables:
            key = table_key(path)
            vacuum(spark, path, [p for p in pins if p.table == key], m, report)
        logger.info("maintenance of %s: %s", name, json.dumps(report.to_dict(), sort_keys=True))
    return reports


# ---- OPTIMIZE --------------------------------------------------------------------------------

def compact(spark: "SparkSession", path: str, m: MaintenanceConfig, report: TableReport) -> None:
    """OPTIMIZE ``path`` (its last ``m.optimize_days`` ds partitions when it has them)."""
    from delta.tables import DeltaTable

    where = None
    if m.optimize_days and "ds" in _partition_columns(spark, path):
        days = sorted({d for u in delta_snapshot(path)[1] for d in _DS_DIR.findall(u)})
        if days:
            first = dt.date.fromisoformat(days[-1]) - dt.timedelta(days=m.optimize_days - 1)
            report.compacted_from = first.isoformat()
            where = f"ds >= '{first.isoformat()}'"
    conf = {MAX_FILE_SIZE: str(m.target_file_mb * 1024 * 1024)} if m.target_file_mb else {}
    before = table_version(spark, path)

    def attempt() -> None:
        builder = DeltaTable.forPath(spark, path).optimize()
        if where is not None:
            builder = builder.where(where)
        with session_conf(spark, conf):
            builder.executeCompaction()

    # A daily build writing the same partitions may win the commit; compaction is idempotent.
    retry_on_conflict(attempt, what=f"OPTIMIZE {path}", retries=m.commit_retries)
    after = table_version(spark, path)
    report.compaction_commit = after if after != before else None
    report.files_after = _num_files(spark, path)
    logger.info("OPTIMIZE %s%s: %d -> %d files%s", path, f" ({where})" if where else "",
                report.files_before, report.files_after,
                f" (version {after})" if after != before else " (nothing to compact)")


def _is_table(spark: "SparkSession", path: str) -> bool:
    from delta.tables import DeltaTable

    return is_delta_table(path) or ("://" in path and DeltaTable.isDeltaTable(spark, path))


def _num_files(spark: "SparkSession", path: str) -> int:
    return int(_detail(spark, path)["numFiles"])


def _partition_columns(spark: "SparkSession", path: str) -> list[str]:
    return list(_detail(spark, path)["partitionColumns"])


def _detail(spark: "SparkSession", path: str) -> Any:
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, path).detail().first()


# ---- VACUUM ----------------------------------------------------------------------------------

def vacuum(spark: "SparkSession", path: str, pins: Sequence[Pin], m: MaintenanceConfig,
           report: TableReport) -> None:
    """VACUUM ``path`` keeping every file of the ``pins`` (see the module docstring)."""
    now = time.time()
    kept = readable_pins(spark, path, pins)
    span_s = 3600.0 * m.retain_hours
    if kept:
        span_s = max(span_s, now - min(ts for _, ts in kept) + 3600.0 * m.pin_margin_hours)
    # Delta rounds the retention to whole hours: round up, which keeps more.
    hours = math.ceil(span_s / 3600.0 - 1e-9)
    report.pins = [{"version": p.version, "source": p.source} for p, _ in kept]
    report.properties_set = cover_history(spark, path, hours, m)

    # Files by name (part-<uuid>...: unique in a table), so that a file:/ or s3a:// spelling
    # from Spark matches the one from the deltalake package.
    first_pin = {p.version: p for p, _ in reversed(kept)}     # one pin per version
    pinned_files = {os.path.basename(u): (p, table_key(u))
                    for v, p in sorted(first_pin.items()) for u in delta_snapshot(path, v)[1]}
    statement = f"VACUUM delta.`{_sql_path(path)}` RETAIN {hours} HOURS"
    with session_conf(spark, {**VACUUM_CONF, LIST_PARALLELISM: str(
            m.list_parallelism or 4 * spark.sparkContext.defaultParallelism)}):
        doomed = [table_key(r["path"]) for r in spark.sql(f"{statement} DRY RUN").collect()]
        needed = [f for f in doomed if os.path.basename(f) in pinned_files]
        if needed:
            pin = pinned_files[os.path.basename(needed[0])][0]
            raise UserError(
                f"refusing to VACUUM {path!r}: {len(needed)} of the files it would delete belong "
                f"to pinned version {pin.version} ({pin.source}), whose removal Delta no longer "
                f"remembers (maintenance ran less often than every {HEADROOM_DAYS} days?); "
                f"nothing was deleted. Copy that version elsewhere if it is still needed, then "
                f"drop the pin, or leave {path!r} out of maintenance.tables")
        spark.sql(statement).collect()
    report.retention_hours = hours
    report.files_deleted = sum(1 for f in doomed if not _local_file_exists(f))
    missing = [f for _, f in pinned_files.values() if "://" not in f and not os.path.exists(f)]
    if missing:   # the dry run said otherwise: never expected, so not a user error
        raise RuntimeError(f"VACUUM of {path!r} deleted {len(missing)} files of pinned "
                           f"versions, e.g. {missing[0]}")
    logger.info("%s: %d files deleted; pinned versions kept: %s", statement,
                report.files_deleted, sorted({p.version for p, _ in kept}) or "none")


def _local_file_exists(path: str) -> bool:
    """Whether a local file exists (False for a remote URI: the dry run's count stands)."""
    return "://" not in path and os.path.exists(path)


def readable_pins(spark: "SparkSession", path: str, pins: Sequence[Pin]
                  ) -> list[tuple[Pin, float]]:
    """The pins with their commit times (epoch seconds).

    A configured pin the table does not have is the user's mistake (TableVersionError); a
    recorded one newer than the table, or one whose commit Delta's log no longer holds, cannot
    be protected any more and is only reported.
    """
    if not pins:
        return []
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    commits = {int(r["version"]): r["us"] / 1e6 for r in DeltaTable.forPath(spark, path)
               .history().select("version", F.unix_micros("timestamp").alias("us")).collect()}
    latest = max(commits)
    out = []
    for pin in pins:
        if pin.version in commits:
            out.append((pin, commits[pin.version]))
        elif pin.configured and pin.version > latest:
            raise TableVersionError(f"{pin.source}={pin.version} pins a version that Delta "
                                    f"table {path!r} does not have (its latest is {latest}); "
                                    f"set {pin.source} to a version <= {latest}",
                                    latest=latest)
        else:
            logger.warning("%s pins version %d of %s, which %s; it cannot be kept", pin.source,
                           pin.version, path, "is newer than the table (recreated?)"
                           if pin.version > latest else "Delta's log no longer holds")
    return out


def cover_history(spark: "SparkSession", path: str, span_hours: float,
                  m: MaintenanceConfig) -> dict[str, str]:
    """Raise the table's removal and log retention to cover ``span_hours`` (+ headroom) when
    they are shorter; returns the properties set (one commit, none when nothing changes)."""
    props = table_properties(spark, path)
    new_value = f"interval {math.ceil(span_hours / 24) + HEADROOM_DAYS} days"
    wanted = {}
    for key, default in DEFAULT_RETENTION_HOURS.items():
        current = interval_hours(props[key], key) if key in props else default
        if current < span_hours:
            wanted[key] = new_value
    if wanted:
        retry_on_conflict(lambda: set_table_properties(spark, path, wanted),
                          what=f"ALTER TABLE {path}", retries=m.commit_retries)
        logger.info("%s: set %s so that Delta keeps what the pinned versions need", path, wanted)
    return wanted


_UNIT_HOURS = {"week": 168.0, "day": 24.0, "hour": 1.0, "minute": 1 / 60, "second": 1 / 3600,
               "millisecond": 1 / 3.6e6}


def interval_hours(value: str, key: str) -> float:
    """Hours of a Delta interval property (``interval 7 days``, ``interval 1 week 2 hours``)."""
    parts = value.strip().lower().removeprefix("interval").split()
    try:
        if not parts or len(parts) % 2:
            raise ValueError(value)
        return sum(float(n) * _UNIT_HOURS[u.rstrip("s")] for n, u in zip(parts[::2], parts[1::2]))
    except (ValueError, KeyError):
        raise UserError(f"table property {key}={value!r} is not an interval like "
                        f"'interval 7 days'; fix it with ALTER TABLE ... SET TBLPROPERTIES"
                        ) from None


def run(cfg: "MtfConfig") -> int:
    """Entry point of ``mtf maintain``: one JSON line per table on stdout."""
    from pyspark.sql import SparkSession

    owned = SparkSession.getActiveSession() is None
    spark = get_spark("mtf-maintain", cfg.spark)
    try:
        for report in maintain(spark, cfg):
            print(json.dumps(report.to_dict(), sort_keys=True))
    finally:
        if owned:
            spark.stop()
    return 0
