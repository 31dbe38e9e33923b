"""Training checkpoints: periodic, atomic, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings and dicts/lists of them: network and
optimiser state dicts, the sampling RNG state, the state normaliser, and the metadata (training
config, table layout + version, action space) as one JSON string. Nothing is unpickled on load.
Files are ``<run_dir>/checkpoints/step_<step>.pt``, written to a temporary name and renamed, so a
crash never leaves a torn checkpoint; the newest ``keep`` are kept.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from mtf.errors import MissingInputError
from mtf.rl.batch import Normalizer
from mtf.rl.layout import ActionSpace, TableLayout

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2   # 2: train.common holds the shared learner settings, gamma is recorded
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


@dataclass(frozen=True)
class Checkpoint:
    step: int                      # update steps completed
    algo: str
    state_dim: int
    action_dim: int
    seed: int
    gamma: float                   # the discount trained with (mdp.gamma)
    train_config: dict[str, Any]   # TrainConfig as a plain dict
    layout: TableLayout
    action_space: ActionSpace
    normalizer: Normalizer
    agent: dict[str, Any]          # mtf.rl.agent.agent_state(): nets, optimizers, generator

    def to_payload(self) -> dict[str, Any]:
        meta = {"format": FORMAT_VERSION, "step": self.step, "algo": self.algo,
                "state_dim": self.state_dim, "action_dim": self.action_dim, "seed": self.seed,
                "gamma": self.gamma, "train_config": self.train_config,
                "layout": self.layout.to_dict(),
                "action_space": self.action_space.to_dict()}
        return {"meta_json": json.dumps(meta, sort_keys=True),
                "normalizer": self.normalizer.state_dict(), "agent": self.agent}

    @staticmethod
    def from_payload(payload: dict[str, Any], source: str) -> "Checkpoint":
        try:
            meta = json.loads(payload["meta_json"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{source} is not an mtf training checkpoint (no meta_json)") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{source} has checkpoint format {meta.get('format')!r}; this code "
                             f"reads format {FORMAT_VERSION}")
        return Checkpoint(step=int(meta["step"]), algo=str(meta["algo"]),
                          state_dim=int(meta["state_dim"]), action_dim=int(meta["action_dim"]),
                          seed=int(meta["seed"]), gamma=float(meta["gamma"]),
                          train_config=meta["train_config"],
                          layout=TableLayout.from_dict(meta["layout"]),
                          action_space=ActionSpace.from_dict(meta["action_space"]),
                          normalizer=Normalizer.from_state_dict(payload["normalizer"]),
                          agent=payload["agent"])


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR, f"step_{step:09d}.pt")


def save_checkpoint(ckpt: Checkpoint, run_dir: str, keep: int) -> str:
    """Write ``ckpt`` atomically under ``run_dir`` and prune all but the newest ``keep``."""
    path = checkpoint_path(run_dir, ckpt.step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(ckpt.to_payload(), tmp)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old set or the new file, whole
    for old in list_checkpoints(run_dir)[:-keep]:
        os.remove(old)
    logger.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file without unpickling arbitrary objects (``weights_only=True``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    return Checkpoint.from_payload(payload, source=f"checkpoint {path!r}")


def list_checkpoints(run_dir: str) -> list[str]:
    """Checkpoint files of ``run_dir``, oldest first (by step)."""
    files = glob.glob(os.path.join(run_dir, CHECKPOINT_DIR, "step_*.pt"))
    steps = [(int(m.group(1)), f) for f in files if (m := _NAME.match(os.path.basename(f)))]
    return [f for _, f in sorted(steps)]


def latest_checkpoint(run_dir: str) -> str | None:
    files = list_checkpoints(run_dir)
    return files[-1] if files else None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory meaning its newest checkpoint."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise MissingInputError(f"run directory {path!r} holds no checkpoints under "
                                    f"{CHECKPOINT_DIR}/")
        return latest
    raise MissingInputError(f"no checkpoint file or run directory at {path!r}; point "
                            f"train.export_checkpoint (or train.resume_from) at one")


def run_dir_of(checkpoint: str) -> str:
    """``<run_dir>/checkpoints/step_N.pt`` -> ``<run_dir>``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
