"""Export a checkpoint as a TorchScript policy (``policy.pt``) plus a ``policy.json`` sidecar.

The TorchScript module needs neither mtf nor Python code to run (``torch.jit.load`` in C++ or
Python). It maps a batch of **raw** state vectors ``(B, S)`` float32, features in the sidecar's
``feature_names`` order, to:

* ``forward(state) -> (B, k)``: normalised actions in [-1, 1] (task order ``action_tasks``);
* ``fusion_weights(state) -> (B, k)``: fusion weights alpha_i in [lo_i, hi_i]
  (``mtf.fusion.action_to_weights``);
* ``to_weights(action) -> (B, k)``: the same affine map for a given action.

State normalisation is folded in. With the ray parametrisation (the checkpoint's action space,
``fusion.action_space = "ray"``) ``forward`` returns canonical actions (mtf.rays). BCQ's
candidate latents are a fixed buffer, so the exported
policy is deterministic: one state, one action.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtf import __version__
from mtf.configtools import from_dict
from mtf.rays import canonical_actions
from mtf.rl.agent import load_agent_state, make_agent, make_generator
from mtf.rl.bcq import BCQAgent, candidate_latents
from mtf.rl.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from mtf.rl.config import TrainConfig

logger = logging.getLogger(__name__)

POLICY_FILE = "policy.pt"
SIDECAR_FILE = "policy.json"
EXPORT_FORMAT = 1
EXPORT_LATENT_SEED = 20_220_814  # seeds BCQ's fixed candidate latents (any fixed value works)


class ExportedPolicy(nn.Module):
    """Raw state -> normalised action / fusion weights; wraps an algorithm's greedy policy."""

    def __init__(self, policy: nn.Module, mean: torch.Tensor, std: torch.Tensor,
                 lo: torch.Tensor, hi: torch.Tensor, rays: bool = False) -> None:
        super().__init__()
        self.policy = policy
        self.rays = rays
        self.register_buffer("state_mean", mean.float())  # (S,)
        self.register_buffer("state_std", std.float())    # (S,)
        self.register_buffer("lo", lo.float())             # (k,)
        self.register_buffer("hi", hi.float())             # (k,)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        normalised = (state - self.state_mean) / self.state_std
        action = self.policy(normalised).clamp(-1.0, 1.0)
        if self.rays:
            action = canonical_actions(action, self.lo, self.hi)
        return action

    @torch.jit.export
    def to_weights(self, action: torch.Tensor) -> torch.Tensor:
        """``lo + (clip(a, -1, 1) + 1) / 2 * (hi - lo)``, as mtf.fusion.action_to_weights."""
        return self.lo + (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.hi - self.lo)

    @torch.jit.export
    def fusion_weights(self, state: torch.Tensor) -> torch.Tensor:
        return self.to_weights(self.forward(state))


@dataclass(frozen=True)
class ExportResult:
    policy_path: str
    sidecar_path: str
    meta: dict[str, Any]


def build_policy(ckpt: Checkpoint) -> ExportedPolicy:
    """The deterministic raw-state policy of a checkpoint, on CPU, in eval mode (not scripted)."""
    cfg = from_dict(TrainConfig, ckpt.train_config, prefix="train")
    cpu = torch.device("cpu")
    space = ckpt.action_space
    agent = make_agent(cfg, ckpt.state_dim, ckpt.action_dim, cpu, make_generator(ckpt.seed, cpu),
                       gamma=ckpt.gamma, rays=space.rays)
    load_agent_state(agent, ckpt.agent, nets_only=True)
    if isinstance(agent, BCQAgent):
        latents = candidate_latents(cfg.bcq.n_candidates, cfg.bcq.latent_size(ckpt.action_dim),
                                    cfg.bcq, torch.Generator().manual_seed(EXPORT_LATENT_SEED),
                                    cpu)
        policy: nn.Module = agent.policy(latents)
    else:
        policy = agent.policy()
    module = ExportedPolicy(policy, ckpt.normalizer.mean, ckpt.normalizer.std,
                            torch.tensor(space.lo), torch.tensor(space.hi), space.rays)
    return module.requires_grad_(False).eval()  # serving computes no gradients


def export_policy(checkpoint: str, out_dir: str) -> ExportResult:
    """Write ``policy.pt`` (TorchScript) and ``policy.json`` for ``checkpoint`` into ``out_dir``.

    ``checkpoint`` may be a file or a run directory (its newest checkpoint). Both files are
    written to temporary names and renamed, so a reader never sees a half-written policy.
    """
    path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(path)
    meta = _sidecar(ckpt, path)
    os.makedirs(out_dir, exist_ok=True)
    policy_path = os.path.join(out_dir, POLICY_FILE)
    sidecar_path = os.path.join(out_dir, SIDECAR_FILE)
    tmp = f"{policy_path}.tmp-{os.getpid()}"
    with warnings.catch_warnings():
        # torch >= 2.9 flags TorchScript as deprecated; it is still the artefact serving loads.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        torch.jit.save(torch.jit.script(build_policy(ckpt)), tmp)
    os.replace(tmp, policy_path)
    tmp = f"{sidecar_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    os.replace(tmp, sidecar_path)
    logger.info("exported %s policy (step %d) to %s", ckpt.algo, ckpt.step, policy_path)
    return ExportResult(policy_path, sidecar_path, meta)


def _sidecar(ckpt: Checkpoint, checkpoint_path: str) -> dict[str, Any]:
    layout, space = ckpt.layout, ckpt.action_space
    return {
        "format": EXPORT_FORMAT,
        "algorithm": ckpt.algo,
        "step": ckpt.step,
        "checkpoint": os.path.abspath(checkpoint_path),
        "feature_names": list(layout.feature_names),
        "feature_version": layout.feature_version,
        "action_tasks": list(space.tasks),
        "lo": list(space.lo),
        "hi": list(space.hi),
        "action_space": space.mode,
        "table_path": layout.table_path,
        "table_version": layout.table_version,
        "state_dim": ckpt.state_dim,
        "action_dim": ckpt.action_dim,
        "state_mean": ckpt.normalizer.mean.tolist(),
        "state_std": ckpt.normalizer.std.tolist(),
        "train_config": ckpt.train_config,
        "seed": ckpt.seed,
        "mtf_version": __version__,
        "git_sha": _git_sha(),
        "exported_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "methods": {
            "forward": "raw state (B, S) float32 in feature_names order -> action (B, k) in "
                       "[-1, 1], action_tasks order",
            "fusion_weights": "raw state (B, S) -> fusion weights (B, k) in [lo, hi]",
            "to_weights": "action (B, k) -> fusion weights (B, k) in [lo, hi]",
        },
    }


def _git_sha() -> str | None:
    """The commit of the mtf checkout, when it is one (best effort, for provenance)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
