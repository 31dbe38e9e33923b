"""Benchmark the billion-row path: cost per million impressions of each stage, and driver peaks.

For each size N (impressions; default 5M, 15M, 50M) a fresh process runs, on one lake:

  simulate   `mtf simulate`'s Spark job (:func:`mtf.sim.job.simulate_to_delta`), sized by
             ``sim.n_users`` for ``--days`` days (impressions grow linearly with users, about
             IMPRESSIONS_PER_USER_DAY each per day with the default world);
  build      :func:`mtf.etl.pipeline.run_build_transitions`, a full rebuild;
  loader     one epoch of the trainer's petastorm source over the train split
             (:class:`mtf.rl.loader.PetastormSource`, as ``mtf train`` builds it): rows are
             counted, nothing is trained;
  ope        the OPE's Spark pass over the test split for the logging baseline and one fixed
             policy, as :func:`mtf.ope.job.evaluate_table` runs it (score_transitions ->
             session_statistics_df -> bootstrap_sums_df -> collect_sums). The FQE networks it
             scores with are fitted first on a small sample, untimed: that fit's cost does not
             grow with the table.

Per stage it records seconds, seconds per million impressions, and the peak resident memory
of the Python driver and of the JVM (local mode: driver and executors) while the stage ran
(VmHWM, reset before each stage through /proc/<pid>/clear_refs). Figures are ratios within one
run: per stage, cost per million at the largest size / at the smallest (goal <= 1.2, i.e.
linear), and the driver's peak at the largest size / at the smallest (goal: flat).

``--in-process`` (the default of ``--smoke``) runs the sizes one after another in this process
on one SparkSession instead, to skip a JVM start-up per size: the same stages and record, but
the peaks then carry the earlier sizes' heap, so they are not meaningful in that mode.

Run with:
  .venv/bin/python benchmarks/bench_scale.py --json benchmarks/results/bench_scale.json
  .venv/bin/python benchmarks/bench_scale.py --sizes 500000 1500000 5000000 --json ...
  .venv/bin/python benchmarks/bench_scale.py --smoke      # tiny sizes, the same code paths
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_fqe_scale import _peak_kib, _reset_peak  # noqa: E402
from result import add_result_arguments, parse_with_smoke, write_result  # noqa: E402

STAGES = ("simulate", "build", "loader", "ope")
# Impressions per simulated user and day with the default world (benchmarks/results/
# bench_sim.json: 2,173,674 for 20,000 users x 3 days). Only sizes the runs: every figure uses
# the impressions actually simulated.
IMPRESSIONS_PER_USER_DAY = 36.2
SMOKE = {"sizes": [4000, 8000], "days": 1, "users_per_shard": 500, "fit_rows": 500,
         "fit_iterations": 20, "n_bootstrap": 20, "set": ["sim.catalog.n_items=500"],
         "in_process": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[5_000_000, 15_000_000, 50_000_000],
                   metavar="N", help="target impressions per size (default 5M 15M 50M)")
    p.add_argument("--days", type=int, default=1, help="sim.n_days (default 1: a day's logs)")
    p.add_argument("--users-per-shard", type=int, default=1000, help="sim.users_per_shard")
    p.add_argument("--master", type=str, default="local[2]", help="Spark master (local[2])")
    p.add_argument("--partitions-per-million", type=float, default=1.0,
                   help="spark.shuffle_partitions grows with the size, as an operator sets it: "
                        "this many per million impressions, at least the config's (8); 0 = "
                        "the config's at every size")
    p.add_argument("--fit-rows", type=int, default=20_000,
                   help="rows of the untimed FQE fit the OPE pass scores with")
    p.add_argument("--fit-iterations", type=int, default=200, help="its FQE steps")
    p.add_argument("--n-bootstrap", type=int, default=0,
                   help="ope.n_bootstrap of the OPE pass (0: the config's)")
    p.add_argument("--set", type=str, nargs="*", default=[], metavar="KEY=VALUE",
                   help="more config overrides for every size (e.g. sim.catalog.n_items=2000)")
    p.add_argument("--workdir", type=str, default="", help="keep the lakes here (default: a "
                   "temporary directory, removed at the end)")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=False,
                   help="run the sizes in this process on one SparkSession (peaks not "
                        "meaningful; the default of --smoke)")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--lake", type=str, default="", help=argparse.SUPPRESS)
    add_result_arguments(p)
    return parse_with_smoke(p, argv, SMOKE)


def n_users(impressions: int, days: int) -> int:
    return max(1, math.ceil(impressions / (IMPRESSIONS_PER_USER_DAY * days)))


# ---- peaks -----------------------------------------------------------------------------------

def measured(stage: str, jvm_pid: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one stage: its seconds, its own figures, and the peaks of both processes during it."""
    me = os.getpid()
    _reset_peak(me)
    _reset_peak(jvm_pid)
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    out.update(seconds=seconds, python_peak_mib=_peak_kib(me) / 1024,
               jvm_peak_mib=_peak_kib(jvm_pid) / 1024)
    print(f"  {stage:9s} {seconds:8.1f} s  python peak {out['python_peak_mib']:6.0f} MiB  "
          f"JVM peak {out['jvm_peak_mib']:6.0f} MiB", file=sys.stderr, flush=True)
    return out


