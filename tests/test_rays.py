"""The ray action parametrisation: canonical actions, face exploration and its densities, the
quadratic critics' maximiser on the faces, and a ray-trained policy end to end."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtf.fusion import (FusionConfig, TaskSpec, action_to_weights, canonical_action,
                        is_canonical, weights_to_action)
from mtf.rays import canonical_actions, face_log_density
from mtf.rl.iql import box_quadratic, diagonal_face_maximiser, full_face_maximiser
from mtf.rl.layout import ActionSpace
from mtf.serving.exploration import ServingConfig
from mtf.serving.exploration import face_log_density as np_face_log_density
from mtf.serving.export import ConstantPolicy, ExplorationPolicy
from mtf.sim.logging_policy import LoggingPolicy
from mtf.sim.policies import FixedPolicy

LO = np.array([0.0, 0.0, 0.5])
HI = np.array([2.0, 1.0, 2.0])
RAYS3 = FusionConfig(tasks=(TaskSpec("a", 0.0, 2.0), TaskSpec("b", 0.0, 1.0),
                            TaskSpec("c", 0.5, 2.0)), action_space="ray")


def test_canonical_action_by_hand() -> None:
    lo, hi = np.zeros(2), np.full(2, 2.0)
    # alpha (1, 1) -> (2, 2); alpha (0.5, 1) -> (1, 2); alpha (0, 0) (no ranking) -> hi
    np.testing.assert_allclose(canonical_action(np.array([[0.0, 0.0], [-0.5, 0.0], [-1, -1]]),
                                                lo, hi), [[1, 1], [0, 1], [1, 1]])
    # unequal intervals: alpha (1, 0.25, 1) -> ratios (0.5, 0.25, 0.5) -> alpha (2, 0.5, 2)
    a = weights_to_action(np.array([1.0, 0.25, 1.0]), LO, HI)
    np.testing.assert_allclose(action_to_weights(canonical_action(a, LO, HI), LO, HI),
                               [2.0, 0.5, 2.0], atol=1e-12)
    assert is_canonical(canonical_action(a, LO, HI)) and not is_canonical(a)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.55, 1.0), min_size=3, max_size=3), st.floats(0.5, 1.0))
def test_one_action_per_ray(frac: list[float], c: float) -> None:
    """alpha and c * alpha (both in the box) have one canonical action, which is fixed."""
    alpha = np.array(frac) * HI          # >= lo: 0.55 * 2 > 0.5
    scaled = c * alpha
    if np.any(scaled < LO):
        return
    a1 = canonical_action(weights_to_action(alpha, LO, HI), LO, HI)
    a2 = canonical_action(weights_to_action(scaled, LO, HI), LO, HI)
    np.testing.assert_allclose(a1, a2, atol=1e-9)
    np.testing.assert_allclose(canonical_action(a1, LO, HI), a1, atol=1e-12)
    assert a1.max() == pytest.approx(1.0)
    # the ranking is the same: weights are proportional
    w1, w = action_to_weights(a1, LO, HI), alpha
    np.testing.assert_allclose(w1 / w1.sum(), w / w.sum(), atol=1e-9)


def test_torch_canonical_equals_numpy() -> None:
    a = np.random.default_rng(0).uniform(-1, 1, (500, 3))
    got = canonical_actions(torch.as_tensor(a), torch.as_tensor(LO), torch.as_tensor(HI))
    np.testing.assert_allclose(got.numpy(), canonical_action(a, LO, HI), atol=1e-12)


def test_face_log_density_by_hand() -> None:
    per_task = np.log(np.array([[0.5, 0.25, 0.125], [0.5, 0.25, 0.125], [0.5, 0.25, 0.125]]))
    actions = np.array([[0.2, 1.0, -0.3], [1.0, 0.1, 0.2], [0.2, 0.9, 0.1]])
    allowed = np.array([[True, True, False], [False, True, True], [True, True, True]])
    # row 0: face 1 of 2 allowed: log(1/2 * 0.5 * 0.125); row 1: face 0 not allowed;
    # row 2: off the faces
    want = [math.log(0.5 * 0.5 * 0.125), -math.inf, -math.inf]
    np.testing.assert_allclose(np_face_log_density(per_task, actions, allowed), want)
    got = face_log_density(torch.as_tensor(per_task), torch.as_tensor(actions),
                           torch.as_tensor(allowed))
    np.testing.assert_allclose(got.numpy(), want)


@pytest.mark.parametrize("noise_dist, random_dist", [("gaussian", "gaussian"),
                                                     ("uniform", "uniform")])
def test_ray_exploration_serving_equals_simulator(noise_dist: str, random_dist: str) -> None:
    """The TorchScript exploration module and the simulator's logging policy: canonical
    actions, the same faces rule, equal log-densities."""
    cfg = ServingConfig(noise_dist=noise_dist, random_dist=random_dist)
    base = torch.tensor([0.3, -0.2, 0.1])
    module = torch.jit.script(ExplorationPolicy(ConstantPolicy(base), cfg, torch.as_tensor(LO),
                                                torch.as_tensor(HI), rays=True))
    torch.manual_seed(0)
    n = 3000
    groups = np.tile([0, 1, 2], n // 3)
    a, lp = module(torch.zeros(n, 2), torch.as_tensor(groups))
    a, lp = a.double().numpy(), lp.numpy()
    mu = canonical_action(base.double().numpy()[None, :], LO, HI)[0]
    np.testing.assert_allclose(a[groups == 0], np.tile(mu, ((groups == 0).sum(), 1)), atol=1e-6)
    assert is_canonical(a, 1e-6).all()
    mu_face = int(np.argmax(mu))
    assert (a[groups == 1].argmax(axis=1) == mu_face).all()   # the noise keeps pi(s)'s face
    faces = np.bincount(a[groups == 2].argmax(axis=1), minlength=3) / (groups == 2).sum()
    np.testing.assert_allclose(faces, 1 / 3, atol=0.04)        # the random group: uniform
    sim = LoggingPolicy(FixedPolicy(base.double().numpy()), cfg, 3, RAYS3)
    ref = sim.log_density(np.zeros((n, 2)), groups, a)
    assert np.isnan(lp[groups == 0]).all() and np.isfinite(lp[groups != 0]).all()
    np.testing.assert_allclose(lp[groups != 0], ref[groups != 0], rtol=1e-5, atol=1e-5)
    if random_dist == "uniform":     # uniform on the faces: 1/3 * (1/2)^2
        np.testing.assert_allclose(lp[groups == 2], math.log(1 / 12))


def test_simulator_ray_exploration_at_a_corner() -> None:
    """A policy on several faces at once (equal weights): the noise group picks among them
    uniformly, and a box-mode action has no density on the faces."""
    cfg = ServingConfig(noise_sigma=0.2)
    pol = LoggingPolicy(FixedPolicy(np.zeros(3)), cfg, 3,
                        FusionConfig(tasks=(TaskSpec("a"), TaskSpec("b"), TaskSpec("c")),
                                     action_space="ray"))
    n = 6000
    groups = np.ones(n, dtype=np.int8)
    a, lp = pol.act(np.zeros((n, 2), np.float32), groups, np.random.default_rng(3))
    assert np.isfinite(lp).all() and is_canonical(a).all()
    np.testing.assert_allclose(np.bincount(a.argmax(axis=1)) / n, 1 / 3, atol=0.03)
    box = np.full((1, 3), 0.5)
    assert pol.log_density(np.zeros((1, 2), np.float32), groups[:1], box)[0] == -math.inf


def test_diagonal_face_maximiser_by_hand() -> None:
    # box optimum (0.5, -1 clipped) is off the faces; pinning 0 costs 0.5 * (1 - 0.5)^2 = 0.125,
    # pinning 1 costs q(-1) - q(1) = g * (-2) = 2 * 0.3 = 0.6: face 0 wins
    g = torch.tensor([[0.5, -0.3]], dtype=torch.float64)
    p = torch.tensor([[1.0, 0.1]], dtype=torch.float64)
    np.testing.assert_allclose(diagonal_face_maximiser(g, p).numpy(), [[1.0, -1.0]])
    # a box optimum on a face is the answer
    g2 = torch.tensor([[3.0, 0.2]], dtype=torch.float64)
    np.testing.assert_allclose(diagonal_face_maximiser(g2, p).numpy(), [[1.0, 1.0]])


def test_face_maximisers_against_a_grid() -> None:
    gen = torch.Generator().manual_seed(0)
    b, k = 64, 3
    chol = torch.randn(b, k, k, generator=gen, dtype=torch.float64).tril()
    p = chol @ chol.transpose(1, 2) + 0.1 * torch.eye(k, dtype=torch.float64)
    g = 3 * torch.randn(b, k, generator=gen, dtype=torch.float64)
    best = full_face_maximiser(p, g, 8, 20)
    assert (best.max(dim=1).values == 1.0).all()
    grid = torch.linspace(-1, 1, 81, dtype=torch.float64)
    top = torch.full((b,), -math.inf, dtype=torch.float64)
    for j in range(k):
        for vals in itertools.product(grid.tolist(), repeat=k - 1):
            pt = torch.tensor(list(vals[:j]) + [1.0] + list(vals[j:]), dtype=torch.float64)
            top = torch.maximum(top, box_quadratic(p, g, pt.expand(b, k)))
    assert (box_quadratic(p, g, best) >= top - 1e-9).all()
    diag = torch.rand(b, k, generator=gen, dtype=torch.float64) + 0.1
    np.testing.assert_allclose(diagonal_face_maximiser(g, diag).numpy(),
                               full_face_maximiser(torch.diag_embed(diag), g, 8, 20).numpy(),
                               atol=1e-9)


def test_action_space_records_its_mode() -> None:
    space = ActionSpace.from_fusion(RAYS3)
    assert space.rays and ActionSpace.from_dict(space.to_dict()) == space
    old = {"tasks": ["a"], "lo": [0.0], "hi": [1.0]}           # a checkpoint from before
    assert ActionSpace.from_dict(old).mode == "box"
    with pytest.raises(ValueError, match="fusion.action_space must be one of"):
        FusionConfig(action_space="simplex")
