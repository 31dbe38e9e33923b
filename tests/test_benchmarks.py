"""Every script in benchmarks/ still runs: its ``--smoke`` mode (tiny sizes, the same code paths)
exits 0 and writes a result JSON with the figures the README and docs quote.

policy_sweep.py's smoke also checks what its export, signal and run produce (it simulates and
builds its own small lake), and a failing variant must not lose the others' results.
heldout_learning.py's smoke runs where Spark, Delta, petastorm and MLflow cannot be imported
(:data:`NO_SPARK`), in its main process and its workers.
"""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import pytest

from mtf.config import load_config

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_KEYS = {"benchmark", "smoke", "figures", "sizes", "details", "command", "utc", "machine",
               "git"}
MACHINE_KEYS = {"cpu_count", "platform", "python", "torch", "pyspark", "delta-spark", "petastorm",
                "load_average_1min"}
CORES = os.cpu_count() or 1


def _bench(script: str, *args: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})})


# Packages a smoke must run without: a sitecustomize on PYTHONPATH puts None in sys.modules for
# each, so any import of them fails, in the script and in every process it spawns.
NO_SPARK = ("pyspark", "py4j", "delta", "deltalake", "petastorm", "mlflow")


def _no_spark_env(folder: Any) -> dict[str, str]:
    site = folder / "no_spark"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor _m in {NO_SPARK!r}:\n    sys.modules[_m] = None\n")
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(site) + (os.pathsep + path if path else "")}


# Every smoke run, started together when the module's first test asks for one: most of a
# smoke's time is JVM start-up and small Delta writes that leave the CPU idle, so three at a
# time take about half the wall time of one after another. Each test waits for its own.
SMOKES = {
    "etl": ("bench_etl.py", "--smoke", "--json", "{out}/etl.json"),
    "train": ("bench_train.py", "--smoke", "--json", "{out}/train.json"),
    "ope": ("bench_ope.py", "--smoke", "--json", "{out}/ope.json"),
    "sim": ("bench_sim.py", "--smoke", "--json", "{out}/sim.json"),
    "fqe_scale": ("bench_fqe_scale.py", "--smoke", "--json", "{out}/fqe_scale.json"),
    "sweep": ("policy_sweep.py", "smoke", "--workdir", "{out}/work", "--json", "{out}/sweep.json"),
    "scale": ("bench_scale.py", "--smoke", "--json", "{out}/scale.json"),
    "heldout": ("heldout_learning.py", "--smoke", "--json", "{out}/heldout.json"),
}
NO_SPARK_SMOKES = {"heldout"}
# The test that reads each smoke: only the smokes of the selected tests start (-k scale runs
# one smoke, not all of them).
TEST_OF = {**{name: f"test_bench_{name}_smoke" for name in SMOKES},
           "sweep": "test_policy_sweep_smoke_export_signal_and_run"}


@pytest.fixture(scope="module")
def smokes(request: Any, tmp_path_factory: Any) -> Iterator[dict[str, tuple[Any, Future[Any]]]]:
    out = tmp_path_factory.mktemp("smokes")
    selected = {getattr(item, "originalname", item.name) for item in request.session.items}
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {name: (out, pool.submit(_bench, *(a.format(out=out) for a in args),
                                       env=_no_spark_env(out) if name in NO_SPARK_SMOKES
                                       else None))
               for name, args in SMOKES.items() if TEST_OF[name] in selected}