# ---- one size, in its own process (or --in-process, in this one) -----------------------------

def size_config(target: int, lake: str, args: argparse.Namespace) -> Any:
    """The config of one size: its lake and users; the Spark settings are the same for all."""
    from mtf.config import load_config

    overrides = [f"lake.root={lake}", f"sim.n_users={n_users(target, args.days)}",
                 f"sim.n_days={args.days}", f"sim.users_per_shard={args.users_per_shard}",
                 f"spark.master={args.master}",
                 'spark.conf={"spark.databricks.delta.snapshotPartitions": "2", '
                 '"spark.ui.enabled": "false"}',
                 "train.num_threads=1", "ope.threads=1"]
    if args.n_bootstrap:
        overrides.append(f"ope.n_bootstrap={args.n_bootstrap}")
    cfg = load_config(None, [*overrides, *args.set])
    partitions = shuffle_partitions(target, cfg.spark.shuffle_partitions,
                                    args.partitions_per_million)
    return dataclasses.replace(cfg, spark=dataclasses.replace(cfg.spark,
                                                              shuffle_partitions=partitions))


def shuffle_partitions(target: int, configured: int, per_million: float) -> int:
    """Shuffle partitions for ``target`` impressions: a fixed count lets a partition grow with
    the data until a task runs out of memory (a 4g local driver did at 50M with 8)."""
    return max(configured, math.ceil(target / 1e6 * per_million)) if per_million else configured


def session(cfg: Any) -> Any:
    import torch

    from mtf.spark import get_spark

    torch.set_num_threads(1)
    return get_spark("mtf-bench-scale", cfg.spark)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Size ``--worker`` on ``--lake``, in a process of its own."""
    cfg = size_config(args.worker, args.lake, args)
    spark = session(cfg)
    try:
        return run_stages(spark, cfg, args.worker, args)
    finally:
        spark.stop()


def run_stages(spark: Any, cfg: Any, target: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every stage of one size (``cfg``: :func:`size_config`) on ``spark``: seconds, figures
    and peaks per stage."""
    cores = _cores(args.master)
    jvm = int(spark.sparkContext._jvm.ProcessHandle.current().pid())
    stages = {"simulate": measured("simulate", jvm, lambda: simulate(spark, cfg))}
    impressions = stages["simulate"]["impressions"]
    stages["build"] = measured("build", jvm, lambda: build(spark, cfg))
    train_rows = stages["build"]["train_rows"]
    stages["loader"] = measured("loader", jvm, lambda: loader_epoch(cfg, train_rows))
    prep = ope_fits(spark, cfg, args)
    stages["ope"] = measured("ope", jvm, lambda: ope_pass(cfg, prep))
    for s in stages.values():
        s["s_per_million"] = 1e6 * s["seconds"] / impressions
        s["impressions_per_core_s"] = impressions / s["seconds"] / cores
    # The peaks are the stages' (ru_maxrss is no help: resetting VmHWM resets it too).
    return {"target": target, "impressions": impressions, "users": cfg.sim.n_users,
            "days": args.days, "cores": cores, "stages": stages,
            "shuffle_partitions": cfg.spark.shuffle_partitions,
            "python_peak_mib": max(s["python_peak_mib"] for s in stages.values()),
            "jvm_peak_mib": max(s["jvm_peak_mib"] for s in stages.values())}


def _cores(master: str) -> int:
    inside = master[master.find("[") + 1:master.find("]")] if "[" in master else "1"
    return (os.cpu_count() or 1) if inside == "*" else int(inside)


def simulate(spark: Any, cfg: Any) -> dict[str, Any]:
    from mtf.sim.job import simulate_to_delta

    result = simulate_to_delta(spark, cfg)
    return {"impressions": result.n_impressions}


def build(spark: Any, cfg: Any) -> dict[str, Any]:
    from mtf.etl.pipeline import run_build_transitions

    summary = run_build_transitions(spark, cfg)
    return {"transitions": summary.steps, "train_rows": summary.train_steps,
            "sessions": summary.sessions, "rows_quarantined": summary.rows_quarantined,
            "version": summary.transitions_version}


