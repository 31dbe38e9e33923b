"""The training loop: step count, metrics file, checkpoint cadence, exact resume."""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

import pytest
import torch

from mtf.rl.batch import Normalizer, TransitionBatch
from mtf.rl.checkpoint import list_checkpoints, load_checkpoint
from mtf.rl.config import IQLConfig
from mtf.rl.layout import ActionSpace, TableLayout
from mtf.rl.loader import InMemorySource
from mtf.rl.train import train
from tests.rl.helpers import random_batch, tiny_config

S, K = 3, 2
LAYOUT = TableLayout("/lake/transitions", 7, ("a", "b", "c"), "v1", ("click", "like"))
SPACE = ActionSpace(("click", "like"), (0.0, 0.5), (2.0, 1.5))


def _data() -> TransitionBatch:
    return random_batch(b=200, s=S, k=K, seed=1)


class CountingSource:
    def __init__(self, data: TransitionBatch, batch_size: int) -> None:
        self.inner = InMemorySource(data, batch_size=batch_size, seed=0)
        self.served = 0
        self.start_steps: list[int] = []

    def batches(self, start_step: int) -> Iterator[TransitionBatch]:
        self.start_steps.append(start_step)
        for b in self.inner.batches(start_step):
            self.served += 1
            yield b


def _train(tmp_path: Any, cfg: Any, source: Any = None, **kwargs: Any) -> Any:
    data = _data()
    return train(cfg, source or InMemorySource(data, batch_size=cfg.batch_size, seed=0),
                 gamma=0.95, layout=kwargs.pop("layout", LAYOUT), action_space=SPACE,
                 run_dir=str(tmp_path / "run"), seed=5,
                 normalizer=kwargs.pop("normalizer", Normalizer.fit(data.state.numpy())),
                 **kwargs)


def test_runs_max_steps_logs_every_log_every_and_checkpoints_on_schedule(tmp_path: Any) -> None:
    cfg = tiny_config(max_steps=12, log_every=5, checkpoint_every=5, keep_checkpoints=2)
    source = CountingSource(_data(), cfg.batch_size)
    result = _train(tmp_path, cfg, source)
    assert source.served == 12 and source.start_steps == [0]
    run_dir = str(tmp_path / "run")
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [5, 10, 12]
    for key in ("loss/vae", "loss/critic", "loss/actor", "q/data", "q/policy_action",
                "action/l2_to_logged", "action/mean", "action/std", "action/mean/click",
                "data/rows_per_s", "time/steps_per_s"):
        assert key in records[-1], key
    # checkpoints at 5, 10 and the final 12; the newest two are kept
    assert [os.path.basename(p) for p in list_checkpoints(run_dir)] == [
        "step_000000010.pt", "step_000000012.pt"]
    assert result.checkpoint == list_checkpoints(run_dir)[-1] and result.step == 12
    run = json.load(open(os.path.join(run_dir, "run.json")))
    assert run["layout"]["table_version"] == 7 and run["train_config"]["algo"] == "bcq"
    assert not [f for f in os.listdir(os.path.join(run_dir, "checkpoints")) if ".tmp" in f]


def test_checkpoint_records_layout_and_loads_with_weights_only(tmp_path: Any) -> None:
    result = _train(tmp_path, tiny_config(max_steps=3, checkpoint_every=3))
    payload = torch.load(result.checkpoint, weights_only=True)
    assert set(payload) == {"meta_json", "normalizer", "agent"}
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.step == 3 and ckpt.algo == "bcq"
    assert ckpt.layout == LAYOUT and ckpt.action_space == SPACE
    assert set(ckpt.agent["nets"]) == {"vae", "actor", "critic", "actor_target", "critic_target"}
    assert set(ckpt.agent["optimizers"]) == {"vae", "actor", "critic"}


@pytest.mark.parametrize("algo", ["bcq", "td3", "cql", "bc", "iql", "iql_quadratic"])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path: Any, algo: str) -> None:
    # 8 + 12 steps vs 20 steps; the interrupted run also logs at its last step (8), which the
    # uninterrupted one does not, so logging must not disturb the training RNG.
    extra: dict[str, Any] = {}
    if algo == "iql_quadratic":
        algo, extra = "iql", {"iql": IQLConfig(quadratic_critic=True)}
    full = _train(tmp_path / "full", tiny_config(algo, max_steps=20, log_every=5,
                                                 checkpoint_every=20, **extra))
    first = _train(tmp_path / "resumed", tiny_config(algo, max_steps=8, log_every=5,
                                                     checkpoint_every=4, **extra))
    source = CountingSource(_data(), 16)
    resumed = _train(tmp_path / "resumed", tiny_config(algo, max_steps=20, log_every=5,
                                                       checkpoint_every=20, **extra),
                     source=source, resume_from=first.checkpoint, normalizer=None)
    assert source.start_steps == [8] and source.served == 12 and resumed.step == 20
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for name in a.agent["nets"]:
        for key, tensor in a.agent["nets"][name].items():
            assert torch.equal(tensor, b.agent["nets"][name][key]), f"{name}.{key} differs"
    for name in a.agent["optimizers"]:
        sa, sb = a.agent["optimizers"][name]["state"], b.agent["optimizers"][name]["state"]
        for idx in sa:
            for key in sa[idx]:
                assert torch.equal(torch.as_tensor(sa[idx][key]), torch.as_tensor(sb[idx][key]))


def test_resume_refuses_another_layout_naming_the_mismatch(tmp_path: Any) -> None:
    first = _train(tmp_path, tiny_config(max_steps=2, checkpoint_every=2))
    other = TableLayout("/lake/transitions", 9, ("a", "b", "c"), "v2", ("click", "like"))
    with pytest.raises(ValueError, match=r"checkpoint .* was trained on a different layout than "
                                         r"table '/lake/transitions' \(version 9\): "
                                         r"mtf.feature_version: 'v1' != 'v2'"):
        _train(tmp_path, tiny_config(max_steps=4), resume_from=first.checkpoint, layout=other,
               normalizer=None)


def test_resume_refuses_another_algorithm(tmp_path: Any) -> None:
    _train(tmp_path, tiny_config("td3", max_steps=2, checkpoint_every=2))
    with pytest.raises(ValueError, match="trained with train.algo='td3', this run has "
                                         "train.algo='bcq'"):
        _train(tmp_path, tiny_config("bcq", max_steps=4), resume_from=str(tmp_path / "run"),
               normalizer=None)


def test_resume_past_max_steps_trains_nothing(tmp_path: Any) -> None:
    first = _train(tmp_path, tiny_config(max_steps=4, checkpoint_every=4))
    source = CountingSource(_data(), 16)
    again = _train(tmp_path, tiny_config(max_steps=4), source=source,
                   resume_from=first.checkpoint, normalizer=None)
    assert source.served == 0 and again.checkpoint == first.checkpoint and again.step == 4
