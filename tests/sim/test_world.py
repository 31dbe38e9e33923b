"""The response model, the MTL model and the satisfaction/leave dynamics."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mtf.sim.config import MtlConfig
from mtf.sim.rollout import dedupe_mask, top_slots
from mtf.sim.world import (N_ITEM_UNIFORMS, World, candidate_truth, leave_probability,
                           mtl_predict, next_satisfaction, sample_page, task_values)

from .conftest import SMALL_SIM


Batch = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def batch(world: World) -> Batch:
    rng = np.random.default_rng(0)
    b, c = 200, 12
    return {"pref": rng.standard_normal((b, world.sim.catalog.n_categories)),
            "sat": rng.normal(0.0, 0.5, b), "base": rng.normal(0.0, 0.3, b),
            "sens": rng.uniform(0.0, 1.5, b),
            "items": rng.integers(0, world.catalog.n_items, (b, c))}


def test_catalog_letdown_is_bait_over_quality(world: World) -> None:
    cat = world.catalog
    np.testing.assert_array_equal(cat.letdown, np.maximum(cat.bait - cat.quality, 0.0))
    assert cat.duration_s.min() >= SMALL_SIM.catalog.duration_min_s
    assert cat.duration_s.max() <= SMALL_SIM.catalog.duration_max_s
    assert -0.4 < np.corrcoef(cat.quality, cat.bait)[0, 1] < -0.2


def test_task_values_are_probabilities_in_task_order(world: World, batch: Batch) -> None:
    truth = candidate_truth(world, batch["pref"], batch["sat"], batch["items"])
    values = task_values(world, truth, batch["sat"], batch["base"], batch["sens"])
    assert values.shape == (*batch["items"].shape, world.k)
    assert np.all((values > 0.0) & (values < 1.0))
    j = world.fusion.names.index
    np.testing.assert_allclose(values[..., j("click")], truth.p_click)
    np.testing.assert_allclose(values[..., j("finish")], truth.p_click * truth.p_finish_c)


def test_exit_rises_with_letdown_only_for_sensitive_users(world: World, batch: Batch) -> None:
    truth = candidate_truth(world, batch["pref"], batch["sat"], batch["items"])
    j = world.fusion.names.index("exit")
    tolerant = task_values(world, truth, batch["sat"], batch["base"], np.zeros(200))[..., j]
    sensitive = task_values(world, truth, batch["sat"], batch["base"], np.full(200, 1.5))[..., j]
    has_letdown = truth.exp_letdown > 0
    assert np.all(sensitive[has_letdown] > tolerant[has_letdown])
    np.testing.assert_allclose(sensitive[~has_letdown], tolerant[~has_letdown])


def test_leave_probability_falls_as_satisfaction_rises(world: World) -> None:
    s = np.linspace(-4.0, 4.0, 81)
    p = leave_probability(world, s)
    assert np.all(np.diff(p) < 0)
    assert p.min() >= world.sim.satisfaction.leave_floor
    g = world.sim.satisfaction
    np.testing.assert_allclose(next_satisfaction(world, np.array([1.0]), np.array([0.2]), 0.3),
                               [0.2 + g.persistence * 0.8 + 0.3 - g.fatigue])


def test_mtl_without_errors_predicts_the_truth() -> None:
    exact = World.build(sim=dataclasses.replace(
        SMALL_SIM, mtl=MtlConfig(task_bias_sd=0.0, item_error_sd=0.0, noise_sd=0.0)))
    truths = np.random.default_rng(1).uniform(0.01, 0.99, (5, 7, exact.k))
    items = np.zeros((5, 7), dtype=np.int64)
    np.testing.assert_allclose(mtl_predict(exact, truths, items, np.ones_like(truths)), truths)


def test_mtl_errors_are_noisy_but_informative(world: World, batch: Batch) -> None:
    truth = candidate_truth(world, batch["pref"], batch["sat"], batch["items"])
    values = task_values(world, truth, batch["sat"], batch["base"], batch["sens"])
    noise = np.random.default_rng(2).standard_normal(values.shape).astype(np.float32)
    preds = mtl_predict(world, values, batch["items"], noise)
    for t in range(world.k):
        corr = np.corrcoef(preds[..., t].ravel(), values[..., t].ravel())[0, 1]
        assert 0.5 < corr < 0.9999, world.fusion.names[t]


def test_sampled_page_is_consistent(world: World, batch: Batch) -> None:
    truth = candidate_truth(world, batch["pref"], batch["sat"], batch["items"])
    shown = np.tile(np.arange(6), (200, 1))
    items = batch["items"][:, :6]
    u = np.random.default_rng(3).random((200, 6, N_ITEM_UNIFORMS))
    page = sample_page(world, truth, shown, items, batch["sens"], u)
    r = world.sim.response
    dur = world.catalog.duration_s[items]
    np.testing.assert_array_equal(page.clicked, u[..., 0] < truth.p_click[:, :6])
    assert np.all(page.play_time_s[page.clicked] >= r.min_watch_s)        # click = not skipped
    assert np.all(page.play_time_s[~page.clicked] < r.skip_play_max_s)
    np.testing.assert_array_equal(page.play_time_s[page.finished], dur[page.finished])
    unfinished = page.clicked & ~page.finished
    assert np.all(page.play_time_s[unfinished] < 0.9 * dur[unfinished])
    for flag in (page.finished, page.liked, page.shared, page.commented, page.followed):
        assert not np.any(flag & ~page.clicked)
    np.testing.assert_allclose(page.experience[~page.clicked],
                               -world.sim.satisfaction.skip_penalty)


def test_expected_play_time_matches_sampling(world: World) -> None:
    rng = np.random.default_rng(4)
    n = 40_000
    items = np.repeat(np.array([[3, 17, 256, 999]]), n, axis=0)
    pref = np.zeros((n, world.sim.catalog.n_categories))
    sat = np.zeros(n)
    truth = candidate_truth(world, pref, sat, items)
    page = sample_page(world, truth, np.tile(np.arange(4), (n, 1)), items, np.zeros(n),
                       rng.random((n, 4, N_ITEM_UNIFORMS)))
    expected = truth.exp_play_s[0]
    se = page.play_time_s.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(page.play_time_s.mean(axis=0) - expected) < 4 * se)


def test_dedupe_mask_keeps_first_occurrence() -> None:
    items = np.array([[5, 3, 5, 1, 3, 5], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(dedupe_mask(items), [[0, 0, 1, 0, 1, 1], [0] * 6])


def test_top_slots_returns_best_first() -> None:
    scores = np.array([[0.1, 0.9, -np.inf, 0.5, 0.7], [3.0, 2.0, 1.0, 0.0, -1.0]])
    np.testing.assert_array_equal(top_slots(scores, 3), [[1, 4, 3], [0, 1, 2]])
