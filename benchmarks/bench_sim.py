"""Benchmark the simulator: impressions generated per second, in-process and through Spark.

Run with:
  .venv/bin/python benchmarks/bench_sim.py --json benchmarks/results/bench_sim.json  # 20k x 3
  .venv/bin/python benchmarks/bench_sim.py --users 95000 --no-in-process   # ~10M rows, Spark
  .venv/bin/python benchmarks/bench_sim.py --no-spark
  .venv/bin/python benchmarks/bench_sim.py --smoke     # 200 users x 1 day: does it still run?

In-process: one Python process simulates the shards one after another (single core).
Spark: `mtf.sim.job.simulate_to_delta` on ``local[N]`` (all cores), i.e. simulation in
``mapInArrow`` tasks plus the Delta write of both tables; "Spark, no write" counts the
simulated rows without writing. Figures are printed and written with ``--json``;
docs/simulator.md records them.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Sequence

from result import add_result_arguments, parse_with_smoke, write_result

if TYPE_CHECKING:
    from mtf.config import MtfConfig


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000, help="sim.n_users (default 20000)")
    p.add_argument("--days", type=int, default=3, help="sim.n_days (default 3)")
    p.add_argument("--users-per-shard", type=int, default=1000,
                   help="sim.users_per_shard (default 1000)")
    p.add_argument("--master", type=str, default="local[2]", help="Spark master (local[2])")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the in-process benchmark (default on)")
    p.add_argument("--spark", action=argparse.BooleanOptionalAction, default=True,
                   help="run the Spark benchmarks (default on)")
    p.add_argument("--lake", type=str, default=None,
                   help="lake root for the Spark run (default: a temporary directory)")
    add_result_arguments(p)
    return parse_with_smoke(p, argv, SMOKE)


SMOKE = {"users": 200, "days": 1, "users_per_shard": 100}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from mtf.config import load_config
    from mtf.log import setup_logging

    setup_logging("WARNING")
    lake = args.lake or tempfile.mkdtemp(prefix="mtf-bench-")
    cfg = load_config(None, [
        f"lake.root={lake}", f"sim.n_users={args.users}", f"sim.n_days={args.days}",
        f"sim.users_per_shard={args.users_per_shard}", f"spark.master={args.master}",
        "spark.driver_memory=6g",
        'spark.conf={"spark.databricks.delta.snapshotPartitions": "2", '
        '"spark.ui.enabled": "false"}'])
    print(f"config: {args.users} users x {args.days} days, {cfg.sim.n_shards} shards of "
          f"{args.users_per_shard}; cores: {os.cpu_count()}; load average: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    figures: dict[str, float] = {}
    in_rate = None
    if args.in_process:
        rows, secs = bench_in_process(cfg)
        in_rate = rows / secs
        figures.update({"in_process_impressions": rows, "in_process_s": secs,
                        "in_process_impressions_per_s": in_rate})
    if args.spark:
        figures.update(bench_spark(cfg, in_rate))
    if args.lake is None:
        shutil.rmtree(lake, ignore_errors=True)
    write_result(args.json, "bench_sim", figures, vars(args), args.smoke,
                 {"n_shards": cfg.sim.n_shards})
    return 0


def bench_in_process(cfg: MtfConfig) -> tuple[int, float]:
    from mtf.sim.generate import simulate_shard
    from mtf.sim.world import World

    world = World.from_config(cfg)
    t0 = time.perf_counter()
    rows = 0
    for shard in range(cfg.sim.n_shards):
        for _, table in simulate_shard(world, shard):
            rows += table.num_rows
    secs = time.perf_counter() - t0
    rate = rows / secs
    print(f"in-process (1 core):           {rows:>11,d} impressions in {secs:7.1f} s = "
          f"{rate:>9,.0f} impressions/s")
    return rows, secs


def bench_spark(cfg: MtfConfig, in_rate: float | None) -> dict[str, float]:
    from mtf.sim.job import impressions_frame, simulate_to_delta
    from mtf.spark import get_spark

    t0 = time.perf_counter()
    spark = get_spark("mtf-bench-sim", cfg.spark)
    start_s = time.perf_counter() - t0
    print(f"Spark session start:           {start_s:7.1f} s")
    try:
        t0 = time.perf_counter()
        rows = impressions_frame(spark, cfg).count()
        secs = time.perf_counter() - t0
        figures = {"spark_start_s": start_s,
                   **_report("Spark, no write", "spark_count", rows, secs, in_rate)}
        result = simulate_to_delta(spark, cfg)
        figures.update(_report("Spark + Delta write (both tables)", "spark_write",
                               result.n_impressions, result.seconds, in_rate))
    finally:
        spark.stop()
    return figures


def _report(what: str, key: str, rows: int, secs: float,
            in_rate: float | None) -> dict[str, float]:
    rate = rows / secs
    ratio = f" ({rate / in_rate:.2f} x in-process)" if in_rate else ""
    print(f"{what + ':':<31s}{rows:>11,d} impressions in {secs:7.1f} s = {rate:>9,.0f} "
          f"impressions/s{ratio}")
    figures = {f"{key}_impressions": rows, f"{key}_s": secs, f"{key}_impressions_per_s": rate}
    if in_rate:
        figures[f"ratio_{key}_over_in_process"] = rate / in_rate
    return figures


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
