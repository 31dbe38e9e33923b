"""FQE at table scale (mtf.ope.stream): the streamed fit is the in-memory fit fed another way,
and the job's stream reads exactly the pinned version's split."""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import torch

from mtf.config import LakeConfig, MtfConfig
from mtf.fusion import FusionConfig, TaskSpec
from mtf.ope.config import OpeConfig
from mtf.ope.data import TransitionArrays
from mtf.ope.fqe import FqeData, FqeSettings, FqeStats, fit_fqe
from mtf.ope.policies import fixed_policy
from mtf.ope.stream import fit_fqe_stream
from mtf.rays import canonical_actions
from mtf.rl.batch import TransitionBatch
from tests.ope.tables import arrays_to_frame, write_delta_table

FAST = dict(gamma=0.9, lr=3e-3, batch_size=64, n_iterations=120, hidden=(16, 16),
            target_update_every=20, log_every=40, seed=3)


def chain_arrays(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 3)).astype(np.float32)
    s2 = rng.normal(size=(n, 3)).astype(np.float32)
    a = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    r = (1.0 + s[:, 0] - a[:, 0] ** 2).astype(np.float32)
    term = rng.random(n) < 0.3
    return s, a, r, s2, term


@pytest.mark.parametrize("rays", [False, True])
def test_streamed_fit_equals_the_in_memory_fit_on_the_same_minibatches(rays: bool) -> None:
    """Same minibatches in the same order, same seed: bit-identical Q networks and curves.
    With rays the stream reads the raw logged actions and the in-memory fit their canonical
    points."""
    torch.set_num_threads(1)
    s, raw, r, s2, term = chain_arrays(500, seed=1)
    lo, hi = (0.0, 0.0), (2.0, 1.0)
    a = (canonical_actions(torch.as_tensor(raw), torch.tensor(lo), torch.tensor(hi)).numpy()
         if rays else raw)
    c = np.array([1.0, -0.2] if rays else [0.3, -0.2], dtype=np.float32)   # canonical
    pi = np.broadcast_to(c, a.shape)
    initial = np.zeros(500, dtype=bool)
    initial[::5] = True
    data = FqeData.from_numpy(s, a, r, s2, term, pi, pi, initial)
    settings = FqeSettings(alpha=0.5e-3, **FAST)
    ref = fit_fqe(data, settings)

    def batches() -> Iterator[TransitionBatch]:
        gen = torch.Generator().manual_seed(settings.seed + 1)   # fit_fqe's minibatch draws
        while True:
            idx = torch.randint(len(data), (settings.batch_size,), generator=gen)
            yield TransitionBatch(state=data.state[idx], action=torch.as_tensor(raw)[idx],
                                  reward=data.reward[idx].reshape(-1, 1),
                                  next_state=data.next_state[idx],
                                  is_terminal=(1.0 - data.not_done[idx]).reshape(-1, 1),
                                  group=torch.zeros(len(idx), 1))

    policy = fixed_policy("c", c)
    got = fit_fqe_stream(batches(), [policy], FqeStats.of(data),
                         s[initial][:4096], {"cons": settings},
                         rays=(lo, hi) if rays else None)[("c", "cons")]
    assert got.curve == ref.curve
    for (k, v), (k2, v2) in zip(ref.q.state_dict().items(), got.q.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_lockstep_fits_need_one_step_budget() -> None:
    s, a, r, s2, term = chain_arrays(10, seed=2)
    data = FqeData.from_numpy(s, a, r, s2, term, a, a, np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match="same n_iterations"):
        fit_fqe_stream(iter(()), [fixed_policy("c", np.zeros(2))], FqeStats.of(data), s,
                       {"a": FqeSettings(alpha=0.0, gamma=0.9, n_iterations=10),
                        "b": FqeSettings(alpha=0.0, gamma=0.9, n_iterations=20)})


class _TooFar(torch.nn.Module):
    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.full((state.shape[0], 2), 1.5)


def test_a_policy_leaving_the_action_box_stops_the_fit_with_its_name() -> None:
    from mtf.ope.policies import module_policy

    s, a, r, s2, term = chain_arrays(10, seed=2)
    data = FqeData.from_numpy(s, a, r, s2, term, a, a, np.ones(10, dtype=bool))
    with pytest.raises(ValueError, match=r"policy 'far' returned actions outside \[-1, 1\]"):
        fit_fqe_stream(iter(()), [module_policy("far", _TooFar())], FqeStats.of(data), s,
                       {"a": FqeSettings(alpha=0.0, gamma=0.9, n_iterations=10)})


def one_step_sessions(n: int, reward: float, seed: int) -> TransitionArrays:
    """Terminal one-step sessions with a constant reward: every policy's value is ``reward``."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 3)).astype(np.float32)
    a = rng.uniform(-0.5, 0.5, size=(n, 2)).astype(np.float32)
    return TransitionArrays.build([f"r{reward}-{seed}-{i}" for i in range(n)], np.zeros(n, int),
                                  s, np.zeros_like(s), a, np.zeros(n), np.full(n, reward),
                                  np.ones(n, bool), np.zeros(n, bool))


def test_job_streams_exactly_the_pinned_versions_split(spark, tmp_path):  # type: ignore
    """The test split's reward is 1, the train split's 5, a newer version's test rows 9: the
    streamed FQE value is 1 only if it read the pinned version's test rows and nothing else."""
    from mtf.ope.job import evaluate_table
    from mtf.ope.stream import split_stats

    torch.set_num_threads(1)
    root = str(tmp_path)
    path = os.path.join(root, "transitions")
    test = one_step_sessions(400, 1.0, seed=1)
    frame = pd.concat([arrays_to_frame(test, "test"),
                       arrays_to_frame(one_step_sessions(400, 5.0, seed=2), "train")])
    version = write_delta_table(spark, path, frame, ["f0", "f1", "f2"], n_files=4)
    newer = write_delta_table(spark, path, arrays_to_frame(one_step_sessions(400, 9.0, seed=3)),
                              ["f0", "f1", "f2"], n_files=1, append=True)
    assert newer > version
    cfg = MtfConfig(lake=LakeConfig(root=root),
                    fusion=FusionConfig(tasks=(TaskSpec("click"), TaskSpec("like"))))
    ope = OpeConfig(table_version=version, fqe_source="stream", n_iterations=300, lr=3e-3,
                    batch_size=64, hidden=(16,), target_update_every=20, log_every=20,
                    n_bootstrap=40, n_initial_states=100, threads=1, gate="conservative_fqe",
                    ensemble=dataclasses.replace(OpeConfig().ensemble, members=0),
                    fixed_policies={"c": (0.3, -0.2)}, run_id="stream")
    cfg = dataclasses.replace(cfg, ope=ope)
    result, _ = evaluate_table(spark, cfg)
    assert result.meta["fqe_source"] == "stream"
    assert result.meta["fit_rows"] == result.meta["n_rows"] == 400
    for policy in ("logging", "c"):
        assert result.estimate(policy, "fqe") == pytest.approx(1.0, abs=0.05), policy

    # The Q networks' state statistics and scale come from one Spark aggregation that matches
    # the in-memory ones.
    from mtf.ope.job import split_frame

    split_df, _ = split_frame(spark, path, version, "test")
    got = split_stats(split_df, 3, 2)
    want = FqeStats.of(FqeData.from_numpy(test.state, test.action, test.reward,
                                          test.next_state, test.is_terminal, test.action,
                                          test.action, np.ones(len(test), bool)))
    assert torch.allclose(got.state_mean, want.state_mean, atol=1e-5)
    assert torch.allclose(got.state_std, want.state_std, atol=1e-5)
    assert got.reward_abs_mean == pytest.approx(want.reward_abs_mean)

    with pytest.raises(ValueError, match="cannot apply a row filter"):
        evaluate_table(spark, cfg, where="step = 0")
