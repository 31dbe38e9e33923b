"""``mtf maintain`` on real Delta tables: OPTIMIZE compacts and keeps every row; VACUUM deletes
the files of unpinned old versions and keeps every pinned version readable; re-runs change
nothing; a pin that can no longer be honoured stops the job before anything is deleted."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from mtf.config import load_config
from mtf.configtools import ConfigError
from mtf.delta import active_file_uris, read_delta, set_table_properties, table_version
from mtf.errors import TableVersionError, TableVersionGoneError, UserError
from mtf.maintenance.job import interval_hours, maintain
from mtf.maintenance.pins import recorded_pins, table_key

SHORT = ["maintenance.retain_hours=0", "maintenance.allow_short_retention=true",
         "maintenance.pin_margin_hours=0"]


def _cfg(root: Any, *overrides: str) -> Any:
    return load_config(None, [f"lake.root={root}", *overrides])


def _rows(spark: Any, path: str, version: int | None = None) -> list[tuple[Any, ...]]:
    return sorted(tuple(r) for r in read_delta(spark, path, version).collect())


def _write(spark: Any, path: str, ids: range, mode: str) -> int:
    """One Delta commit of rows ``(id, ds)``, ``ds`` alternating over two days, one file per
    day. Written by delta-rs (the ``deltalake`` package): a real Delta commit that Spark's
    maintenance then works on, without a Spark job per test write."""
    import datetime as dt

    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    days = [dt.date(2026, 1, 1) + dt.timedelta(days=i % 2) for i in ids]
    write_deltalake(path, pa.table({"id": pa.array(list(ids), pa.int64()),
                                    "ds": pa.array(days, pa.date32())}),
                    mode=mode, partition_by=["ds"])  # type: ignore[arg-type]
    return int(DeltaTable(path).version())


def _spark_write(spark: Any, path: str, ids: range, mode: str, files: int = 2) -> int:
    """The same rows written by Spark (``files`` tasks, so up to ``files`` files per day)."""
    from pyspark.sql import functions as F

    from mtf.delta import write_delta

    df = (spark.range(ids.start, ids.stop, numPartitions=files)
          .withColumn("ds", F.expr("date_add(DATE'2026-01-01', CAST(id % 2 AS INT))")))
    return write_delta(df, path, mode=mode, partition_by=["ds"])


def _local(uri: str) -> str:
    return table_key(uri)


def test_optimize_compacts_small_files_keeps_rows_and_reruns_as_noop(spark, tmp_path) -> None:
    cfg = _cfg(tmp_path, "maintenance.optimize=[raw_logs]", "maintenance.vacuum=false")
    path = cfg.lake.path("raw_logs")
    for i in range(3):   # 3 appends x 2 days = 6 small files
        _write(spark, path, range(10 * i, 10 * i + 10), "append" if i else "overwrite")
    rows, version = _rows(spark, path), table_version(spark, path)

    (report,) = maintain(spark, cfg)
    assert (report.table, report.files_before, report.files_after) == ("raw_logs", 6, 2)
    assert report.compaction_commit == version + 1 and report.retention_hours is None
    assert _rows(spark, path) == rows == [(i, _day(i)) for i in range(30)]

    (again,) = maintain(spark, cfg)           # nothing left to compact: no commit
    assert (again.files_before, again.files_after, again.compaction_commit) == (2, 2, None)
    assert table_version(spark, path) == version + 1 and _rows(spark, path) == rows


def _day(i: int) -> Any:
    import datetime as dt
    return dt.date(2026, 1, 1) + dt.timedelta(days=i % 2)


def test_optimize_days_compacts_only_the_last_days(spark, tmp_path) -> None:
    cfg = _cfg(tmp_path, "maintenance.optimize=[quarantine]", "maintenance.vacuum=false",
               "maintenance.optimize_days=1")
    path = cfg.lake.path("quarantine")
    for i in range(3):   # 3 files per day
        _write(spark, path, range(10 * i, 10 * i + 10), "append" if i else "overwrite")
    (report,) = maintain(spark, cfg)
    assert report.compacted_from == "2026-01-02"
    assert (report.files_before, report.files_after) == (6, 3 + 1)
    per_day = [u for u in active_file_uris(path) if "/ds=2026-01-01/" in u]
    assert len(per_day) == 3 and len(_rows(spark, path)) == 30


def _age(spark: Any, path: str, hours_ago: dict[int, float]) -> None:
    """Move commits back in time as if version v had been committed ``hours_ago[v]`` hours ago:
    its commit file's time (Delta's commit timestamp), the time its removals were recorded and
    the files it added. VACUUM's retention is counted in whole hours, so a test cannot wait for
    it; Delta's own tests move its clock instead, which Python cannot reach. The table stays a
    real Delta table; Delta's cached snapshots are dropped afterwards."""
    from urllib.parse import unquote

    for version, hours in hours_ago.items():
        t = time.time() - 3600.0 * hours
        commit = os.path.join(path, "_delta_log", f"{version:020d}.json")
        with open(commit) as fh:
            actions = [json.loads(line) for line in fh]
        for action in actions:
            if "remove" in action:
                action["remove"]["deletionTimestamp"] = int(t * 1000)
            if "add" in action:
                action["add"]["modificationTime"] = int(t * 1000)
                os.utime(os.path.join(path, unquote(action["add"]["path"])), (t, t))
            if "commitInfo" in action:
                action["commitInfo"]["timestamp"] = int(t * 1000)
        with open(commit, "w") as fh:
            fh.write("".join(json.dumps(a) + "\n" for a in actions))
        os.utime(commit, (t, t))
        # Hadoop's local file system checks a hidden checksum file written beside each file.
        sidecar = os.path.join(os.path.dirname(commit), f".{os.path.basename(commit)}.crc")
        if os.path.exists(sidecar):
            os.remove(sidecar)
    spark.sparkContext._jvm.org.apache.spark.sql.delta.DeltaLog.clearCache()