def loader_epoch(cfg: Any, train_rows: int) -> dict[str, Any]:
    """One pass over the train split through the trainer's petastorm source (its endless
    stream, cut after the split's rows: ceil(train_rows / batch) batches)."""
    from mtf.rl.loader import PetastormSource, open_transitions

    tcfg = cfg.train
    table = open_transitions(cfg.lake.path("transitions"), tcfg.table_version)
    source = PetastormSource(table, batch_size=tcfg.batch_size, split=tcfg.split,
                             seed=cfg.seed, cfg=tcfg.loader)
    batches = source.batches()
    rows = n_batches = 0
    try:
        while rows < train_rows:
            rows += len(next(batches))
            n_batches += 1
    finally:
        getattr(batches, "close", lambda: None)()
    return {"rows": rows, "batches": n_batches, "row_groups": table.n_row_groups,
            "files": len(table.uris)}


def ope_fits(spark: Any, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """What the OPE pass needs before it scores (untimed; its cost does not grow with the
    table): the pinned test split, the logging baseline and one fixed policy, their FQE fits on
    a session sample of ``--fit-rows``."""
    import dataclasses

    from mtf.ope.evaluate import fit_policies
    from mtf.ope.job import _layout, collect_fit_data, split_frame
    from mtf.ope.policies import baseline_action, fixed_policy
    from pyspark.sql import functions as F

    ope = dataclasses.replace(cfg.ope, n_iterations=args.fit_iterations,
                              fqe_max_rows=args.fit_rows)
    path = cfg.lake.path("transitions")
    split_df, version = split_frame(spark, path, ope.table_version, ope.split)
    features, tasks = _layout(spark, path, version, cfg.features, cfg.fusion)
    policies = [fixed_policy("logging", baseline_action(cfg.fusion, cfg.serving)),
                fixed_policy("fixed", [0.3] * len(tasks))]
    counts = split_df.agg(F.count(F.lit(1)).alias("n"),
                          F.countDistinct("session_id").alias("s")).first()
    n_rows, n_sessions = int(counts["n"]), int(counts["s"])
    data = collect_fit_data(split_df, n_rows, ope, cfg.seed, len(features), len(tasks))
    return {"ope": ope, "split_df": split_df, "policies": policies, "n_rows": n_rows,
            "n_sessions": n_sessions, "fit_rows": len(data), "state_dim": len(features),
            "action_dim": len(tasks),
            "fits": fit_policies(data, policies, ope, gamma=cfg.mdp.gamma, seed=cfg.seed)}


def ope_pass(cfg: Any, prep: dict[str, Any]) -> dict[str, Any]:
    """The OPE job's Spark pass over the test split (step 4 of mtf.ope.job.evaluate_table):
    score every row for both policies, per-session statistics, bootstrap sums, collect."""
    from mtf.ope.evaluate import initial_share, scoring_bundle
    from mtf.ope.score import (bootstrap_sums_df, collect_sums, score_transitions,
                               session_statistics_df)

    ope = prep["ope"]
    bundle = scoring_bundle(prep["policies"], prep["fits"], ope, prep["state_dim"],
                            prep["action_dim"])
    scored = score_transitions(prep["split_df"], bundle, ope.udf_threads)
    sessions = session_statistics_df(scored, gamma=cfg.mdp.gamma, max_weight=ope.max_weight)
    sums_df = bootstrap_sums_df(sessions, horizon=ope.wpdis_horizon, n_bootstrap=ope.n_bootstrap,
                                seed=cfg.seed,
                                initial_share=initial_share(ope, prep["n_sessions"]))
    sums = collect_sums(sums_df, ope.wpdis_horizon)
    if sorted(sums) != ["fixed", "logging"]:
        raise RuntimeError(f"the OPE pass returned sums for {sorted(sums)}")
    return {"test_rows": prep["n_rows"], "test_sessions": prep["n_sessions"],
            "fit_rows": prep["fit_rows"]}


def size_argv(target: int, lake: str, args: argparse.Namespace) -> list[str]:
    """The command line of one size's process."""
    return [sys.executable, os.path.abspath(__file__), "--worker", str(target), "--lake", lake,
            "--days", str(args.days), "--users-per-shard", str(args.users_per_shard),
            "--master", args.master, "--fit-rows", str(args.fit_rows),
            "--fit-iterations", str(args.fit_iterations), "--n-bootstrap", str(args.n_bootstrap),
            "--partitions-per-million", str(args.partitions_per_million), "--set", *args.set]


def run_size(target: int, lake: str, args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.run(size_argv(target, lake, args), stdout=subprocess.PIPE, text=True,
                          timeout=6 * 3600)
    if proc.returncode != 0:
        raise RuntimeError(f"size {target} failed (exit {proc.returncode}); its log is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- figures ---------------------------------------------------------------------------------

def marginal_s_per_million(runs: list[dict[str, Any]], stage: str) -> float:
    """Slope of a least-squares line through (impressions, seconds) of every size: the cost of
    one more million impressions, without the fixed costs that the averages carry."""
    n = [r["impressions"] / 1e6 for r in runs]
    t = [r["stages"][stage]["seconds"] for r in runs]
    n_mean, t_mean = sum(n) / len(n), sum(t) / len(t)
    return (sum((a - n_mean) * (b - t_mean) for a, b in zip(n, t))
            / sum((a - n_mean) ** 2 for a in n))


def figures(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Per stage: s per million at the smallest and the largest size, their ratio, the marginal
    cost, the per-core rate and the Python driver's peak ratio; the drivers' peaks (the largest
    of the stages) and their ratios."""
    small, large = runs[0], runs[-1]
    out: dict[str, float] = {"impressions_smallest": small["impressions"],
                             "impressions_largest": large["impressions"],
                             "data_ratio_largest_over_smallest":
                                 large["impressions"] / small["impressions"]}
    for stage in STAGES:
        a, b = small["stages"][stage], large["stages"][stage]
        out[f"{stage}_s_per_million_smallest"] = a["s_per_million"]
        out[f"{stage}_s_per_million_largest"] = b["s_per_million"]
        out[f"{stage}_cost_ratio_largest_over_smallest"] = b["s_per_million"] / a["s_per_million"]
        out[f"{stage}_marginal_s_per_million"] = marginal_s_per_million(runs, stage)
        out[f"{stage}_impressions_per_core_s_largest"] = b["impressions_per_core_s"]
        out[f"{stage}_python_peak_ratio_largest_over_smallest"] = (b["python_peak_mib"]
                                                                   / a["python_peak_mib"])
    for proc in ("python", "jvm"):
        out[f"{proc}_peak_mib_smallest"] = small[f"{proc}_peak_mib"]
        out[f"{proc}_peak_mib_largest"] = large[f"{proc}_peak_mib"]
        out[f"{proc}_peak_ratio_largest_over_smallest"] = (large[f"{proc}_peak_mib"]
                                                           / small[f"{proc}_peak_mib"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    sizes = sorted(args.sizes)
    if len(sizes) < 2:
        raise SystemExit("bench_scale.py needs at least two --sizes (the figures are ratios)")
    work = args.workdir or tempfile.mkdtemp(prefix="mtf-bench-scale-")
    runs = []
    # --in-process: one session for every size (their Spark settings are the same)
    spark = session(size_config(sizes[0], work, args)) if args.in_process else None
    try:
        for target in sizes:
            lake = os.path.join(work, f"lake-{target}")
            shutil.rmtree(lake, ignore_errors=True)
            print(f"size {target:,} impressions ({n_users(target, args.days):,} users x "
                  f"{args.days} day(s)), load average {os.getloadavg()[0]:.1f}:",
                  file=sys.stderr, flush=True)
            runs.append(run_stages(spark, size_config(target, lake, args), target, args)
                        if spark is not None else run_size(target, lake, args))
            r = runs[-1]
            print(f"  = {r['impressions']:,} impressions; s per million: " + ", ".join(
                f"{s} {r['stages'][s]['s_per_million']:.1f}" for s in STAGES),
                file=sys.stderr, flush=True)
            if not args.workdir:
                shutil.rmtree(lake, ignore_errors=True)
    finally:
        if spark is not None:
            spark.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    out = figures(runs)
    for stage in STAGES:
        print(f"{stage}: {out[f'{stage}_s_per_million_smallest']:.1f} -> "
              f"{out[f'{stage}_s_per_million_largest']:.1f} s per million impressions "
              f"(ratio {out[f'{stage}_cost_ratio_largest_over_smallest']:.2f}, goal <= 1.2; "
              f"marginal {out[f'{stage}_marginal_s_per_million']:.1f}); Python peak "
              f"{out[f'{stage}_python_peak_ratio_largest_over_smallest']:.2f}x")
    print(f"driver peak: python {out['python_peak_ratio_largest_over_smallest']:.2f}x, JVM "
          f"{out['jvm_peak_ratio_largest_over_smallest']:.2f}x at "
          f"{out['data_ratio_largest_over_smallest']:.1f}x the data (goal: flat)")
    write_result(args.json, "bench_scale", out, vars(args), args.smoke, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