def _record(path: Any, benchmark: str, figures: set[str]) -> dict[str, Any]:
    """The result JSON at ``path``: its keys, and figures that are all finite, with every rate,
    ratio and duration > 0."""
    record = json.loads(path.read_text())
    assert set(record) == RECORD_KEYS
    assert record["benchmark"] == benchmark and record["smoke"] is True
    assert set(record["figures"]) == figures
    for key, value in record["figures"].items():
        assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
        if "per_s" in key or "ratio" in key or key.endswith("_s"):
            assert value > 0, (key, value)
    assert set(record["machine"]) == MACHINE_KEYS and record["machine"]["cpu_count"] == CORES
    assert set(record["git"]) == {"commit", "dirty"}
    assert dt.datetime.strptime(record["utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert "json" not in record["sizes"] and "smoke" not in record["sizes"]
    return record


def _ran(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _etl_figures(prefix: str = "") -> set[str]:
    return {prefix + k for k in ("impressions", "copy_s", "build_s", "ratio_build_over_copy",
                                 "copy_impressions_per_s", "build_impressions_per_s",
                                 "build_s_per_million")}


def test_bench_etl_smoke(smokes: Any) -> None:
    folder, job = smokes["etl"]
    out, proc = folder / "etl.json", job.result()
    _ran(proc)
    record = _record(out, "bench_etl", _etl_figures())
    assert record["sizes"]["sizes"] == [20_000] and record["sizes"]["warmup"] == 0
    (run,) = record["details"]["runs"]
    # the build joined the profile table the benchmark wrote (without it the build stops)
    assert record["details"]["profile_columns"] == list(load_config(None)
                                                        .features.profile_columns)
    assert run["steps"] > 0 and run["sessions"] > 0 and run["rows_quarantined"] == 0
    assert "ratio" in proc.stdout and proc.stdout.rstrip().endswith("}")


def test_bench_train_smoke(smokes: Any) -> None:
    folder, job = smokes["train"]
    out = folder / "train.json"
    _ran(job.result())
    record = _record(out, "bench_train", {
        "bcq_in_memory_steps_per_s", "bcq_petastorm_steps_per_s",
        "ratio_petastorm_over_in_memory", "loader_only_rows_per_s", "ddp_1_steps_per_s",
        "ddp_1_rows_per_s", "ddp_2_steps_per_s", "ddp_2_rows_per_s"})
    assert record["sizes"]["rows"] == 4000 and record["sizes"]["format"] == "delta"
    assert 0 < record["details"]["rows_train"] < 4000       # the train split only


def test_bench_ope_smoke(smokes: Any) -> None:
    folder, job = smokes["ope"]
    out = folder / "ope.json"
    _ran(job.result())
    record = _record(out, "bench_ope", {
        "spark_rows_per_s", "spark_first_pass_rows_per_s", "torch_rows_per_s",
        *(f"torch_{t}_threads_rows_per_s" for t in {1, CORES}), "ratio_spark_over_torch",
        "write_s", "ope_scoring_spark_rows_per_s", "ope_scoring_torch_rows_per_s",
        "ope_scoring_ratio_spark_over_torch"})
    assert record["details"]["rows"] == record["sizes"]["rows"] == 5000


def test_bench_fqe_scale_smoke(smokes: Any) -> None:
    folder, job = smokes["fqe_scale"]
    out = folder / "fqe_scale.json"
    _ran(job.result())
    record = _record(out, "bench_fqe_scale", {
        "stream_peak_ratio_big_over_1x", "sample_peak_ratio_big_over_1x",
        "stream_over_sample_peak_big", "stream_over_sample_fit_rate_big",
        "stream_fit_rate_ratio_big_over_1x"})
    cases = record["details"]["cases"]
    # the smoke runs its cases in one process (the full run: one process per case)
    assert record["sizes"]["in_process"] is True
    assert set(cases) == {"sample.1x", "stream.1x", "sample.2x", "stream.2x"}
    for label, rows in (("1x", 2000), ("2x", 4000)):
        # the collected baseline holds the whole split; the stream fits on it all from a
        # bounded driver sample (about --sample-rows, whole sessions)
        assert cases[f"sample.{label}"]["split_rows"] == rows
        assert cases[f"sample.{label}"]["sample_rows"] == rows
        assert cases[f"stream.{label}"]["split_rows"] == rows
        assert 0 < cases[f"stream.{label}"]["sample_rows"] < 1000
    assert all(c["python_peak_mib"] > 0 and c["jvm_peak_mib"] > 0 for c in cases.values())


def test_bench_scale_smoke(smokes: Any) -> None:
    folder, job = smokes["scale"]
    out = folder / "scale.json"
    _ran(job.result())
    stages = ("simulate", "build", "loader", "ope")
    record = _record(out, "bench_scale", {
        "impressions_smallest", "impressions_largest", "data_ratio_largest_over_smallest",
        *(f"{s}_{k}" for s in stages for k in (
            "s_per_million_smallest", "s_per_million_largest", "cost_ratio_largest_over_smallest",
            "marginal_s_per_million", "impressions_per_core_s_largest",
            "python_peak_ratio_largest_over_smallest")),
        *(f"{p}_{k}" for p in ("python", "jvm") for k in (
            "peak_mib_smallest", "peak_mib_largest", "peak_ratio_largest_over_smallest"))})
    runs = record["details"]["runs"]
    assert [r["target"] for r in runs] == record["sizes"]["sizes"] == [4000, 8000]
    # the smoke runs both sizes in one process (the full run: one process per size)
    assert record["sizes"]["in_process"] is True
    for r in runs:                      # every stage of each size measured
        build, loader, ope = (r["stages"][s] for s in ("build", "loader", "ope"))
        assert r["impressions"] > 0 and r["cores"] == 2
        assert 0 < build["train_rows"] < build["transitions"]
        # one epoch: the train split's rows in whole batches of train.batch_size (256)
        assert loader["rows"] == -(-build["train_rows"] // 256) * 256
        assert ope["test_rows"] + build["train_rows"] == build["transitions"]
        assert all(r["stages"][s]["python_peak_mib"] > 0 and r["stages"][s]["jvm_peak_mib"] > 0
                   for s in stages)
    assert record["figures"]["impressions_largest"] == runs[1]["impressions"]


def _script(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (its imports of the other scripts need benchmarks/)."""
    folder = os.path.join(ROOT, "benchmarks")
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)


def test_scale_benchmarks_workers_get_the_runs_arguments() -> None:
    """The full runs' process per case (bench_fqe_scale) and per size (bench_scale), which the
    in-process smokes skip: each worker's command line parses back to the run's arguments."""
    fqe = _script("bench_fqe_scale")
    args = fqe.parse_args(["--rows", "300", "--scale", "3", "--steps", "7", "--batch-size",
                           "16", "--hidden", "8,4", "--sample-rows", "90", "--state-dim", "5"])
    argv = fqe.case_argv("stream", "/lake/transitions-1x", args)
    assert argv[:2] == [sys.executable, os.path.join(ROOT, "benchmarks", "bench_fqe_scale.py")]
    worker = fqe.parse_args(argv[2:])
    assert (worker.worker, worker.table, worker.in_process) == (
        "stream", "/lake/transitions-1x", False)
    # what the worker's OPE run reads (the table's shape comes from the table itself)
    keys = ("rows", "scale", "steps", "batch_size", "hidden", "sample_rows")
    assert {k: getattr(worker, k) for k in keys} == {k: getattr(args, k) for k in keys}

    scale = _script("bench_scale")
    args = scale.parse_args(["--smoke", "--master", "local[1]", "--n-bootstrap", "30",
                             "--partitions-per-million", "2500"])
    argv = scale.size_argv(4000, "/lake/lake-4000", args)
    assert argv[:2] == [sys.executable, os.path.join(ROOT, "benchmarks", "bench_scale.py")]
    worker = scale.parse_args(argv[2:])
    assert (worker.worker, worker.lake, worker.in_process) == (4000, "/lake/lake-4000", False)
    assert (scale.size_config(4000, "/lake/lake-4000", worker)
            == scale.size_config(4000, "/lake/lake-4000", args))
    assert (worker.fit_rows, worker.fit_iterations, worker.master) == (500, 20, "local[1]")
    assert scale.size_config(4000, "/lake/lake-4000", worker).spark.shuffle_partitions == 10


def test_scale_benchmark_grows_shuffle_partitions_with_the_size() -> None:
    scale = _script("bench_scale")
    assert [scale.shuffle_partitions(n, 8, 1.0) for n in (4000, 5_000_000, 15_000_000,
                                                          50_000_000)] == [8, 8, 15, 50]
    assert scale.shuffle_partitions(50_000_000, 8, 0) == 8       # 0: the config's everywhere
    assert scale.shuffle_partitions(50_000_000, 400, 1.0) == 400  # never below the config's


def test_bench_sim_smoke(smokes: Any) -> None:
    folder, job = smokes["sim"]
    out = folder / "sim.json"
    _ran(job.result())
    record = _record(out, "bench_sim", {
        "in_process_impressions", "in_process_s", "in_process_impressions_per_s",
        "spark_start_s", "spark_count_impressions", "spark_count_s",
        "spark_count_impressions_per_s", "ratio_spark_count_over_in_process",
        "spark_write_impressions", "spark_write_s", "spark_write_impressions_per_s",
        "ratio_spark_write_over_in_process"})
    figures = record["figures"]
    # the same seeded users, simulated in process and in Spark tasks
    assert (figures["in_process_impressions"] == figures["spark_count_impressions"]
            == figures["spark_write_impressions"] > 0)


def test_policy_sweep_smoke_export_signal_and_run(smokes: Any, tmp_path: Any) -> None:
    folder, job = smokes["sweep"]
    out, work, proc = folder / "sweep.json", folder / "work", job.result()
    _ran(proc)
    record = _record(out, "policy_sweep", {f"{tag}.{k}" for tag in ("a", "b") for k in (
        "vs_baseline_pct", "train_s", "train_steps_per_s")})
    cfg = load_config(None, record["sizes"]["overrides"])
    details = record["details"]

    data = np.load(work / "transitions.npz")                 # export
    assert len(data["reward"]) == details["train_steps"]     # every train row, once
    assert set(np.unique(data["group"])) <= {0, 1, 2}
    assert {g: int((data["group"] == i).sum()) for i, g in enumerate(
        ("exploit", "noise", "random"))} == details["exported_rows"]
    assert data["state"].shape[1] == len(cfg.features.feature_names)
    assert json.loads(str(data["layout"]))["action_tasks"] == list(cfg.fusion.names)

    signal = details["signal"]                                # signal
    assert signal["steps"] == details["exported_rows"]["random"]
    assert all(f"  {t}" in proc.stdout for t in cfg.fusion.names)
    assert set(signal["coefficients"]) == {f"{t}.{c}" for t in cfg.fusion.names for c in (
        "action", "action_se", "x_activity", "x_activity_se")}

    variants = {r["tag"]: r for r in details["variants"]}   # run
    assert list(variants) == ["a", "b"]
    assert variants["a"]["rows"] == details["train_steps"]
    assert variants["b"]["rows"] == details["exported_rows"]["random"]   # random rows only
    for r in variants.values():
        assert r["ci_pct"][0] <= r["vs_baseline_pct"] <= r["ci_pct"][1]
        assert len(r["action_engaged"]) == len(r["action_casual"]) == cfg.fusion.k

    # A broken variant (it stops at its config) fails alone: the other still reports, exit 1.
    broken = tmp_path / "broken.json"
    proc = _bench("policy_sweep.py", "run", "--data", str(work / "transitions.npz"),
                  "--steps", "15", "--sessions", "60", "--device", "cpu", "--json", str(broken),
                  "--run", "broken: train.bcq.rho=9",
                  "--run", "c: TSEED=5",
                  "--", *record["sizes"]["overrides"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = json.loads(broken.read_text())
    failed, ok = results["details"]["variants"]
    assert failed["tag"] == "broken" and "bcq.rho must be in [0, 2]" in failed["error"]
    assert ok["tag"] == "c" and "error" not in ok, ok
    assert set(results["figures"]) == {"c.vs_baseline_pct", "c.train_s", "c.train_steps_per_s"}


def test_bench_heldout_smoke(smokes: Any) -> None:
    folder, job = smokes["heldout"]
    out, proc = folder / "heldout.json", job.result()
    _ran(proc)
    learners = ("default", "bcq", "bcq_small", "ray_small")
    policies = ("cem", *learners)
    record = _record(out, "heldout_learning", {
        "seconds",
        *(f"{p}.{k}" for p in policies for k in (
            "return_pct_mean", "dwell_pct_mean", "return_goal_worlds", "dwell_goal_worlds")),
        *(f"{p}.above_cem_worlds" for p in learners),
        *(f"tune-7.{p}.{k}" for p in policies for k in ("return_pct", "dwell_pct")),
        "tune-7.ope_select.regret_pct", "tune-7.ope_select.return_pct",
        "ope_select.regret_pct_mean", "ope_select.regret_pct_max", "ope_select.return_pct_mean"})
    details = record["details"]
    assert details["learners"] == {"default": [], "bcq": ["train.algo=bcq"],
                                   "bcq_small": ["train.algo=bcq", "train.common.hidden=[16,16]"],
                                   "ray_small": ["fusion.action_space=ray"]}
    (world,) = details["worlds"]
    assert (world["world"], world["role"], world["seed"], world["truth_seed"]) == \
        ("tune-7", "tuning", 7, 1234)
    assert (world["users"], world["days"], world["truth_sessions"]) == (150, 2, 200)
    assert world["failed"] == {} and world["simulation"]["rows"] > 0
    # the ray learner trained on its own logs (the logging policy exploring on the faces)
    (ray_logs,) = world["other_simulations"].values()
    assert {n: (r["algo"], r["max_steps"], r["rows"]) for n, r in world["learners"].items()} == {
        n: (a, 20, rows) for n, a, rows in (
            ("default", "iql", world["simulation"]["rows"]),
            ("bcq", "bcq", world["simulation"]["rows"]),
            ("bcq_small", "bcq", world["simulation"]["rows"]),
            ("ray_small", "iql", ray_logs["rows"]))}
    # the OPE gate chose among the learners (or kept logging); its regret is read off the truth
    ope = world["ope"]
    assert set(ope["decisions"]) == set(learners) and ope["candidates"] == ["logging", *learners]
    rows = world["rows"]
    assert ope["chosen"] in ope["candidates"] and ope["chosen_return_pct"] == \
        rows[ope["chosen"]]["return_pct"]
    assert ope["best_return_pct"] == max(rows[c]["return_pct"] for c in ope["candidates"])
    assert ope["regret_pct"] == ope["best_return_pct"] - ope["chosen_return_pct"] >= 0
    assert ope["chosen"] == "logging" or ope["decisions"][ope["chosen"]]["go"]
    assert len(world["cem"]["history"]) == 2 and world["cem"]["seed"] == 7 + 500
    assert list(world["rows"]) == ["logging", *policies]       # logging, CEM, then learners
    for name, row in world["rows"].items():
        assert row["return_pct_ci"][0] <= row["return_pct"] <= row["return_pct_ci"][1]
        assert row["dwell_pct_ci"][0] <= row["dwell_pct"] <= row["dwell_pct_ci"][1]
        assert set(row["goals"]) == {"return", "dwell", "above_cem"}
        assert ("vs_cem" in row) == (name != "cem")
        if name != "logging":
            assert record["figures"][f"tune-7.{name}.return_pct"] == row["return_pct"]
    assert world["rows"]["logging"]["return_pct"] == 0.0
    assert set(details["pooled"]) == {"logging", *policies}
    chosen = details["chosen"]                  # --choose on the tuning world: the argmax
    assert chosen["worlds"] == ["tune-7"] and set(chosen["means"]) == set(learners)
    assert chosen["mean_return_pct"] == max(chosen["means"].values())
    assert chosen["overrides"] == details["learners"][chosen["name"]]
    assert "[tune-7] (tuning)" in proc.stdout and "pooled over ['tune-7']" in proc.stdout
    assert "tune-7: truth of logging (200 sessions)" in proc.stderr
