"""Benchmark FQE at table scale: driver memory and fit throughput, streamed vs collected.

For a test split of N and 10 N rows, the OPE job (``mtf.ope.job.evaluate_table``: FQE fits,
Spark scoring, report) runs in a fresh process per case with

  * ``ope.fqe_source=sample`` and ``ope.fqe_max_rows`` above the split: the split is collected
    to the driver and FQE fits on it (the baseline: what "the whole split" used to cost), and
  * ``ope.fqe_source=stream``: FQE reads the whole split through petastorm; the driver keeps
    only a session sample of ``--sample-rows`` for the diagnostics.

Figures: the driver's peak resident memory (the Python process; the JVM's peak is recorded
too) and the FQE fits' rows/s, as ratios 10 N / N per source and stream / sample at 10 N.
"Flat" means the streamed driver's peak at 10 N is close to its peak at N.

``--in-process`` (the default of ``--smoke``) runs the four cases one after another in this
process on one SparkSession instead, to skip three JVM start-ups: the same code paths and
record, but each peak is then the shared process's since its case began (earlier cases' heap
included), so the peak figures are not meaningful in that mode.

Run with:
  .venv/bin/python benchmarks/bench_fqe_scale.py --json benchmarks/results/bench_fqe_scale.json
  .venv/bin/python benchmarks/bench_fqe_scale.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from result import add_result_arguments, parse_with_smoke, write_result  # noqa: E402

TASKS = ("click", "like", "share", "finish", "watch_time", "exit")
SMOKE = {"rows": 2000, "scale": 2, "state_dim": 4, "steps": 20, "batch_size": 64,
         "sample_rows": 500, "hidden": "8", "in_process": True}
# The session that writes the tables (and, --in-process, runs the cases).
SESSION_CONF = {"spark.ui.enabled": "false", "spark.databricks.delta.snapshotPartitions": "2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="test-split rows at 1x")
    p.add_argument("--scale", type=int, default=10, help="the larger split is this many times N")
    p.add_argument("--state-dim", type=int, default=32)
    p.add_argument("--session-length", type=int, default=5)
    p.add_argument("--steps", type=int, default=1000, help="FQE gradient steps per fit (K)")
    p.add_argument("--batch-size", type=int, default=512, help="FQE minibatch (m)")
    p.add_argument("--hidden", type=str, default="64,64")
    p.add_argument("--sample-rows", type=int, default=20_000,
                   help="the streamed runs' driver sample (ope.fqe_max_rows)")
    p.add_argument("--workdir", type=str, default="", help="keep the tables here")
    p.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=False,
                   help="run the cases in this process on one SparkSession (peaks not "
                        "meaningful; the default of --smoke)")
    p.add_argument("--worker", type=str, default="", help=argparse.SUPPRESS)
    p.add_argument("--table", type=str, default="", help=argparse.SUPPRESS)
    add_result_arguments(p)
    return parse_with_smoke(p, argv, SMOKE)


# ---- the table ---------------------------------------------------------------------------------

def session() -> Any:
    from mtf.config import SparkConfig
    from mtf.spark import get_spark

    return get_spark("mtf-bench-fqe-scale", SparkConfig(master="local[2]", conf=SESSION_CONF))


def write_table(path: str, n_test: int, args: argparse.Namespace, seed: int,
                spark: Any = None) -> None:
    """A transitions table in the contract's layout: n_test test rows (+ 10% train rows),
    sessions of ``--session-length`` steps, written by Spark (``spark``, or a session of its
    own) as a Delta table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtf.delta import write_delta

    staging = path + "-staging"
    os.makedirs(staging, exist_ok=True)
    s_dim, k, length = args.state_dim, len(TASKS), args.session_length
    n = n_test + n_test // 10
    rng = np.random.default_rng(seed)
    chunk = 200_000 // length * length
    for part, lo in enumerate(range(0, n, chunk)):
        m = min(chunk, n - lo)
        rows = np.arange(lo, lo + m)
        step = (rows % length).astype(np.int32)
        state = rng.normal(size=(m, s_dim)).astype(np.float32)
        last = step == length - 1

        def lists(x: Any) -> Any:
            return pa.ListArray.from_arrays(
                pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32)),
                pa.array(x.ravel()))

        pq.write_table(pa.table({
            "session_id": pa.array((rows // length).astype(str)),
            "step": pa.array(step),
            "ts": pa.array((1_767_225_600_000_000 + rows * 30_000_000).astype("datetime64[us]")),
            "state": lists(state), "next_state": lists(np.roll(state, -1, axis=0)),
            "action": lists(rng.uniform(-1, 1, size=(m, k)).astype(np.float32)),
            "action_logp": pa.array(np.full(m, -k * np.log(2.0))),
            "reward": pa.array(1.0 + 0.1 * state[:, 0].astype(np.float64)),
            "is_terminal": pa.array(last), "is_truncated": pa.array(np.zeros(m, bool)),
            "explore_group": pa.array(np.full(m, "random")),
            "split": pa.array(np.where(rows < n_test, "test", "train"))}),
            os.path.join(staging, f"part-{part:05d}.parquet"))
    props = {"mtf.feature_names": json.dumps([f"f{i}" for i in range(s_dim)]),
             "mtf.feature_version": "bench", "mtf.action_tasks": json.dumps(list(TASKS))}
    own = spark is None
    spark = session() if own else spark
    try:
        files = max(2, n // 50_000)
        write_delta(spark.read.parquet(staging).repartition(files), path, mode="overwrite",
                    properties=props)
    finally:
        if own:
            spark.stop()


# ---- one case, in its own process (or --in-process, in this one) -----------------------------

def _peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak(pid: int) -> None:
    """Reset the process's peak resident set size (VmHWM) to its current size."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _jvm_pid(spark: Any) -> int:
    return int(spark.sparkContext._jvm.ProcessHandle.current().pid())


def run_ope(spark: Any, source: str, table: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the OPE job once on ``table`` with ``source`` as ope.fqe_source: the case's figures
    but its peaks."""
    import dataclasses

    from mtf.config import LakeConfig, MtfConfig, SparkConfig
    from mtf.fusion import FusionConfig, TaskSpec
    from mtf.ope.config import OpeConfig
    from mtf.ope.job import evaluate_table

    ope = OpeConfig(
        fqe_source=source, n_iterations=args.steps, batch_size=args.batch_size,
        hidden=tuple(int(h) for h in args.hidden.split(",")), target_update_every=100,
        log_every=100, n_bootstrap=50, threads=1, gate="conservative_fqe",
        ensemble=dataclasses.replace(OpeConfig().ensemble, members=0),
        fqe_max_rows=args.sample_rows if source == "stream" else 10 * args.rows * args.scale,
        fixed_policies={"c": (0.2,) * len(TASKS)}, run_id=f"bench-{source}")
    cfg = MtfConfig(lake=LakeConfig(root=os.path.dirname(table), transitions=table),
                    fusion=FusionConfig(tasks=tuple(TaskSpec(t) for t in TASKS)),
                    spark=SparkConfig(master="local[2]", conf={"spark.ui.enabled": "false"}),
                    ope=ope)
    t0 = time.perf_counter()
    result, _ = evaluate_table(spark, cfg)
    total = time.perf_counter() - t0
    fit_s = result.meta["seconds"]["fqe_fit"]
    n_fits = 2 * len(result.policies)
    return {"source": source, "split_rows": result.meta["n_rows"],
            "sample_rows": result.meta["sample_rows"],
            "fit_seconds": fit_s, "fit_rows_per_s": n_fits * args.steps * args.batch_size / fit_s,
            "collect_seconds": result.meta["seconds"]["collect"], "total_seconds": total,
            "fqe_logging": result.estimate("logging", "fqe")}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run the OPE job once on ``--table`` with ``--worker`` as ope.fqe_source, in a process
    of its own: the process's and its JVM's peaks are the case's."""
    import torch

    from mtf.config import SparkConfig
    from mtf.spark import get_spark

    torch.set_num_threads(1)
    spark = get_spark("mtf-bench-fqe-scale",
                      SparkConfig(master="local[2]", conf={"spark.ui.enabled": "false"}))
    try:
        case = run_ope(spark, args.worker, args.table, args)
        jvm_peak = _peak_kib(_jvm_pid(spark))
    finally:
        spark.stop()
    return {**case, "python_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "jvm_peak_mib": jvm_peak / 1024}


def case_in_process(spark: Any, source: str, table: str,
                    args: argparse.Namespace) -> dict[str, Any]:
    """One case on this process's session (--in-process); the peaks since the case began."""
    me, jvm = os.getpid(), _jvm_pid(spark)
    _reset_peak(me)
    _reset_peak(jvm)
    case = run_ope(spark, source, table, args)
    return {**case, "python_peak_mib": _peak_kib(me) / 1024, "jvm_peak_mib": _peak_kib(jvm) / 1024}


def case_argv(source: str, table: str, args: argparse.Namespace) -> list[str]:
    """The command line of one case's process."""
    return [sys.executable, os.path.abspath(__file__), "--worker", source, "--table", table,
            "--rows", str(args.rows), "--scale", str(args.scale), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--hidden", args.hidden,
            "--sample-rows", str(args.sample_rows)]


def run_case(source: str, table: str, args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.run(case_argv(source, table, args), capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"case {source} on {table} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    work = args.workdir or tempfile.mkdtemp(prefix="mtf-bench-fqe-scale-")
    sizes = {"1x": args.rows, f"{args.scale}x": args.rows * args.scale}
    cases: dict[str, dict[str, Any]] = {}
    spark = None
    if args.in_process:
        import torch
        torch.set_num_threads(1)
        spark = session()
    try:
        for label, rows in sizes.items():
            table = os.path.join(work, f"transitions-{label}")
            if not os.path.exists(os.path.join(table, "_delta_log")):
                t0 = time.perf_counter()
                write_table(table, rows, args, seed=1, spark=spark)
                print(f"wrote {table}: {rows} test rows in {time.perf_counter() - t0:.0f} s",
                      flush=True)
            for source in ("sample", "stream"):
                c = (case_in_process(spark, source, table, args) if spark is not None
                     else run_case(source, table, args))
                cases[f"{source}.{label}"] = c
                print(f"{source:6s} {label:>4s}: split {c['split_rows']} rows, driver peak "
                      f"{c['python_peak_mib']:.0f} MiB (JVM {c['jvm_peak_mib']:.0f} MiB), fit "
                      f"{c['fit_rows_per_s']:.0f} rows/s, V_fqe(logging) "
                      f"{c['fqe_logging']:.3f}", flush=True)
    finally:
        if spark is not None:
            spark.stop()
    big = f"{args.scale}x"
    figures = {
        "stream_peak_ratio_big_over_1x": cases[f"stream.{big}"]["python_peak_mib"]
        / cases["stream.1x"]["python_peak_mib"],
        "sample_peak_ratio_big_over_1x": cases[f"sample.{big}"]["python_peak_mib"]
        / cases["sample.1x"]["python_peak_mib"],
        "stream_over_sample_peak_big": cases[f"stream.{big}"]["python_peak_mib"]
        / cases[f"sample.{big}"]["python_peak_mib"],
        "stream_over_sample_fit_rate_big": cases[f"stream.{big}"]["fit_rows_per_s"]
        / cases[f"sample.{big}"]["fit_rows_per_s"],
        "stream_fit_rate_ratio_big_over_1x": cases[f"stream.{big}"]["fit_rows_per_s"]
        / cases["stream.1x"]["fit_rows_per_s"],
    }
    for k, v in figures.items():
        print(f"{k}: {v:.2f}")
    write_result(args.json, "bench_fqe_scale", figures, vars(args), args.smoke,
                 {"cases": cases})
    return 0


if __name__ == "__main__":
    sys.exit(main())
