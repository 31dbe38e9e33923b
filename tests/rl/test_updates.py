"""Shared update helpers: Bellman target, double-Q mix, candidate max, critic loss, Polyak."""
from __future__ import annotations

import torch
from torch import nn

from mtf.rl.updates import (bellman_target, ensemble_critic_loss, frozen, max_over_candidates,
                            mix_ensemble_q, soft_update)


def test_bellman_target_masks_only_terminal_rows() -> None:
    reward = torch.tensor([[1.0], [2.0]])
    is_terminal = torch.tensor([[1.0], [0.0]])
    next_value = torch.tensor([[10.0], [10.0]])
    torch.testing.assert_close(bellman_target(reward, is_terminal, next_value, 0.95),
                               torch.tensor([[1.0], [2.0 + 9.5]]))


def test_mix_ensemble_q_interpolates_between_min_and_max() -> None:
    q = torch.stack([torch.tensor([[1.0], [5.0]]), torch.tensor([[3.0], [2.0]])])   # (2, B, 1)
    torch.testing.assert_close(mix_ensemble_q(q, 1.0), torch.tensor([[1.0], [2.0]]))
    torch.testing.assert_close(mix_ensemble_q(q, 0.75), torch.tensor([[1.5], [2.75]]))


def test_max_over_candidates_groups_consecutive_rows_per_state() -> None:
    q = torch.tensor([[1.0], [4.0], [2.0], [-1.0], [-3.0], [-2.0]])   # 2 states x 3 candidates
    torch.testing.assert_close(max_over_candidates(q, 3), torch.tensor([[4.0], [-1.0]]))


def test_ensemble_critic_loss_sums_the_mses_and_ignores_target_gradients() -> None:
    q = torch.tensor([[[1.0], [2.0]], [[0.0], [0.0]]], requires_grad=True)   # (2, B, 1)
    target = torch.tensor([[1.0], [0.0]], requires_grad=True)
    loss = ensemble_critic_loss(q, target)
    torch.testing.assert_close(loss, torch.tensor((0 + 4) / 2 + (1 + 0) / 2))
    loss.backward()
    assert target.grad is None


def test_soft_update_is_exact_polyak_averaging() -> None:
    target, source = nn.Linear(2, 1), nn.Linear(2, 1)
    t0 = [p.detach().clone() for p in target.parameters()]
    soft_update(target, source, 0.05)
    for p, p0, s in zip(target.parameters(), t0, source.parameters()):
        torch.testing.assert_close(p, 0.95 * p0 + 0.05 * s)


def test_frozen_restores_requires_grad_even_after_an_error() -> None:
    net = nn.Linear(2, 2)
    net.bias.requires_grad_(False)
    try:
        with frozen(net):
            assert not any(p.requires_grad for p in net.parameters())
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert net.weight.requires_grad and not net.bias.requires_grad
