"""`mtf simulate`: simulate impression logs and user profiles into Delta with Spark.

Users are cut into shards of ``sim.users_per_shard`` (by user number); one Spark task runs all
days of the shards it is given (``spark.range(n_shards).mapInArrow``) with the in-process
simulator of :mod:`mtf.sim.generate`. Every random number is keyed by ``(seed, shard, day)``, so
the logs are identical whatever ``sim.spark_partitions`` (or the cluster) is.

Writes (through :func:`mtf.delta.write_delta`, one atomic commit per table):

* ``lake.raw_logs``: the impression logs (:mod:`mtf.contract`), partitioned by ``ds``, written
  with ``replaceWhere`` on the simulated window ``start_date <= ds < start_date + n_days``:
  a re-run replaces exactly those days (idempotent) and keeps other days; a failed run commits
  nothing, so readers keep the previous version. Rows at or after the window's end (sessions
  running past the last midnight) are cut, so the table holds exactly the window.
* ``lake.user_profiles``: every simulated user, overwritten as a whole.

Run with:
  mtf simulate sim.n_users=20000 sim.n_days=3
  spark-submit --jars "$(mtf jars)" jobs/simulate.py sim.n_days=3
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from mtf import contract as S
from mtf.configtools import to_dict
from mtf.delta import is_delta_table, write_delta
from mtf.sim.config import SimConfig
from mtf.sim.generate import profiles_table, simulate_shard
from mtf.sim.world import World
from mtf.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)

_BATCH_ROWS = 65_536  # Arrow batch size handed back to Spark


@dataclass(frozen=True)
class SimulateResult:
    impressions_path: str
    impressions_version: int
    profiles_path: str
    profiles_version: int
    days: tuple[dt.date, ...]
    n_impressions: int
    n_users: int
    seconds: float


def window_predicate(sim: SimConfig) -> str:
    """``replaceWhere`` predicate of the simulated window (exactly the ds values written)."""
    start = sim.start
    end = start + dt.timedelta(days=sim.n_days)
    return f"{S.DS} >= '{start.isoformat()}' AND {S.DS} < '{end.isoformat()}'"


def n_partitions(spark: "SparkSession", sim: SimConfig) -> int:
    """Partitions of the simulation job: ``sim.spark_partitions`` or one per shard, at most
    4 x the default parallelism."""
    if sim.spark_partitions:
        return sim.spark_partitions
    return max(1, min(sim.n_shards, 4 * spark.sparkContext.defaultParallelism))


def _shard_ids(spark: "SparkSession", cfg: "MtfConfig", partitions: int | None) -> "DataFrame":
    """One row per simulation shard, spread over ``partitions`` (default :func:`n_partitions`)."""
    return spark.range(0, cfg.sim.n_shards,
                       numPartitions=partitions or n_partitions(spark, cfg.sim))


def _impression_batches(cfg: "MtfConfig", batches: Iterable[pa.RecordBatch],
                        day_counters: Sequence[Any] = ()) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: shard ids in, impression-log batches out (runs on executors).

    ``day_counters``: optional Spark accumulators, one per simulated day, that receive the
    number of rows of each ds (for progress logs; a retried task may count twice).
    """
    world = World.from_config(cfg)
    start = np.datetime64(cfg.sim.start_date, "D")
    for batch in batches:
        for shard in batch.column(0).to_pylist():
            for _, table in simulate_shard(world, int(shard)):
                if day_counters:
                    day = (table[S.DS].to_numpy() - start).astype(np.int64)
                    for d, n in enumerate(np.bincount(day, minlength=len(day_counters))):
                        if n:
                            day_counters[d].add(int(n))
                yield from table.to_batches(max_chunksize=_BATCH_ROWS)


def impressions_frame(spark: "SparkSession", cfg: "MtfConfig", partitions: int | None = None,
                      day_counters: Sequence[Any] = ()) -> "DataFrame":
    """The simulated impression logs as a (lazy) DataFrame in the contract schema."""
    return _shard_ids(spark, cfg, partitions).mapInArrow(
        lambda it: _impression_batches(cfg, it, day_counters),
        S.impression_log_schema(cfg.fusion.names))


