"""Typed config: YAML -> frozen dataclasses, overrides, and errors that name the key."""
from __future__ import annotations

import os
from typing import Any

import pytest

from mtf.config import MtfConfig, load_config
from mtf.configtools import ConfigError, apply_overrides, from_dict, parse_override

CONF = os.path.join(os.path.dirname(os.path.dirname(__file__)), "conf")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_embedded_default_loads_and_matches_local_yaml() -> None:
    cfg = load_config()
    assert isinstance(cfg, MtfConfig)
    assert cfg == load_config(os.path.join(CONF, "local.yaml"))
    assert cfg.fusion.names == ("click", "like", "share", "finish", "watch_time", "exit")
    assert cfg.fusion.negative.tolist() == [False] * 5 + [True]


def test_cluster_example_loads() -> None:
    cfg = load_config(os.path.join(CONF, "cluster.yaml"))
    assert cfg.lake.root.startswith("s3a://")
    assert cfg.lake.path("transitions") == "s3a://my-bucket/mtf/lake/transitions"


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_config(None, ["train.batch_size=512", "mdp.gamma=0.9", "seed=3"])
    assert cfg.train.batch_size == 512
    assert cfg.mdp.gamma == 0.9
    assert cfg.seed == 3
    # Configs are frozen: derive, never mutate.
    with pytest.raises(Exception):
        cfg.seed = 4  # type: ignore[misc]


def test_int_is_accepted_for_float_but_not_the_reverse() -> None:
    assert load_config(None, ["mdp.gamma=1"]).mdp.gamma == 1.0
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int, got float 1\.5"):
        load_config(None, ["train.batch_size=1.5"])


def test_scientific_notation_without_a_dot_is_a_float() -> None:
    # YAML 1.1 reads 1e-3 as a string; a float field takes it as 0.001 (from a file too).
    cfg = load_config(None, ["train.common.critic_lr=1e-3", "train.iql.critic_lr=+2E-4"])
    assert (cfg.train.common.critic_lr, cfg.train.iql.critic_lr) == (0.001, 0.0002)
    with pytest.raises(ConfigError,
                       match=r"train\.common\.critic_lr: expected float, got str 'nan'"):
        load_config(None, ["train.common.critic_lr=nan"])


@pytest.mark.parametrize("override, message", [
    ("train.batch_sise=5", r"unknown config key train\.batch_sise in section 'train'; "
                           r"known keys: .*batch_size"),
    ("bogus=1", r"unknown config key bogus; known keys: .*lake"),
    ("train.batch_size=abc", r"train\.batch_size: expected int, got str 'abc'"),
    ("spark.conf=3", r"spark\.conf: expected a mapping, got int 3"),
    ("train=5", r"train: expected a mapping for section TrainConfig, got int 5"),
    # __post_init__ checks: the dotted key once, not "mdp: mdp.gamma"
    ("mdp.gamma=0", r"^mdp\.gamma must be in \(0, 1\], got 0\.0$"),
    ("fusion.tasks=[]", r"^fusion\.tasks must list at least one task$"),
    ("train.bcq.lam=2", r"^train\.bcq\.lam must be in \[0, 1\], got 2\.0$"),
    ("etl.files_per_day=0", r"^etl: files_per_day must be > 0, got 0$"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_nested_list_item_names_its_index(tmp_path) -> None:
    path = write(tmp_path, "fusion:\n  tasks:\n    - {name: click}\n    - {name: like, hi: x}\n")
    with pytest.raises(ConfigError, match=r"fusion\.tasks\[1\]\.hi: expected float, got str 'x'"):
        load_config(path)


def test_unknown_key_in_a_list_item(tmp_path) -> None:
    path = write(tmp_path, "fusion:\n  tasks:\n    - {name: click, weight: 2}\n")
    with pytest.raises(ConfigError, match=r"unknown config key fusion\.tasks\[0\]\.weight"):
        load_config(path)


def test_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_override_syntax() -> None:
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=x=y") == (["a"], "x=y")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.batch_size")
    with pytest.raises(ConfigError, match="train is not a section"):
        apply_overrides({"train": 3}, ["train.batch_size=1"])


def test_from_dict_empty_gives_defaults() -> None:
    assert from_dict(MtfConfig, {}) == MtfConfig()


def test_lake_paths_are_absolute_and_overridable(tmp_path) -> None:
    cfg = load_config(None, [f"lake.root={tmp_path}", "lake.quarantine=/data/q"])
    assert cfg.lake.path("raw_logs") == os.path.join(str(tmp_path), "raw_impressions")
    assert cfg.lake.path("transitions") == os.path.join(str(tmp_path), "transitions")
    assert cfg.lake.path("quarantine") == "/data/q"
    with pytest.raises(KeyError, match="unknown lake location"):
        cfg.lake.path("root")


def test_yaml_dates_are_accepted_for_string_fields() -> None:
    assert load_config(None, ["sim.start_date=2026-02-27"]).sim.start_date == "2026-02-27"


@pytest.mark.parametrize("override, message", [
    ("train.bcq.gamma=0.9", r"train\.bcq\.gamma is now mdp\.gamma"),
    ("train.bcq.hidden=[8, 8]", r"train\.bcq\.hidden is now train\.common\.hidden"),
    ("sim.exploration.noise_share=0.3", r"sim\.exploration is now serving"),
    ("ope.baseline_action=[0, 0]", r"ope\.baseline_action is now serving\.baseline_action"),
    ("ope.truth_sessions=10", r"ope\.truth_sessions: removed: .*mtf\.loop\.ope_validation"),
])
def test_a_moved_key_names_its_new_place(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_moved_key_in_a_yaml_file_names_its_new_place(tmp_path: Any) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  bcq: {gamma: 0.9, rho: 0.2}\n"
                    "sim:\n  exploration: {noise_share: 0.1}\n")
    with pytest.raises(ConfigError, match=r"train\.bcq\.gamma is now mdp\.gamma; "
                                          r"sim\.exploration is now serving"):
        load_config(str(path))
