"""Rank discovery and a 2-process gloo DDP run on CPU."""
from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from mtf.rl.distributed import DistInfo, dist_info_from_env, pick_device
from tests.rl.ddp_worker import run_rank


def test_dist_info_defaults_to_a_single_process() -> None:
    assert dist_info_from_env({}) == DistInfo(0, 0, 1, 1)
    assert dist_info_from_env({}).is_main and not dist_info_from_env({}).is_distributed


def test_dist_info_reads_torchrun_variables() -> None:
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    info = dist_info_from_env(env)
    assert info == DistInfo(rank=3, local_rank=1, world_size=4, local_world_size=2)
    assert not info.is_main and info.is_distributed


@pytest.mark.parametrize("env, message", [
    ({"RANK": "x"}, "environment variable RANK must be an integer, got 'x'"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"rank must be in \[0, world_size=2\), got 2"),
])
def test_dist_info_rejects_bad_environments(env: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dist_info_from_env(env)


def test_auto_device_is_cpu_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert pick_device("auto", DistInfo()) == torch.device("cpu")
    with pytest.raises(ValueError, match="train.device='cuda' but torch.cuda.is_available"):
        pick_device("cuda", DistInfo())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_parameters(tmp_path: Any) -> None:
    mp.spawn(run_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    def load(name: str, rank: int) -> dict[str, Any]:
        return torch.load(os.path.join(tmp_path, f"{name}_rank{rank}.pt"), weights_only=True)

    for name in ("bcq", "td3", "bcq_bounded", "iql_ray"):
        r0, r1 = load(name, 0), load(name, 1)
        assert r0["params"].keys() == r1["params"].keys()
        for key, value in r0["params"].items():
            assert torch.equal(value, r1["params"][key]), f"{name}: {key} differs across ranks"
        # metrics are reduced over ranks, so both ranks report the same numbers
        assert r0["metrics"]["loss/critic"] == r1["metrics"]["loss/critic"]
    # Control: same shards without DDP gradient averaging -> the ranks drift apart, so the
    # equality above is the work of DDP, not of identical data.
    c0, c1 = load("bcq_unsynced", 0), load("bcq_unsynced", 1)
    key = "vae.encoder.0.weight"
    assert not torch.equal(c0["params"][key], c1["params"][key])
    # rank 0 alone wrote the run directory
    assert os.listdir(tmp_path / "run_bcq" / "checkpoints") == ["step_000000006.pt"]
