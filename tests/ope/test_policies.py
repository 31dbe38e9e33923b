"""Target policies: density, constant and exported policies, layout checks, discovery."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mtf.ope.policies import (check_policy, discover_exports, fixed_policy, load_exported,
                              module_policy, truncated_normal_logpdf)
from mtf.sim.logging_policy import truncated_normal_logpdf as sim_logpdf
from tests.ope.tables import write_export


@pytest.mark.parametrize("mu", [-1.0, -0.3, 0.0, 0.7, 1.0])
@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.5])
def test_target_density_integrates_to_one_and_matches_the_simulator(mu: float,
                                                                   sigma: float) -> None:
    x = np.linspace(-1.0, 1.0, 100_001)
    a = torch.tensor(x)[:, None]
    logp = truncated_normal_logpdf(a, torch.full_like(a, mu), sigma).numpy()
    assert np.trapz(np.exp(logp), x) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(logp, sim_logpdf(x[:, None], mu, sigma)[:, 0], rtol=1e-12)


def test_target_density_sums_over_tasks() -> None:
    a = torch.tensor([[0.1, -0.2, 0.9]])
    mu = torch.tensor([[0.0, 0.0, 1.0]])
    want = sum(sim_logpdf(np.array([[a[0, j].item()]]), mu[0, j].item(), 0.2)[0, 0]
               for j in range(3))
    assert truncated_normal_logpdf(a, mu, 0.2).item() == pytest.approx(want, rel=1e-12)


def test_fixed_policy_returns_its_action_for_every_state() -> None:
    p = fixed_policy("c", [0.25, -1.0])
    out = p.module()(torch.randn(4, 7))
    torch.testing.assert_close(out, torch.tensor([[0.25, -1.0]] * 4))
    assert p.describe()["action"] == [0.25, -1.0]
    with pytest.raises(ValueError, match="fixed policy 'bad': action must be"):
        fixed_policy("bad", [0.0, 1.5])


def test_exported_policy_is_loaded_and_checked_against_the_layout(tmp_path) -> None:
    d = write_export(str(tmp_path / "bc-run1" / "export"))
    p = load_exported(d)
    assert p.kind == "exported" and p.name == "bc:bc-run1"
    check_policy(p, ["f0", "f1", "f2"], ["click", "like"])
    with pytest.raises(ValueError, match=r"policy 'bc:bc-run1' .* trained on features"):
        check_policy(p, ["f0", "f1", "g2"], ["click", "like"])
    with pytest.raises(ValueError, match="acts on tasks"):
        check_policy(p, ["f0", "f1", "f2"], ["like", "click"])
    with pytest.raises(FileNotFoundError, match="lacks policy.json"):
        os.remove(os.path.join(d, "policy.json"))
        load_exported(d)


def test_module_policy_with_wrong_output_shape_is_refused() -> None:
    class Wrong(torch.nn.Module):
        def forward(self, state: torch.Tensor) -> torch.Tensor:
            return state[:, :1].clamp(-1, 1)

    with pytest.raises(ValueError, match=r"policy 'wrong' .* expected \(2, 2\)"):
        check_policy(module_policy("wrong", Wrong()), ["f0", "f1", "f2"], ["a", "b"])


def test_discovery_keeps_the_newest_export_per_algorithm(tmp_path) -> None:
    old = write_export(str(tmp_path / "bc-1" / "export"), exported_utc="2026-01-01T00:00:00Z")
    new = write_export(str(tmp_path / "bc-2" / "export"), exported_utc="2026-01-02T00:00:00Z")
    bcq = write_export(str(tmp_path / "bcq-1"), algorithm="bcq")
    assert discover_exports(str(tmp_path)) == sorted([new, bcq])
    assert discover_exports(str(tmp_path), latest_per_algorithm=False) == sorted([old, new, bcq])