def test_vacuum_keeps_pinned_versions_and_deletes_unpinned_files(spark, tmp_path) -> None:
    cfg = _cfg(tmp_path, "maintenance.tables=[transitions]", "maintenance.optimize=[]",
               "train.table_version=2", *SHORT)
    path = cfg.lake.path("transitions")
    _write(spark, path, range(0, 10), "overwrite")         # v0: A
    _write(spark, path, range(10, 20), "overwrite")        # v1: B (A removed)
    _write(spark, path, range(20, 30), "append")           # v2: B + C, pinned
    _write(spark, path, range(30, 40), "overwrite")        # v3: D (B and C removed)
    _age(spark, path, {0: 30, 1: 20, 2: 10})               # v3: now
    pinned_rows = _rows(spark, path, 2)
    v0_files = [_local(u) for u in active_file_uris(path, 0)]
    v2_files = [_local(u) for u in active_file_uris(path, 2)]

    (report,) = maintain(spark, cfg)
    assert report.pins == [{"version": 2, "source": "train.table_version"}]
    assert report.retention_hours == 11      # back to v2's commit, in whole hours rounded up
    assert report.properties_set == {}       # Delta's defaults (7 and 30 days) cover 11 h
    assert report.files_deleted == len(v0_files) == 2
    assert not any(os.path.exists(f) for f in v0_files)      # unpinned and older: gone
    assert all(os.path.exists(f) for f in v2_files)
    assert _rows(spark, path, 2) == pinned_rows == [(i, _day(i)) for i in range(10, 30)]

    (again,) = maintain(spark, cfg)          # idempotent: nothing more to delete
    assert again.files_deleted == 0 and again.properties_set == {}
    assert _rows(spark, path, 2) == pinned_rows
    assert _rows(spark, path) == [(i, _day(i)) for i in range(30, 40)]

    # Unpinned, the same policy deletes v2's files too (retain_hours=0).
    (unpinned,) = maintain(spark, _cfg(tmp_path, "maintenance.tables=[transitions]",
                                       "maintenance.optimize=[]", *SHORT))
    assert unpinned.pins == [] and unpinned.retention_hours == 0
    assert unpinned.files_deleted == len(v2_files) == 4
    assert _rows(spark, path) == [(i, _day(i)) for i in range(30, 40)]


def test_a_checkpoint_pins_the_version_it_trained_on(spark, tmp_path) -> None:
    cfg = _cfg(tmp_path, "maintenance.tables=[transitions]", "maintenance.optimize=[]", *SHORT)
    path = cfg.lake.path("transitions")
    _write(spark, path, range(0, 10), "overwrite")         # v0, pinned by a checkpoint
    _write(spark, path, range(10, 20), "overwrite")        # v1
    _age(spark, path, {0: 30, 1: 20})
    ckpt = _checkpoint(cfg.lake.path("models"), "run-a", path, version=0)

    (report,) = maintain(spark, cfg)
    assert report.pins == [{"version": 0, "source": ckpt}]
    assert (report.retention_hours, report.files_deleted) == (31, 0)
    assert _rows(spark, path, 0) == [(i, _day(i)) for i in range(10)]

    (unpinned,) = maintain(spark, _cfg(tmp_path, "maintenance.tables=[transitions]",
                                       "maintenance.optimize=[]",
                                       "maintenance.pin_models=false", *SHORT))
    assert unpinned.pins == [] and unpinned.files_deleted == 2


