"""OpeConfig: paper defaults, validation naming the key, loading through configtools."""
from __future__ import annotations

import pytest

from mtf.configtools import ConfigError, from_dict
from mtf.ope.config import ESTIMATORS, OpeConfig


def test_defaults_are_the_papers() -> None:
    cfg = OpeConfig()
    assert (cfg.alpha, cfg.lr, cfg.batch_size, cfg.n_iterations, cfg.n_initial_states) == \
        (0.5e-3, 1e-4, 512, 5000, 5000)
    assert ESTIMATORS[0] == "conservative_fqe"
    assert cfg.gate == "fqe_ensemble" and cfg.ensemble.members == 10   # section 9 chose it


@pytest.mark.parametrize("field, value, message", [
    ("alpha", -1.0, "ope.alpha must be >= 0"),
    ("lr", 0.0, "ope.lr must be > 0"),
    ("n_iterations", 0, "ope.n_iterations must be > 0"),
    ("ci_level", 1.0, r"ope.ci_level must be in \(0, 1\)"),
    ("max_weight", 1.0, "ope.max_weight must be > 1"),
    ("n_bootstrap", 10, "ope.n_bootstrap must be >= 20"),
    ("hidden", (), "ope.hidden must list"),
    ("split", "", "ope.split must name a split"),
    ("fixed_policies", {"logging": (0.0,)}, "must not redefine 'logging'"),
    ("fixed_policies", {"x": (1.5,)}, "ope.fixed_policies.x must be"),
    ("run_id", "a/b", "ope.run_id must be a plain directory name"),
])
def test_invalid_values_name_the_key(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OpeConfig(**{field: value})  # type: ignore[arg-type]


def test_loads_from_yaml_like_dict_and_rejects_unknown_keys() -> None:
    cfg = from_dict(OpeConfig, {"alpha": 0.001, "hidden": [64, 64],
                                "fixed_policies": {"quality": [0.5, -0.5]}}, prefix="ope")
    assert cfg.hidden == (64, 64) and cfg.fixed_policies == {"quality": (0.5, -0.5)}
    with pytest.raises(ConfigError, match="unknown config key ope.alhpa"):
        from_dict(OpeConfig, {"alhpa": 0.1}, prefix="ope")
