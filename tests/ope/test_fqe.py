"""FQE maths on hand-set networks, and fitting behaviour on tiny data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mtf.ope.fqe import (FqeData, FqeSettings, QNetwork, conservative_fqe_loss, fit_fqe,
                         q_scale, td_target)


class FirstActionQ(nn.Module):
    """Q(s, a) = a_0 + s_0 (hand-set, for exact loss values)."""

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return action[:, 0] + state[:, 0]


class ConstQ(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.full((state.shape[0],), self.value)


def test_td_target_bootstraps_only_through_non_terminal_steps() -> None:
    r = torch.tensor([1.0, 2.0, 3.0])
    not_done = torch.tensor([1.0, 0.0, 1.0])   # a truncated step has not_done = 1
    y = td_target(ConstQ(10.0), r, not_done, torch.zeros(3, 2), torch.zeros(3, 1), gamma=0.5)
    torch.testing.assert_close(y, torch.tensor([6.0, 2.0, 8.0]))


def test_conservative_loss_is_alpha_r_plus_t() -> None:
    s = torch.tensor([[0.0], [1.0]])
    a = torch.tensor([[0.2], [-0.4]])
    pi = torch.tensor([[1.0], [0.0]])
    y = torch.tensor([0.0, 1.0])
    loss, td, reg, q_data, q_pi = conservative_fqe_loss(FirstActionQ(), s, a, pi, y, alpha=0.5)
    # Q(s, a) = [0.2, 0.6]; Q(s, pi) = [1.0, 1.0]
    assert td.item() == pytest.approx(((0.2 - 0.0) ** 2 + (0.6 - 1.0) ** 2) / 2)
    assert reg.item() == pytest.approx(((1.0 - 0.2) + (1.0 - 0.6)) / 2)
    assert loss.item() == pytest.approx(0.5 * reg.item() + td.item())
    assert (q_data.item(), q_pi.item()) == pytest.approx((0.4, 1.0))
    plain, td0, reg0, _, _ = conservative_fqe_loss(FirstActionQ(), s, a, pi, y, alpha=0.0)
    assert plain.item() == pytest.approx(td.item()) and reg0.item() == pytest.approx(reg.item())


def test_q_network_starts_at_zero_and_normalises_states() -> None:
    q = QNetwork(2, 1, (8,), torch.tensor([10.0, -5.0]), torch.tensor([2.0, 4.0]), scale=3.0)
    assert torch.all(q(torch.randn(5, 2), torch.rand(5, 1)) == 0.0)
    assert q_scale(torch.tensor([1.0, -3.0]), gamma=0.9) == pytest.approx(20.0)
    assert q_scale(torch.tensor([1.0]), gamma=1.0) == pytest.approx(100.0)
    torch.jit.script(q)  # shipped to Spark workers as TorchScript


def ood_data(n: int = 1500, seed: int = 0) -> tuple[FqeData, FqeData]:
    """One-step data with logged actions in [-0.3, 0.3]; r = 1 - a^2 + noise.

    Returns the data evaluated for pi = 0 (inside the data) and for pi = 1 (outside).
    """
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 2))
    a = rng.uniform(-0.3, 0.3, size=(n, 1))
    r = 1.0 - a[:, 0] ** 2 + 0.05 * rng.normal(size=n)
    ones = np.ones(n, dtype=bool)

    def for_action(c: float) -> FqeData:
        pi = np.full((n, 1), c)
        return FqeData.from_numpy(s, a, r, np.zeros_like(s), ones, pi, pi, ones)

    return for_action(0.0), for_action(1.0)


FAST = dict(gamma=0.9, lr=3e-3, batch_size=128, n_iterations=300, hidden=(32, 32),
            target_update_every=25, log_every=50, seed=0)


def test_fit_recovers_an_in_distribution_value_and_logs_curves() -> None:
    torch.set_num_threads(1)
    inside, _ = ood_data()
    fit = fit_fqe(inside, FqeSettings(alpha=0.0, **FAST))
    assert fit.curve[-1]["v0"] == pytest.approx(1.0, abs=0.05)   # r(a = 0) = 1
    assert fit.curve[-1]["td"] < fit.curve[0]["td"]
    assert [c["step"] for c in fit.curve] == [50, 100, 150, 200, 250, 300]
    assert not fit.q.training


def test_conservative_fit_is_lower_than_plain_out_of_distribution() -> None:
    torch.set_num_threads(1)
    inside, outside = ood_data()
    v = {}
    for name, data in (("in", inside), ("out", outside)):
        for alpha in (0.0, 0.5e-3):
            v[name, alpha] = fit_fqe(data, FqeSettings(alpha=alpha, **FAST)).curve[-1]["v0"]
    # Same seed, same minibatches: the only difference is the regulariser.
    assert v["out", 0.5e-3] < v["out", 0.0] - 0.02
    assert abs(v["in", 0.5e-3] - v["in", 0.0]) < 0.5 * (v["out", 0.0] - v["out", 0.5e-3])


def test_fqe_data_rejects_ragged_columns() -> None:
    with pytest.raises(ValueError, match="FqeData.reward has 2 rows, state has 3"):
        FqeData(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(2), torch.zeros(3, 1),
                torch.ones(3), torch.zeros(3, 1), torch.zeros(3, 1), torch.ones(3, dtype=bool))