def _checkpoint(models: str, run: str, table: str, version: int) -> str:
    import torch

    from mtf.rl.batch import Normalizer
    from mtf.rl.checkpoint import Checkpoint, save_checkpoint
    from mtf.rl.layout import ActionSpace, TableLayout

    ckpt = Checkpoint(step=1, algo="bc", state_dim=1, action_dim=1, seed=0, gamma=0.9,
                      train_config={}, layout=TableLayout(table, version, ("f",), "v", ("t",)),
                      action_space=ActionSpace(("t",), (0.0,), (1.0,)),
                      normalizer=Normalizer(torch.zeros(1), torch.ones(1)), agent={})
    return save_checkpoint(ckpt, os.path.join(models, run), keep=1)


def test_recorded_pins_age_out_except_the_deployed_policy(tmp_path) -> None:
    models, serving = tmp_path / "models", tmp_path / "serving"
    table = str(tmp_path / "lake" / "transitions")

    def export(run: str, version: int, age_days: float) -> str:
        d = models / run / "export"
        d.mkdir(parents=True)
        (d / "policy.json").write_text(json.dumps({"table_path": table,
                                                   "table_version": version}))
        old = time.time() - age_days * 86_400
        os.utime(d / "policy.json", (old, old))
        return str(d)

    export("fresh", 5, age_days=1)
    deployed = export("deployed", 3, age_days=90)
    export("stale", 1, age_days=90)
    serving.mkdir()
    (serving / "current.json").write_text(json.dumps({"source": deployed}))

    pins = recorded_pins(str(models), str(serving), max_age_days=30)
    assert sorted((p.version, p.table) for p in pins) == [(3, table_key(table)),
                                                          (5, table_key(table))]
    assert {p.version for p in recorded_pins(str(models), str(serving), 0)} == {1, 3, 5}

    (models / "broken").mkdir()
    (models / "broken" / "run.json").write_text("{not json")
    with pytest.raises(UserError, match=r"broken/run.json.*maintenance.pin_models=false"):
        recorded_pins(str(models), str(serving), max_age_days=30)


def test_a_pin_delta_has_forgotten_stops_vacuum_before_deleting(spark, tmp_path) -> None:
    """Delta dropped the removal records of the pinned version's files (its checkpoint was
    written while delta.deletedFileRetentionDuration was 1 s): the dry run shows VACUUM would
    delete them, so the job refuses and deletes nothing."""
    cfg = _cfg(tmp_path, "maintenance.tables=[transitions]", "maintenance.optimize=[]",
               "ope.table_version=1", *SHORT)
    path = cfg.lake.path("transitions")
    # Spark's writes: its commit of v3 writes the checkpoint that forgets A's removal
    _spark_write(spark, path, range(0, 10), "overwrite")                # v0: A
    set_table_properties(spark, path, {"delta.deletedFileRetentionDuration": "interval 1 second",
                                       "delta.checkpointInterval": "1"})  # v1, pinned: A
    pinned = [_local(u) for u in active_file_uris(path, 1)]
    _spark_write(spark, path, range(10, 20), "overwrite")               # v2: A removed
    time.sleep(1.5)
    _spark_write(spark, path, range(20, 30), "append")  # v3, checkpoint without A's removal
    _age(spark, path, {0: 30, 1: 20})

    with pytest.raises(UserError, match=r"refusing to VACUUM .*: 4 of the files it would "
                                        r"delete belong to pinned version 1 "
                                        r"\(ope.table_version\).*nothing was deleted"):
        maintain(spark, cfg)
    assert all(os.path.exists(f) for f in pinned)


def test_a_configured_pin_the_table_lacks_is_a_user_error(spark, tmp_path) -> None:
    cfg = _cfg(tmp_path, "maintenance.tables=[transitions]", "maintenance.optimize=[]",
               "train.table_version=7")
    _write(spark, cfg.lake.path("transitions"), range(0, 4), "overwrite")
    with pytest.raises(TableVersionError, match=r"train.table_version=7 pins a version that "
                                                r".* \(its latest is 0\); set "
                                                r"train.table_version to a version <= 0"):
        maintain(spark, cfg)


