"""Serving-side exploration: same distributions and densities as the simulator's logging policy."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mtf.serving.exploration import ServingConfig
from mtf.serving.export import (EXPLORE_FILE, ConstantPolicy, ExplorationPolicy, assign_groups,
                                export_exploration)
from mtf.sim.logging_policy import LoggingPolicy
from mtf.sim.policies import FixedPolicy

K = 3
LO, HI = np.zeros(K), np.full(K, 2.0)


class TanhLinear(torch.nn.Module):
    """A small state-dependent policy with actions near the bounds for some states."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, K)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0, -1.5, 0, 0], [0.5, 0.5, 1, 0]]))
            self.lin.bias.copy_(torch.tensor([0.5, 0.0, -0.2]))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(s))


def numpy_policy(module: torch.nn.Module):
    def f(states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(states, dtype=torch.float32)).double().numpy()
    return f


@pytest.mark.parametrize("noise_dist, random_dist", [("gaussian", "gaussian"),
                                                     ("uniform", "uniform")])
def test_logp_equals_the_simulators_logging_policy(noise_dist: str, random_dist: str) -> None:
    cfg = ServingConfig(noise_dist=noise_dist, random_dist=random_dist, noise_sigma=0.1,
                            random_sigma=0.5)
    net = TanhLinear()
    module = ExplorationPolicy(net, cfg, torch.as_tensor(LO), torch.as_tensor(HI))
    torch.manual_seed(0)
    states = np.random.default_rng(0).normal(size=(600, 4)).astype(np.float32)
    groups = np.tile([0, 1, 2], 200)
    a, lp = module(torch.as_tensor(states), torch.as_tensor(groups))
    a, lp = a.numpy().astype(np.float64), lp.numpy()
    assert np.all(np.abs(a) <= 1.0)
    mu = numpy_policy(net)(states)
    np.testing.assert_allclose(a[groups == 0], mu[groups == 0], atol=1e-6)
    assert np.isnan(lp[groups == 0]).all() and np.isfinite(lp[groups != 0]).all()
    ref = LoggingPolicy(numpy_policy(net), cfg, K).log_density(states, groups, a)
    np.testing.assert_allclose(lp[groups != 0], ref[groups != 0], rtol=1e-4, atol=1e-4)


def test_truncated_noise_has_the_right_distribution() -> None:
    """Empirical CDF of the noise group's actions matches the truncated normal's CDF."""
    cfg = ServingConfig(noise_sigma=0.3)
    mu = 0.8   # close to the upper bound: truncation matters
    module = ExplorationPolicy(ConstantPolicy(torch.full((K,), mu)), cfg,
                               torch.as_tensor(LO), torch.as_tensor(HI))
    torch.manual_seed(1)
    n = 20000
    a, _ = module(torch.zeros(n, 4), torch.ones(n, dtype=torch.int64))
    x = a[:, 0].double().numpy()
    phi = lambda v: 0.5 * math.erfc(-v / math.sqrt(2))
    lo, hi = phi((-1 - mu) / 0.3), phi((1 - mu) / 0.3)
    for q in (0.2, 0.5, 0.8, 0.95):
        want = (phi((q - mu) / 0.3) - lo) / (hi - lo)
        assert abs((x <= q).mean() - want) < 0.012, q
    assert x.max() <= 1.0 and x.min() >= -1.0


def test_groups_are_stable_and_have_the_configured_shares() -> None:
    cfg = ServingConfig(noise_share=0.3, random_share=0.1)
    users = [f"u{i:08d}" for i in range(20000)]
    g = assign_groups(users, cfg)
    assert np.array_equal(g, assign_groups(users, cfg))
    shares = np.bincount(g, minlength=3) / len(g)
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1], atol=0.015)


def test_exported_module_runs_without_mtf(tmp_path) -> None:
    cfg = ServingConfig()
    out = export_exploration(TanhLinear(), cfg, LO, HI, str(tmp_path / "exp"),
                             meta={"source": "test"})
    states = torch.randn(50, 4, generator=torch.Generator().manual_seed(3))
    groups = torch.tensor([0, 1, 2] * 16 + [1, 2])
    torch.save({"s": states, "g": groups}, tmp_path / "in.pt")
    module = torch.jit.load(os.path.join(out, EXPLORE_FILE))
    torch.manual_seed(5)
    want_a, want_lp = module(states, groups)
    code = (f"import sys, torch; sys.modules['mtf'] = None\n"
            f"m = torch.jit.load({os.path.join(out, EXPLORE_FILE)!r}); "
            f"d = torch.load({str(tmp_path / 'in.pt')!r}); torch.manual_seed(5)\n"
            f"a, lp = m(d['s'], d['g']); torch.save({{'a': a, 'lp': lp, "
            f"'w': m.fusion_weights(a)}}, {str(tmp_path / 'out.pt')!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    got = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(got["a"], want_a)
    torch.testing.assert_close(got["lp"], want_lp, equal_nan=True)
    torch.testing.assert_close(got["w"], LO_T + (want_a + 1) * 0.5 * (HI_T - LO_T))


LO_T, HI_T = torch.as_tensor(LO).float(), torch.as_tensor(HI).float()


def test_fixed_baseline_matches_fixed_policy() -> None:
    action = np.array([0.2, -0.4, 0.9])
    module = ExplorationPolicy(ConstantPolicy(torch.as_tensor(action)), ServingConfig(),
                               torch.as_tensor(LO), torch.as_tensor(HI))
    states = np.zeros((5, 4), dtype=np.float32)
    a, _ = module(torch.as_tensor(states), torch.zeros(5, dtype=torch.int64))
    np.testing.assert_allclose(a.numpy(), FixedPolicy(action)(states), atol=1e-7)
