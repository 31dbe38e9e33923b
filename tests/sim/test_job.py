"""The Spark job (`mtf simulate`): same logs whatever the partitioning, idempotent Delta writes.

One module fixture runs the job twice on a tiny world (Delta writes dominate the cost):
``run(cfg)`` with the default partitioning (one partition per shard), then a run of a window
shifted by one day (other seed) on a single partition. Both must equal the in-process
simulator, which is partition-free by construction, and the second must replace exactly its
own days.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from mtf.config import MtfConfig, load_config
from mtf.delta import read_delta, table_properties, table_version
from mtf import contract as S
from mtf.sim.generate import SimLogs, simulate_logs
from mtf.sim.job import SimulateResult, run, simulate_to_delta, window_predicate
from mtf.sim.world import World


def _cfg(root: str, *extra: str) -> MtfConfig:
    return load_config(None, [f"lake.root={root}", "spark.shuffle_partitions=2",
                              "sim.n_users=60", "sim.users_per_shard=20", "sim.n_days=2",
                              "sim.start_date='2026-02-27'", "sim.catalog.n_items=1000",
                              *extra])


def _canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Comparable form of an impression frame from Spark (naive UTC ts) or Arrow (tz-aware)."""
    out = df.sort_values(S.EVENT_ID).reset_index(drop=True).copy()
    ts = out[S.TS]
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    out[S.TS] = ts.astype("datetime64[us]").astype("int64")
    out[S.DS] = out[S.DS].astype(str)
    out[S.FUSION_WEIGHTS] = out[S.FUSION_WEIGHTS].map(tuple)
    for col in (S.EXPLORE_GROUP, S.APP_SESSION_ID):
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    for col in (S.POSITION, *S.INTERACTION_COLUMNS):
        out[col] = out[col].astype("int32")
    return out


@dataclass
class Runs:
    cfg: MtfConfig
    later_cfg: MtfConfig
    first_version: int
    later: SimulateResult
    local: SimLogs
    later_local: SimLogs


# Delta rebuilds table snapshots with 50 tasks by default: slow for tiny tables on 2 cores.
SNAPSHOT_PARTITIONS = "spark.databricks.delta.snapshotPartitions"


@pytest.fixture(scope="module")
def runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    before = spark.conf.get(SNAPSHOT_PARTITIONS, None)
    spark.conf.set(SNAPSHOT_PARTITIONS, "2")
    try:
        root = str(tmp_path_factory.mktemp("simlake"))
        cfg = _cfg(root)                                   # ds 02-27, 02-28; 3 shards
        assert run(cfg) == 0                               # -> 3 partitions
        first_version = table_version(spark, cfg.lake.path("raw_logs"))
        later_cfg = _cfg(root, "sim.start_date='2026-02-28'", "seed=8")   # ds 02-28, 03-01
        later = simulate_to_delta(spark, later_cfg, partitions=1)
        yield Runs(cfg, later_cfg, first_version, later, simulate_logs(World.from_config(cfg)),
                   simulate_logs(World.from_config(later_cfg)))
    finally:
        if before is None:
            spark.conf.unset(SNAPSHOT_PARTITIONS)
        else:
            spark.conf.set(SNAPSHOT_PARTITIONS, before)


def _ds(df: pd.DataFrame) -> pd.Series:
    return df[S.DS].astype(str)


def test_table_layout(spark: SparkSession, runs: Runs) -> None:
    path = runs.cfg.lake.path("raw_logs")
    table = read_delta(spark, path)
    # Delta stores every column as nullable; types and order are the contract's.
    assert [(f.name, f.dataType.simpleString()) for f in table.schema] == \
        [(f.name, f.dataType.simpleString())
         for f in S.impression_log_schema(runs.cfg.fusion.names)]
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()
    assert list(detail["partitionColumns"]) == [S.DS]
    assert table_properties(spark, path)["mtf.sim.seed"] == "8"


def test_three_partitions_write_the_in_process_logs(spark: SparkSession, runs: Runs) -> None:
    got = read_delta(spark, runs.cfg.lake.path("raw_logs"), version=runs.first_version)
    want = _canonical(runs.local.impressions.to_pandas())
    pd.testing.assert_frame_equal(_canonical(got.toPandas()), want, check_exact=True)


def test_one_partition_writes_the_in_process_logs(spark: SparkSession, runs: Runs) -> None:
    path = runs.cfg.lake.path("raw_logs")
    got = read_delta(spark, path, version=runs.later.impressions_version)
    got = got.where(window_predicate(runs.later_cfg.sim)).toPandas()
    want = _canonical(runs.later_local.impressions.to_pandas())
    assert runs.later.n_impressions == len(want)
    pd.testing.assert_frame_equal(_canonical(got), want, check_exact=True)
    profiles = read_delta(spark, runs.cfg.lake.path("user_profiles")).toPandas()
    pd.testing.assert_frame_equal(profiles.sort_values(S.USER_ID).reset_index(drop=True),
                                  runs.later_local.profiles.to_pandas(), check_exact=True)


def test_a_rerun_replaces_exactly_its_days(spark: SparkSession, runs: Runs) -> None:
    table = read_delta(spark, runs.cfg.lake.path("raw_logs")).toPandas()
    counts = _ds(table).value_counts().to_dict()
    assert sorted(counts) == ["2026-02-27", "2026-02-28", "2026-03-01"]
    old = runs.local.impressions.to_pandas()
    kept = table[_ds(table) == "2026-02-27"]
    pd.testing.assert_frame_equal(_canonical(kept), _canonical(old[_ds(old) == "2026-02-27"]),
                                  check_exact=True)
    new = runs.later_local.impressions.to_pandas()
    assert counts["2026-02-28"] == (_ds(new) == "2026-02-28").sum()
    assert window_predicate(runs.later_cfg.sim) == "ds >= '2026-02-28' AND ds < '2026-03-02'"


def test_a_bad_config_fails_before_spark_starts(tmp_path: Path) -> None:
    cfg = _cfg(str(tmp_path), "serving.baseline_action=[0.1, 0.2]")
    with pytest.raises(ValueError, match=r"baseline_action has 2 values"):
        run(cfg)
    assert not np.any([p.exists() for p in tmp_path.iterdir()])
