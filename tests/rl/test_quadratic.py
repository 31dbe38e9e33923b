"""The full-curvature quadratic critic (``iql.curvature=full``): its Q formula, its maximiser in
the action box against exact enumeration, TorchScript export and a checkpoint round trip."""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import pytest
import torch

from mtf.configtools import ConfigError, from_dict, to_dict
from mtf.rl.batch import Normalizer
from mtf.rl.config import IQLConfig, TrainConfig
from mtf.rl.iql import (BOX_ACTIVE_SET_STEPS, BOX_SWEEPS, CriticMaximiser, FullQuadraticHead,
                        QuadraticHead, QuadraticQ, box_maximiser)
from mtf.rl.loader import InMemorySource
from tests.rl.helpers import random_batch, tiny_config

CPU = torch.device("cpu")


def _inverse_softplus(x: float) -> float:
    return math.log(math.expm1(x))


@torch.no_grad()
def _set_outputs(head: torch.nn.Module, out: list[float]) -> None:
    """Make a head's network output the constant ``out`` for every state."""
    for layer in head.net:   # type: ignore[attr-defined]
        if isinstance(layer, torch.nn.Linear):
            layer.weight.zero_()
            layer.bias.zero_()
    head.net[-1].bias.copy_(torch.tensor(out))   # type: ignore[attr-defined]


def _maximise(p: list[list[float]], g: list[float]) -> torch.Tensor:
    """The box maximiser for one hand-built ``P``, ``g`` (float32, as the policy runs)."""
    return box_maximiser(torch.tensor([p]), torch.tensor([g]), BOX_ACTIVE_SET_STEPS,
                         BOX_SWEEPS)[0]


