"""SimConfig validation, YAML/override loading, and World construction errors."""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest

from mtf.config import load_config
from mtf.configtools import ConfigError
from mtf.features import FeatureConfig
from mtf.fusion import FusionConfig, TaskSpec
from mtf.serving.exploration import ServingConfig
from mtf.sim.config import (CatalogConfig, PopulationConfig, ResponseConfig, SessionConfig,
                            SimConfig)
from mtf.sim.world import World


def test_defaults_are_valid_and_shards_cover_users() -> None:
    cfg = SimConfig(n_users=1001, users_per_shard=500)
    assert cfg.n_shards == 3
    assert cfg.start.isoformat() == "2026-01-01"


@pytest.mark.parametrize("make, match", [
    (lambda: SimConfig(n_users=0), r"sim.n_users must be > 0, got 0"),
    (lambda: SimConfig(start_date="2026-13-01"), r"sim.start_date must be a date"),
    (lambda: SimConfig(users_per_shard=0), r"sim.users_per_shard must be > 0"),
    (lambda: CatalogConfig(n_items=10), r"sim.catalog.n_items must be >= 100, got 10"),
    (lambda: CatalogConfig(quality_bait_corr=1.0), r"sim.catalog.quality_bait_corr"),
    (lambda: ServingConfig(noise_share=0.7, random_share=0.4),
     r"noise_share \+ random_share must be <= 1"),
    (lambda: ServingConfig(baseline_action=(0.0, 2.0)), r"baseline_action must lie in"),
    (lambda: ServingConfig(noise_sigma=0.0), r"serving.noise_sigma must be > 0"),
    (lambda: SessionConfig(page_size=6, n_candidates=5), r"n_candidates must be >= page_size"),
    (lambda: ResponseConfig(partial_ratio_max=0.95), r"partial_ratio_max < 0.9"),
    (lambda: ResponseConfig(skip_play_max_s=3.5), r"skip_play_max_s < min_watch_s"),
    (lambda: PopulationConfig(visit_prob_casual=1.5), r"visit_prob_casual must be in \[0, 1\]"),
])
def test_invalid_values_name_the_key(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_yaml_overrides_reach_nested_sections() -> None:
    cfg = load_config(None, ["serving.noise_sigma=0.2", "sim.session.page_size=4",
                             "serving.baseline_action=[0, 0, 0, 0.5, 0.5, 0]"])
    assert cfg.serving.noise_sigma == 0.2
    assert cfg.sim.session.page_size == 4
    assert cfg.serving.baseline_action == (0.0, 0.0, 0.0, 0.5, 0.5, 0.0)


def test_unknown_sim_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key sim.catalog.nitems"):
        load_config(None, ["sim.catalog.nitems=5"])


def test_noise_dist_must_be_a_known_kind() -> None:
    with pytest.raises(ConfigError, match=r"serving.noise_dist: must be one of"):
        load_config(None, ["serving.noise_dist=laplace"])


def test_world_rejects_a_task_without_ground_truth() -> None:
    fusion = FusionConfig(tasks=(TaskSpec("click"), TaskSpec("dwell_minutes")))
    with pytest.raises(ValueError, match=r"fusion.tasks \['dwell_minutes'\] have no simulated"):
        World.build(fusion=fusion)


def test_world_rejects_a_baseline_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"baseline_action has 2 values but fusion.tasks has 6"):
        World.build(serving=ServingConfig(baseline_action=(0.0, 0.0)))


def test_world_rejects_skip_thresholds_that_disagree_with_the_features() -> None:
    with pytest.raises(ValueError, match=r"min_watch_s \(3.0\) must be >= features.skip_s"):
        World.build(features=FeatureConfig(skip_s=5.0))


def test_world_rejects_profile_columns_it_does_not_simulate() -> None:
    with pytest.raises(ValueError, match=r"features.profile_columns \['income'\] are not"):
        World.build(features=FeatureConfig(profile_columns=("age", "income")))


def test_world_from_mtf_config_uses_the_pipeline_sections() -> None:
    cfg = load_config(None, ["seed=3", "mdp.gamma=0.9", "reward.w_like=0.7"])
    world = World.from_config(cfg)
    assert (world.seed, world.gamma, world.reward.w_like) == (3, 0.9, 0.7)
    assert world.fusion == cfg.fusion
    same = World.from_config(dataclasses.replace(cfg))
    assert (same.catalog.quality == world.catalog.quality).all()
