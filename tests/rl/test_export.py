"""Export round trip: TorchScript policy + sidecar, loaded without mtf in a fresh process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from mtf.fusion import action_to_weights
from mtf.rl.batch import Normalizer
from mtf.rl.checkpoint import load_checkpoint
from mtf.rl.export import build_policy, export_policy
from mtf.rl.loader import InMemorySource
from mtf.rl.train import train
from tests.rl.helpers import random_batch, tiny_config
from tests.rl.test_train import LAYOUT, SPACE

LOAD_WITHOUT_MTF = """
import sys, torch
policy = torch.jit.load(sys.argv[1])
states = torch.load(sys.argv[2])
out = {"action": policy(states), "weights": policy.fusion_weights(states),
       "again": policy(states)}
assert not [m for m in sys.modules if m == "mtf" or m.startswith("mtf.")], "mtf was imported"
torch.save(out, sys.argv[3])
"""


def _trained(tmp_path: Any, algo: str) -> str:
    data = random_batch(b=200, s=3, k=2, seed=1)
    data = replace(data, state=data.state * 5 + 10)     # raw states far from N(0, 1)
    cfg = tiny_config(algo.split("-")[0], max_steps=10, checkpoint_every=10)
    if algo == "bcq-ensemble":   # 3 critics and the std-penalised choice survive TorchScript
        cfg = replace(cfg, bcq=replace(cfg.bcq, n_critics=3, actor_penalty=0.5))
    if algo == "bcq-bounded":    # UnifiedRL's policy-bounded candidates
        cfg = replace(cfg, bcq=replace(cfg.bcq, candidates="bounded"))
    if algo.startswith("iql"):   # the quadratic critics' maximiser (on the faces with rays)
        cfg = replace(cfg, iql=replace(cfg.iql, quadratic_critic=True,
                                       curvature="full" if "full" in algo else "diagonal"))
    space = replace(SPACE, mode="ray") if algo.endswith("ray") else SPACE
    result = train(cfg, InMemorySource(data, batch_size=16, seed=0), gamma=0.95,
                   layout=LAYOUT,
                   action_space=space, run_dir=str(tmp_path / algo), seed=1,
                   normalizer=Normalizer.fit(data.state.numpy()))
    return result.checkpoint


@pytest.mark.parametrize("algo", ["bcq", "td3", "bcq-ensemble", "bcq-bounded", "iql-ray",
                                  "iql-full-ray"])
def test_exported_policy_gives_the_same_actions_in_a_process_without_mtf(
        tmp_path: Any, algo: str) -> None:
    ckpt = _trained(tmp_path, algo)
    exported = export_policy(ckpt, str(tmp_path / "export"))
    states = torch.randn(100, 3) * 5 + 10     # raw, unnormalised states
    torch.save(states, tmp_path / "states.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_MTF, exported.policy_path,
                    str(tmp_path / "states.pt"), str(tmp_path / "out.pt")],
                   check=True, cwd=str(tmp_path), env=env, timeout=120)
    out = torch.load(tmp_path / "out.pt")

    expected = build_policy(load_checkpoint(ckpt))(states)
    assert torch.equal(out["action"], expected)
    assert torch.equal(out["again"], out["action"])            # deterministic
    assert out["action"].shape == (100, 2) and out["action"].abs().max() <= 1.0
    if algo.endswith("ray"):     # canonical actions: one task at its upper bound per state
        assert torch.allclose(out["action"].max(dim=1).values, torch.ones(100))
    np.testing.assert_allclose(out["weights"].numpy(),
                               action_to_weights(out["action"].numpy().astype(np.float64),
                                                 np.array(SPACE.lo), np.array(SPACE.hi)),
                               rtol=1e-6, atol=1e-6)


def test_exported_policy_folds_in_the_state_normaliser(tmp_path: Any) -> None:
    ckpt = load_checkpoint(_trained(tmp_path, "td3"))
    raw = torch.randn(20, 3) * 5 + 10
    actor = build_policy(ckpt).policy                          # acts on normalised states
    normalised = (raw - ckpt.normalizer.mean) / ckpt.normalizer.std
    assert torch.equal(build_policy(ckpt)(raw), actor(normalised).clamp(-1, 1))
    assert not torch.equal(build_policy(ckpt)(raw), actor(raw).clamp(-1, 1))


def test_sidecar_carries_the_layout_and_the_action_space(tmp_path: Any) -> None:
    exported = export_policy(_trained(tmp_path, "bcq"), str(tmp_path / "export"))
    meta = json.load(open(exported.sidecar_path))
    assert meta["algorithm"] == "bcq" and meta["step"] == 10
    assert meta["feature_names"] == ["a", "b", "c"] and meta["feature_version"] == "v1"
    assert meta["action_tasks"] == ["click", "like"]
    assert (meta["lo"], meta["hi"]) == ([0.0, 0.5], [2.0, 1.5])
    assert (meta["table_path"], meta["table_version"]) == ("/lake/transitions", 7)
    assert meta["train_config"]["bcq"]["n_candidates"] == 4
    assert len(meta["state_mean"]) == len(meta["state_std"]) == 3
    assert sorted(os.listdir(tmp_path / "export")) == ["policy.json", "policy.pt"]  # no temps
