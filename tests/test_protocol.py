"""The tuning / held-out protocol: the worlds the config lists, their roles, and the guard that
keeps every choice of settings off the held-out worlds."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mtf.config import load_config
from mtf.configtools import ConfigError
from mtf.errors import UserError
from mtf.loop.protocol import HELDOUT, TUNING, require_tuning, world_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_embedded_config_lists_three_tuning_and_three_heldout_worlds() -> None:
    p = load_config().protocol
    assert world_names(p, TUNING) == ["tune-7", "tune-8", "tune-9-bait"]
    assert world_names(p, HELDOUT) == ["held-41", "held-42-mix", "held-43-bait"]
    assert p.role("tune-7") == TUNING and p.role("held-42-mix") == HELDOUT and p.role("x") == ""
    # The demo's own world (seed 7, truth seed 1234) chose the defaults: a tuning world.
    cfg = load_config()
    assert (cfg.seed, cfg.pipeline.truth_seed) == (p.world("tune-7").seed,
                                                   p.world("tune-7").truth_seed)
    # At least one held-out world changes the structure, not only the seed.
    assert any(w.overrides for w in p.heldout)
    assert p.heldout_seeds() == {41, 42, 43, 7041, 7042, 7043}


def test_a_world_turns_into_config_overrides() -> None:
    w = load_config().protocol.world("held-43-bait")
    cfg = load_config(None, w.config_overrides())
    assert (cfg.seed, cfg.pipeline.truth_seed) == (43, 7043)
    assert cfg.sim.catalog.quality_bait_corr == -0.55 and cfg.sim.response.click_bait == 2.4
    with pytest.raises(UserError, match="unknown protocol world 'nope'"):
        load_config().protocol.world("nope")


@pytest.mark.parametrize("overrides, match", [
    (["seed=41"], r"held-out world held-41: seed=41"),
    (["pipeline.truth_seed=7042"], r"held-out world held-42-mix: pipeline.truth_seed=7042"),
])
def test_require_tuning_refuses_heldout_seeds(overrides: list[str], match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        require_tuning(load_config(None, overrides), "a sweep")
    assert "choose settings on a tuning world: tune-7 (seed=7" in str(info.value)


def test_require_tuning_refuses_an_extra_seed_and_passes_tuning_worlds() -> None:
    cfg = load_config()
    require_tuning(cfg, "a sweep")                       # tune-7: allowed
    require_tuning(load_config(None, ["seed=8"]), "a sweep", seeds=[3])
    with pytest.raises(UserError, match="held-out world held-43-bait: seed=43"):
        require_tuning(cfg, "a sweep", seeds=[43])


@pytest.mark.parametrize("protocol, match", [
    ('{tuning: [{name: a, seed: 1, truth_seed: 2}], heldout: [{name: a, seed: 3, '
     'truth_seed: 4}]}', "world names must be unique, repeated: \\['a'\\]"),
    ('{tuning: [{name: a, seed: 3, truth_seed: 2}], heldout: [{name: b, seed: 3, '
     'truth_seed: 4}]}', "tuning worlds \\['a'\\] reuse a held-out world's seed"),
    ('{heldout: [{name: b, seed: 3, truth_seed: 4, overrides: [train.max_steps=3]}]}',
     "overrides must be sim.KEY=VALUE"),
])
def test_invalid_protocols_are_config_errors(protocol: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [f"protocol={protocol}"])


def test_policy_sweep_refuses_a_heldout_world_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "policy_sweep.py"), "run",
         "--data", "unused.npz", "--run", "ok: train.batch_size=64",
         "--run", "bad: TSEED=7041 train.batch_size=64"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "policy_sweep: error: policy_sweep variant 'bad' may not use held-out world held-41: "
        "seed=7041 is one of its seeds (protocol.heldout); choose settings on a tuning world: "
        "tune-7 (seed=7 pipeline.truth_seed=1234), tune-8 (seed=8 pipeline.truth_seed=1234), "
        "tune-9-bait (seed=9 pipeline.truth_seed=1234)"]
