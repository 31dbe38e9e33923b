"""TrainConfig: paper defaults, validation messages, strict YAML mapping."""
from __future__ import annotations

import pytest

from mtf.configtools import ConfigError, from_dict
from mtf.mdp import MdpConfig
from mtf.rl.config import (BCQConfig, CQLConfig, IQLConfig, LearnerConfig, LoaderConfig,
                           TD3Config, TrainConfig)


def test_defaults_are_the_papers_hyper_parameters() -> None:
    cfg = TrainConfig()
    b = cfg.bcq
    assert (cfg.algo, cfg.split, cfg.batch_size, cfg.max_steps) == ("bcq", "train", 256, 300_000)
    assert b.vae_lr == 1e-3
    c = LearnerConfig()
    assert (c.tau, c.target_update_every, c.hidden) == (0.05, 10, (400, 300))
    assert (c.actor_lr, c.critic_lr) == (1e-4, 2e-4)
    assert MdpConfig().gamma == 0.95
    assert (b.rho, b.n_candidates, b.lam, b.kl_weight) == (0.15, 10, 1.0, 0.5)
    assert b.vae_hidden == (750, 750)
    assert b.latent_size(action_dim=6) == 12   # latent = 2k
    assert (b.log_std_min, b.log_std_max, b.latent_clip) == (-4.0, 15.0, 0.5)


@pytest.mark.parametrize("cls, kwargs, message", [
    (MdpConfig, {"gamma": 0.0}, r"mdp.gamma must be in \(0, 1\], got 0.0"),
    (BCQConfig, {"lam": 1.5}, r"bcq.lam must be in \[0, 1\], got 1.5"),
    (LearnerConfig, {"tau": 0.0}, r"common.tau must be in \(0, 1\]"),
    (BCQConfig, {"n_candidates": 0}, r"bcq.n_candidates must be > 0, got 0"),
    (LearnerConfig, {"hidden": ()}, r"common.hidden must list one or more positive layer"),
    (BCQConfig, {"log_std_min": 20.0}, r"bcq.log_std_min must be < bcq.log_std_max"),
    (TD3Config, {"policy_delay": 0}, r"td3.policy_delay must be > 0"),
    (CQLConfig, {"alpha": -1.0}, r"cql.alpha must be >= 0"),
    (IQLConfig, {"expectile": 1.0}, r"iql.expectile must be in \(0, 1\), got 1.0"),
    (IQLConfig, {"beta": -1.0}, r"iql.beta must be >= 0"),
    (IQLConfig, {"actor_groups": ("bandit",)}, r"iql.actor_groups must list one or more of"),
    (IQLConfig, {"actor_groups": ()}, r"iql.actor_groups must list one or more of"),
    (LoaderConfig, {"reader_pool": "gpu"}, r"loader.reader_pool must be one of"),
    (TrainConfig, {"algo": "sac"},
     r"train.algo must be one of \['bcq', 'td3', 'cql', 'bc', 'iql'\]"),
    (TrainConfig, {"batch_size": 0}, r"train.batch_size must be > 0, got 0"),
    (TrainConfig, {"table_version": -1}, r"train.table_version must be >= 0"),
    (TrainConfig, {"run_id": "a/b"}, r"train.run_id must be a plain directory name"),
])
def test_invalid_values_raise_naming_the_key(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_yaml_mapping_is_strict_and_typed() -> None:
    cfg = from_dict(TrainConfig, {"algo": "td3", "common": {"hidden": [64, 32]},
                                  "bcq": {"rho": 0.1},
                                  "td3": {"policy_delay": 3}, "table_version": 4})
    assert cfg.common.hidden == (64, 32) and cfg.bcq.rho == 0.1 and cfg.td3.policy_delay == 3
    assert cfg.table_version == 4
    with pytest.raises(ConfigError, match="unknown config key train.bcq.phi"):
        from_dict(TrainConfig, {"bcq": {"phi": 0.1}}, prefix="train")