def _enumerated(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Exact box maximiser by enumeration (float64): every weight is free or on its -1 / +1
    face; solve for the free ones, keep the feasible point of highest value."""
    p, g = p.double(), g.double()
    k = g.shape[0]
    best, best_a = -math.inf, None
    for pattern in itertools.product((0.0, -1.0, 1.0), repeat=k):
        a = torch.tensor(pattern, dtype=torch.float64)
        free = a == 0
        if free.any():
            a[free] = torch.linalg.solve(p[free][:, free], g[free] - p[free][:, ~free] @ a[~free])
            if (a.abs() > 1.0 + 1e-12).any():
                continue
        value = (g @ a - 0.5 * a @ p @ a).item()
        if value > best:
            best, best_a = value, a
    assert best_a is not None
    return best_a


def test_full_head_q_is_v_plus_g_a_minus_half_a_p_a() -> None:
    head = FullQuadraticHead(1, 3, (4,), min_curvature=0.1)
    # outputs: v, g (3), L's diagonal before softplus (3), L's strict lower part (1,0) (2,0) (2,1)
    diag = [1.0, 0.5, 2.0]
    lower = [0.3, -0.7, 1.2]
    _set_outputs(head, [0.25, 0.4, -3.0, 1.5, *[_inverse_softplus(d) for d in diag], *lower])
    chol = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.5, 0.0], [-0.7, 1.2, 2.0]], dtype=torch.float64)
    p = chol @ chol.T + 0.1 * torch.eye(3, dtype=torch.float64)
    state = torch.zeros(4, 1)
    _, _, got_chol = head.parts(state)
    assert torch.allclose(got_chol[0].double(), chol, atol=1e-6)
    assert torch.allclose(head.curvature(got_chol)[2].double(), p, atol=1e-5)
    actions = torch.tensor([[0.5, -1.0, 0.2], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0],
                            [-0.3, 0.9, -0.6]], dtype=torch.float64)
    g = torch.tensor([0.4, -3.0, 1.5], dtype=torch.float64)
    want = [0.25 + g @ a - 0.5 * a @ p @ a for a in actions]
    got = head(state, actions.float()).ravel().tolist()
    assert got == pytest.approx([w.item() for w in want], rel=1e-6, abs=1e-6)
    q = QuadraticQ(1, 3, (4,), min_curvature=0.1, curvature="full")
    assert all(isinstance(h, FullQuadraticHead) for h in q.heads)
    with pytest.raises(ValueError, match="curvature must be one of"):
        QuadraticQ(1, 3, (4,), min_curvature=0.1, curvature="dense")


def test_box_maximiser_interior_optimum_is_p_inverse_g() -> None:
    # P^-1 g = (0.2, 0.2): det 1.75, (1 * 0.5 - 0.5 * 0.3, 2 * 0.3 - 0.5 * 0.5) / 1.75
    a = _maximise([[2.0, 0.5], [0.5, 1.0]], [0.5, 0.3])
    assert a.tolist() == pytest.approx([0.2, 0.2], abs=1e-6)


def test_box_maximiser_finds_the_face_optimum_where_clipping_is_wrong() -> None:
    p, g = [[1.0, 0.9], [0.9, 1.0]], [2.0, 0.0]
    unconstrained = torch.linalg.solve(torch.tensor(p), torch.tensor(g))     # (10.5, -9.5)
    assert unconstrained.clamp(-1, 1).tolist() == [1.0, -1.0]
    # on the face a_1 = 1, the best a_2 is -0.9 * 1 / 1 (inside), and Q's slope in a_1 there
    # is 2 - 1 + 0.81 > 0: the optimum is (1, -0.9), Q 1.905 > Q(1, -1) = 1.9
    a = _maximise(p, g)
    assert a.tolist() == pytest.approx([1.0, -0.9], abs=1e-5)
    assert _enumerated(torch.tensor(p), torch.tensor(g)).tolist() == pytest.approx([1.0, -0.9])


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 10.0])
def test_box_maximiser_matches_enumeration_of_faces_for_k3(scale: float) -> None:
    # Random P = L L^T + 0.1 I (badly conditioned for large L), g from small to past the box.
    g_gen = torch.Generator().manual_seed(int(scale * 10))
    chol = (torch.randn(40, 3, 3, generator=g_gen) * scale).tril()
    p = chol @ chol.transpose(1, 2) + 0.1 * torch.eye(3)
    g_scale = torch.tensor([0.3, 1.0, 3.0, 10.0]).repeat(10).unsqueeze(1)
    g = torch.randn(40, 3, generator=g_gen) * g_scale
    got = box_maximiser(p, g, BOX_ACTIVE_SET_STEPS, BOX_SWEEPS)
    want = torch.stack([_enumerated(p[i], g[i]) for i in range(40)])
    assert (got.double() - want).abs().max().item() < 1e-4
    # some optima are on faces with the other weights inside, where clipping P^-1 g is wrong
    naive = torch.linalg.solve(p, g.unsqueeze(2)).squeeze(2).clamp(-1, 1)
    mixed = (want.abs() >= 1 - 1e-9).any(1) & (want.abs() < 1 - 1e-6).any(1)
    assert mixed.sum() >= 3
    assert ((naive.double() - want).abs().max(1).values > 1e-2).sum() >= 3


def test_full_head_with_diagonal_l_acts_like_the_diagonal_head() -> None:
    diagonal = QuadraticHead(1, 3, (4,), min_curvature=0.1)
    full = FullQuadraticHead(1, 3, (4,), min_curvature=0.1)
    raw = [0.0, -1.0, 2.0]                          # diagonal head: p = softplus(raw) + 0.1
    g = [0.3, -2.0, 5.0]                            # g / p: inside, below -1, above +1
    _set_outputs(diagonal, [0.7, *g, *raw])
    # the full head's P_jj = L_jj^2 + 0.1: L_jj = sqrt(softplus(raw_j)), no interactions
    l_diag = [math.sqrt(math.log1p(math.exp(r))) for r in raw]
    _set_outputs(full, [0.7, *g, *[_inverse_softplus(d) for d in l_diag], 0.0, 0.0, 0.0])
    state = torch.zeros(5, 1)
    p = torch.nn.functional.softplus(torch.tensor(raw)) + 0.1
    want = (torch.tensor(g) / p).clamp(-1, 1)
    assert torch.allclose(diagonal.best(state), want.expand(5, 3), atol=1e-6)
    assert torch.allclose(full.best(state), want.expand(5, 3), atol=1e-6)
    actions = torch.rand(5, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(full(state, actions), diagonal(state, actions), atol=1e-5)


def test_scripted_full_maximiser_equals_the_eager_one() -> None:
    torch.manual_seed(0)
    q = QuadraticQ(5, 6, (16,), min_curvature=0.1, n=2, curvature="full")
    eager = CriticMaximiser(q).eval()
    scripted = torch.jit.script(eager)
    states = torch.randn(64, 5) * 3
    with torch.no_grad():
        want = eager(states)
        assert torch.equal(scripted(states), want)
        assert torch.equal(want, torch.stack([h.best(states) for h in q.heads]).mean(0))
    assert want.abs().max() <= 1.0


def test_full_curvature_trains_checkpoints_and_exports(tmp_path: Any) -> None:
    from mtf.rl.checkpoint import load_checkpoint
    from mtf.rl.export import build_policy, export_policy
    from mtf.rl.train import train
    from tests.rl.test_train import LAYOUT, SPACE

    data = random_batch(b=64, s=3, k=2, seed=1)
    result = train(tiny_config("iql", max_steps=6, checkpoint_every=6,
                               iql=IQLConfig(quadratic_critic=True, curvature="full")),
                   InMemorySource(data, batch_size=16, seed=0), gamma=0.95, layout=LAYOUT,
                   action_space=SPACE, run_dir=str(tmp_path / "run"), seed=1,
                   normalizer=Normalizer.fit(data.state.numpy()), device=CPU)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.train_config["iql"]["curvature"] == "full"
    policy = build_policy(ckpt)
    heads = policy.policy.critic.heads                                # type: ignore
    assert len(heads) == 2 and all(isinstance(h, FullQuadraticHead) for h in heads)
    exported = export_policy(result.checkpoint, str(tmp_path / "export"))
    states = torch.randn(20, 3)
    scripted = torch.jit.load(exported.policy_path)
    assert torch.equal(scripted(states), policy(states))
    assert exported.meta["train_config"]["iql"]["curvature"] == "full"
    # the weights a checkpoint holds only fit the critic it was trained with
    diagonal = QuadraticQ(3, 2, (16, 16), min_curvature=0.1)
    with pytest.raises(RuntimeError, match="size mismatch"):
        diagonal.load_state_dict(ckpt.agent["nets"]["critic"])


def test_curvature_option_is_validated_and_defaults_to_diagonal() -> None:
    assert IQLConfig().curvature == "diagonal"
    assert IQLConfig(quadratic_critic=True, curvature="full").curvature == "full"
    with pytest.raises(ConfigError, match=r"iql.curvature must be one of \['diagonal', 'full'\]"):
        from_dict(TrainConfig, {"iql": {"quadratic_critic": True, "curvature": "dense"}})
    with pytest.raises(ConfigError, match="iql.curvature=full shapes the quadratic critic"):
        from_dict(TrainConfig, {"iql": {"curvature": "full"}})
    # a checkpoint's train config written before the option existed rebuilds a diagonal critic
    old = to_dict(TrainConfig(algo="iql", iql=IQLConfig(quadratic_critic=True)))
    del old["iql"]["curvature"]
    assert from_dict(TrainConfig, old, prefix="train").iql.curvature == "diagonal"


def test_iql_full_is_a_comparison_learner_but_not_compared_by_default() -> None:
    from mtf.loop.config import LEARNERS, PipelineConfig

    full = TrainConfig(iql=IQLConfig(quadratic_critic=True, curvature="full"))
    label, make = LEARNERS["iql_full"]
    assert label == "IQL, quadratic critic with weight interactions"
    built = make(TrainConfig())
    assert (built.algo, built.iql.quadratic_critic, built.iql.curvature) == ("iql", True, "full")
    # the other IQL entries mean the same learner whatever curvature the config holds
    assert LEARNERS["iql_quadratic"][1](full).iql.curvature == "diagonal"
    assert LEARNERS["iql"][1](full).iql == dataclasses.replace(
        full.iql, quadratic_critic=False, curvature="diagonal")
    assert "iql_full" not in PipelineConfig().compare