def _profile_batches(cfg: "MtfConfig", batches: Iterable[pa.RecordBatch]
                     ) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: shard ids in, user-profile batches out (runs on executors)."""
    world = World.from_config(cfg)
    for batch in batches:
        for shard in batch.column(0).to_pylist():
            yield from profiles_table(world, int(shard)).to_batches(max_chunksize=_BATCH_ROWS)


def profiles_frame(spark: "SparkSession", cfg: "MtfConfig",
                   partitions: int | None = None) -> "DataFrame":
    """The simulated user profiles as a (lazy) DataFrame, built shard by shard on the
    executors like the impressions (the driver holds none of them, whatever sim.n_users)."""
    return _shard_ids(spark, cfg, partitions).mapInArrow(lambda it: _profile_batches(cfg, it),
                                                         S.user_profile_schema())


def write_profiles(spark: "SparkSession", cfg: "MtfConfig") -> int:
    """Overwrite ``lake.user_profiles`` with the simulated users; returns the table version."""

    return write_delta(profiles_frame(spark, cfg), cfg.lake.path("user_profiles"),
                       mode="overwrite")


def _properties(cfg: "MtfConfig") -> dict[str, str]:
    return {
        "mtf.source": "simulator",
        "mtf.sim.seed": str(cfg.seed),
        "mtf.sim.start_date": cfg.sim.start_date,
        "mtf.sim.n_days": str(cfg.sim.n_days),
        "mtf.fusion.tasks": json.dumps(list(cfg.fusion.names)),
        "mtf.sim.config": json.dumps(to_dict(cfg.sim), sort_keys=True, separators=(",", ":")),
    }


def simulate_to_delta(spark: "SparkSession", cfg: "MtfConfig",
                      partitions: int | None = None) -> SimulateResult:
    """Simulate ``cfg.sim`` and write both tables; see the module docstring."""

    World.from_config(cfg)  # validate the config on the driver before starting any task
    imp_path, prof_path = cfg.lake.path("raw_logs"), cfg.lake.path("user_profiles")
    days = tuple(cfg.sim.start + dt.timedelta(days=d) for d in range(cfg.sim.n_days))
    parts = partitions or n_partitions(spark, cfg.sim)
    logger.info("simulating %d users (%d shards, %d partitions) for %d days %s..%s, seed %d",
                cfg.sim.n_users, cfg.sim.n_shards, parts, len(days), days[0], days[-1], cfg.seed)
    t0 = time.perf_counter()
    prof_version = write_profiles(spark, cfg)
    predicate = window_predicate(cfg.sim) if is_delta_table(imp_path) else None
    counters = [spark.sparkContext.accumulator(0) for _ in days]
    imp_version = write_delta(impressions_frame(spark, cfg, parts, counters), imp_path,
                              mode="overwrite", partition_by=[S.DS], replace_where=predicate,
                              properties=_properties(cfg))
    seconds = time.perf_counter() - t0
    n_rows = sum(c.value for c in counters)
    for day, counter in zip(days, counters):
        logger.info("  ds=%s: %d impressions", day, counter.value)
    logger.info("wrote %d impressions over %d days in %.1f s (%.0f rows/s) to %s (version %d); "
                "%d user profiles to %s (version %d)", n_rows, len(days), seconds,
                n_rows / seconds if seconds > 0 else float("nan"), imp_path, imp_version,
                cfg.sim.n_users, prof_path, prof_version)
    return SimulateResult(impressions_path=imp_path, impressions_version=imp_version,
                          profiles_path=prof_path, profiles_version=prof_version, days=days,
                          n_impressions=n_rows, n_users=cfg.sim.n_users, seconds=seconds)


def run(cfg: "MtfConfig") -> int:
    """Entry point of ``mtf simulate`` (and jobs/simulate.py)."""
    from pyspark.sql import SparkSession

    World.from_config(cfg)  # fail on a bad config before starting the JVM
    owned = SparkSession.getActiveSession() is None
    spark = get_spark("mtf-simulate", cfg.spark)
    try:
        simulate_to_delta(spark, cfg)
    finally:
        if owned:  # leave a session we were handed (tests, the pipeline) running
            spark.stop()
    return 0
