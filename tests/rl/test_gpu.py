"""CUDA checks (skipped without a GPU): training on the GPU, export and resume on the CPU."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from mtf.rl.batch import Normalizer
from mtf.rl.checkpoint import load_checkpoint
from mtf.rl.export import build_policy, export_policy
from mtf.rl.loader import InMemorySource
from mtf.rl.train import train
from tests.rl.helpers import random_batch, tiny_config
from tests.rl.test_train import LAYOUT, SPACE

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("algo", ["bcq", "cql", "iql"])
def test_cuda_training_exports_and_resumes_on_cpu(tmp_path: Any, algo: str) -> None:
    cuda = torch.device("cuda", 0)
    data = random_batch(b=256, s=3, k=2, seed=1)
    normalizer = Normalizer.fit(data.state.numpy())
    result = train(tiny_config(algo, max_steps=10, checkpoint_every=10),
                   InMemorySource(data.to(cuda), batch_size=16, seed=0), gamma=0.95, layout=LAYOUT,
                   action_space=SPACE, run_dir=str(tmp_path / "run"), seed=1,
                   normalizer=normalizer, device=cuda)
    assert result.metrics["loss/critic"] == result.metrics["loss/critic"]   # finite, not NaN
    exported = export_policy(result.checkpoint, str(tmp_path / "export"))
    states = torch.randn(50, 3)
    policy = torch.jit.load(exported.policy_path)
    assert torch.equal(policy(states), build_policy(load_checkpoint(result.checkpoint))(states))
    # resume on CPU from the CUDA checkpoint (generator state cannot cross devices: warned)
    resumed = train(tiny_config(algo, max_steps=12, checkpoint_every=12),
                    InMemorySource(data, batch_size=16, seed=0), gamma=0.95, layout=LAYOUT,
                    action_space=SPACE, run_dir=str(tmp_path / "run"), seed=1,
                    resume_from=result.checkpoint)
    assert resumed.step == 12
