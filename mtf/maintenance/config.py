"""The ``maintenance`` section (MaintenanceConfig). Owned by mtf.maintenance; docs/maintenance.md.

Tables are named as in the ``lake`` section (``raw_logs``, ``user_profiles``, ``quarantine``,
``transitions``), so a lake moved elsewhere keeps its maintenance settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mtf.configtools import check_non_negative

LAKE_TABLES = ("raw_logs", "user_profiles", "quarantine", "transitions")
# Delta's own floor for VACUUM's retention (delta.deletedFileRetentionDuration's default): below
# it, a job still reading a recent snapshot may lose files. Delta refuses shorter retentions
# unless spark.databricks.delta.retentionDurationCheck.enabled=false; mtf.maintenance.job
# replaces that check with this one and its own dry-run check of the pinned versions.
DELTA_MIN_RETENTION_HOURS = 168.0


@dataclass(frozen=True)
class MaintenanceConfig:
    tables: tuple[str, ...] = LAKE_TABLES   # tables VACUUMed (lake table names)
    # Tables compacted with OPTIMIZE ([] = none). Not the transitions table by default: the build
    # already writes etl.files_per_day files per day, and the trainer's petastorm shards are
    # row groups, which compaction into fewer files could bring below the number of ranks.
    optimize: tuple[str, ...] = ("raw_logs", "quarantine", "user_profiles")
    optimize_days: int = 0               # compact only the ds partitions of the table's last N
                                         # days (the days still being written); 0 = every day
    target_file_mb: int = 0              # OPTIMIZE's largest output file, MiB; 0 = Delta's 1 GiB
    vacuum: bool = True                  # false: compact only
    retain_hours: float = DELTA_MIN_RETENTION_HOURS  # files removed less than this ago stay
    allow_short_retention: bool = False  # true: retain_hours may be below 168 h (Delta's floor)
    pin_models: bool = True              # versions recorded by runs, checkpoints and exports
                                         # under lake.models (and the deployed policy) are pinned
    pin_models_days: float = 30.0        # ... when the record is younger than this (days; 0 =
                                         # every record); the deployed policy's always is
    pinned_versions: dict[str, tuple[int, ...]] = field(default_factory=dict)
                                         # more pins: table name -> versions (other consumers)
    pin_margin_hours: float = 1.0        # kept before the oldest pinned commit (clock skew)
    list_parallelism: int = 0            # tasks listing a table's files for VACUUM; 0 = 4 x
                                         # the cores (Spark's default is 10000)
    commit_retries: int = 3              # re-runs of OPTIMIZE / a property change on a Delta
                                         # commit conflict with a concurrent writer

    def __post_init__(self) -> None:
        for key, names in (("tables", self.tables), ("optimize", self.optimize),
                           ("pinned_versions", tuple(self.pinned_versions))):
            unknown = [n for n in names if n not in LAKE_TABLES]
            if unknown:
                raise ValueError(f"maintenance.{key} names unknown tables {unknown}; the lake's "
                                 f"tables are {list(LAKE_TABLES)}")
        check_non_negative("maintenance", optimize_days=self.optimize_days,
                           target_file_mb=self.target_file_mb, retain_hours=self.retain_hours,
                           pin_models_days=self.pin_models_days,
                           pin_margin_hours=self.pin_margin_hours,
                           list_parallelism=self.list_parallelism,
                           commit_retries=self.commit_retries)
        for name, versions in self.pinned_versions.items():
            if any(v < 0 for v in versions):
                raise ValueError(f"maintenance.pinned_versions.{name} must hold versions >= 0, "
                                 f"got {list(versions)}")
        if self.retain_hours < DELTA_MIN_RETENTION_HOURS and not self.allow_short_retention:
            raise ValueError(f"maintenance.retain_hours={self.retain_hours:g} is below Delta's "
                             f"floor of {DELTA_MIN_RETENTION_HOURS:g} h: a job reading a recent "
                             f"snapshot could lose its files; raise it, or set "
                             f"maintenance.allow_short_retention=true if no such job runs "
                             f"unpinned")
