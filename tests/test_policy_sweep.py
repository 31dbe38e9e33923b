"""benchmarks/policy_sweep.py end to end on a small simulated lake: export, signal, run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from mtf.config import load_config
from mtf.etl.pipeline import run_build_transitions
from mtf.sim.job import simulate_to_delta

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "policy_sweep.py")
SIM = ["sim.n_users=150", "sim.users_per_shard=150", "sim.n_days=2"]


def _sweep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_export_signal_and_run_on_a_simulated_lake(spark: Any, tmp_path: Any) -> None:
    cfg = load_config(None, [f"lake.root={tmp_path}", *SIM])
    simulate_to_delta(spark, cfg)
    summary = run_build_transitions(spark, cfg)
    table, npz, out = cfg.lake.path("transitions"), str(tmp_path / "t.npz"), tmp_path / "r.json"

    exported = _sweep("export", "--table", table, "--out", npz)
    assert exported.returncode == 0, exported.stderr[-3000:]
    data = np.load(npz)
    assert len(data["reward"]) == summary.train_steps          # every train row, once
    assert set(np.unique(data["group"])) <= {0, 1, 2}
    assert data["state"].shape[1] == len(cfg.features.feature_names)
    assert json.loads(str(data["layout"]))["action_tasks"] == list(cfg.fusion.names)

    signal = _sweep("signal", "--table", table, "--", *SIM)
    assert signal.returncode == 0, signal.stderr[-3000:]
    assert all(f"  {t}" in signal.stdout for t in cfg.fusion.names)

    tiny = "train.common.hidden=[8,8] train.bcq.vae_hidden=[8,8] train.batch_size=16"
    run = _sweep("run", "--data", npz, "--steps", "15", "--sessions", "60", "--parallel", "2",
                 "--json", str(out), "--run", f"a: {tiny}",
                 "--run", f"b: TSEED=3 {tiny} train.explore_groups=[random]",
                 "--run", "broken: train.bcq.rho=9", "--", *SIM)
    assert run.returncode == 1            # the broken variant fails, the others still report
    results = {r["tag"]: r for r in json.loads(out.read_text())}
    assert "bcq.rho must be in [0, 2]" in results["broken"]["error"]
    assert "error" not in results["a"] and "error" not in results["b"], results
    assert results["b"]["rows"] == int((data["group"] == 2).sum())   # random rows only
    for tag in ("a", "b"):
        r = results[tag]
        assert math.isfinite(r["vs_baseline_pct"])
        assert r["ci_pct"][0] <= r["vs_baseline_pct"] <= r["ci_pct"][1]
        assert len(r["action_engaged"]) == len(r["action_casual"]) == cfg.fusion.k