def test_a_pin_older_than_a_week_becomes_readable_again(spark, tmp_path) -> None:
    """Delta refuses time travel beyond delta.deletedFileRetentionDuration (7 days by default):
    a version pinned 10 days ago cannot be read until maintenance raises the property."""
    cfg = _cfg(tmp_path, "maintenance.tables=[transitions]", "maintenance.optimize=[]",
               "ope.table_version=0")
    path = cfg.lake.path("transitions")
    _write(spark, path, range(0, 10), "overwrite")         # v0, pinned
    _write(spark, path, range(10, 20), "overwrite")        # v1
    _age(spark, path, {0: 240, 1: 230})
    with pytest.raises(TableVersionGoneError, match=r"TIME_TRAVEL_BEYOND_DELETED_FILE_RETENTION_"
                                                    r"DURATION\): it is older than .* run `mtf "
                                                    r"maintain` with the version pinned"):
        _rows(spark, path, 0)

    (report,) = maintain(spark, cfg)
    # 240 h (and the seconds since; the log keeps milliseconds, so possibly none) back to
    # v0's commit + the 1 h margin, rounded up: 241 or 242 h; the log's 30 days cover that
    assert report.retention_hours in (241, 242) and report.files_deleted == 0
    assert report.properties_set == {"delta.deletedFileRetentionDuration": "interval 18 days"}
    assert _rows(spark, path, 0) == [(i, _day(i)) for i in range(10)]
    (again,) = maintain(spark, cfg)
    assert again.properties_set == {} and again.files_deleted == 0


def test_a_long_retention_raises_the_tables_history_retention(spark, tmp_path) -> None:
    """A retention longer than Delta's memory of removals (7 days) and of its log (30 days)
    raises both table properties (else VACUUM would delete files removed 7+ days ago anyway)."""
    cfg = _cfg(tmp_path, "maintenance.tables=[user_profiles]", "maintenance.optimize=[]",
               "maintenance.retain_hours=1000")
    path = cfg.lake.path("user_profiles")
    _write(spark, path, range(0, 4), "overwrite")
    (report,) = maintain(spark, cfg)
    assert report.properties_set == {"delta.deletedFileRetentionDuration": "interval 49 days",
                                     "delta.logRetentionDuration": "interval 49 days"}
    assert report.retention_hours == 1000
    (again,) = maintain(spark, cfg)
    assert again.properties_set == {}


def test_config_names_tables_and_guards_short_retention() -> None:
    with pytest.raises(ConfigError, match=r"maintenance.tables names unknown tables \['logs'\]"):
        load_config(None, ["maintenance.tables=[logs]"])
    with pytest.raises(ConfigError, match=r"retain_hours=24 is below Delta's floor of 168 h.*"
                                          r"allow_short_retention=true"):
        load_config(None, ["maintenance.retain_hours=24"])
    cfg = load_config(None, ["maintenance.retain_hours=24",
                             "maintenance.allow_short_retention=true"])
    assert cfg.maintenance.retain_hours == 24.0
    assert interval_hours("interval 1 week 12 hours", "k") == 180.0
    with pytest.raises(UserError, match="not an interval"):
        interval_hours("7d", "delta.logRetentionDuration")


def test_mtf_maintain_prints_one_json_line_per_table(spark, tmp_path, capsys) -> None:
    from mtf.cli import main

    lake = f"lake.root={tmp_path}"
    raw_logs = _cfg(tmp_path).lake.path("raw_logs")
    _write(spark, raw_logs, range(0, 4), "overwrite")
    _write(spark, raw_logs, range(4, 8), "append")           # 2 files a day: compacted
    assert main(["maintain", lake, "maintenance.tables=[raw_logs, quarantine]",
                 "maintenance.optimize=[raw_logs]"]) == 0
    out = capsys.readouterr().out
    raw, quarantine = (json.loads(line) for line in out.splitlines())
    assert (raw["table"], raw["exists"], raw["files_before"], raw["files_after"]) == (
        "raw_logs", True, 4, 2)
    assert raw["retention_hours"] == 168 and raw["files_deleted"] == 0
    assert (quarantine["table"], quarantine["exists"]) == ("quarantine", False)

    assert main(["maintain", lake, "maintenance.retain_hours=24"]) == 2    # a user mistake
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtf maintain: error: ") and "allow_short_retention=true" in err
    assert len(err.splitlines()) == 1
