"""Body of the 2-process gloo DDP test (spawned by tests/rl/test_distributed.py)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from unittest import mock

import torch


def run_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from mtf.rl.batch import Normalizer
    from mtf.rl.distributed import destroy_distributed, dist_info_from_env, init_distributed
    from mtf.rl.loader import InMemorySource
    from mtf.rl.train import train
    from tests.rl.helpers import random_batch, tiny_config
    from tests.rl.test_train import LAYOUT, SPACE

    info = dist_info_from_env()
    cpu = torch.device("cpu")
    created = init_distributed(info, cpu)
    data = random_batch(b=256, s=3, k=2, seed=1)
    normalizer = Normalizer.fit(data.state.numpy())
    try:
        for name, algo, sync in (("bcq", "bcq", True), ("td3", "td3", True),
                                 ("bcq_unsynced", "bcq", False), ("bcq_bounded", "bcq", True),
                                 ("iql_ray", "iql", True)):
            cfg = tiny_config(algo, max_steps=6, log_every=3, checkpoint_every=6)
            if name == "bcq_bounded":      # UnifiedRL's policy-bounded candidates
                cfg = replace(cfg, bcq=replace(cfg.bcq, candidates="bounded"))
            if name == "iql_ray":          # the quadratic critics' policy on the faces
                cfg = replace(cfg, iql=replace(cfg.iql, quadratic_critic=True))
            space = replace(SPACE, mode="ray") if name == "iql_ray" else SPACE
            source = InMemorySource(data, batch_size=cfg.batch_size, seed=0, info=info)
            # the unsynced control trains the same shards without DDP's gradient averaging
            no_ddp = mock.patch("mtf.rl.bcq.ddp_wrap", side_effect=lambda m, d: m)
            with contextlib.nullcontext() if sync else no_ddp:
                result = train(cfg, source, gamma=0.95, layout=LAYOUT, action_space=space,
                               run_dir=os.path.join(out_dir, f"run_{name}"), seed=5,
                               normalizer=normalizer, info=info, device=cpu)
            assert result.agent is not None
            state = {f"{net}.{k}": v for net, m in result.agent.nets.items()
                     for k, v in m.state_dict().items()}
            torch.save({"params": state, "metrics": result.metrics},
                       os.path.join(out_dir, f"{name}_rank{rank}.pt"))
    finally:
        destroy_distributed(created)
