"""Learners trained in memory on simulated transitions: no Spark, no Delta, no petastorm.

The benchmarks that train many learners on one simulated data set (mtf/loop/ope_benchmark.py,
benchmarks/heldout_learning.py) skip the lake: :func:`mtf.loop.ope_validation.
simulated_transitions` gives the transition rows as a DataFrame, :func:`frame_columns` turns
them into the trainer's columns, and :func:`train_policy` runs :func:`mtf.rl.train.train` on an
:class:`mtf.rl.loader.InMemorySource` and returns the deterministic raw-state policy
(:func:`mtf.rl.export.build_policy`), the module ``mtf train`` would export.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mtf.contract import GROUP_CODES
from mtf.features import FEATURE_VERSION

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from mtf.config import MtfConfig
    from mtf.rl.config import TrainConfig

# The trainer's columns (mtf.rl.batch.TransitionBatch.from_numpy), ``group`` as GROUP_CODES.
COLUMNS = ("state", "next_state", "action", "reward", "is_terminal", "group")


def frame_columns(df: "pd.DataFrame", split: str | None = None) -> dict[str, np.ndarray]:
    """Transition rows (as from ``simulated_transitions``) -> float32 trainer columns; only the
    rows of ``split`` when given."""
    from mtf.rl.batch import group_codes

    if split is not None:
        df = df[df["split"] == split]
    return {"state": np.stack(df["state"].to_numpy()).astype(np.float32),
            "next_state": np.stack(df["next_state"].to_numpy()).astype(np.float32),
            "action": np.stack(df["action"].to_numpy()).astype(np.float32),
            "reward": df["reward"].to_numpy(np.float32),
            "is_terminal": df["is_terminal"].to_numpy(np.float32),
            "group": group_codes(df["explore_group"].to_numpy())}


def select_groups(cols: dict[str, np.ndarray],
                  groups: Sequence[str]) -> dict[str, np.ndarray]:
    """The rows of the exploration ``groups`` (``train.explore_groups``; empty = every row)."""
    if not groups:
        return cols
    keep = np.isin(cols["group"], [GROUP_CODES[g] for g in groups])
    return {k: v[keep] for k, v in cols.items()}


def train_policy(cfg: "MtfConfig", train_cfg: "TrainConfig", cols: dict[str, np.ndarray], *,
                 seed: int, run_dir: str) -> "nn.Module":
    """Train ``train_cfg`` (algorithm, sizes, ``max_steps``) on the rows of ``cols`` in its
    ``explore_groups``, on ``train.device``, one checkpoint at the end; the deterministic
    raw-state policy (raw state -> action in [-1, 1]). ``cfg`` gives the discount, fusion
    tasks and feature layout. Run records land in ``run_dir``."""
    from mtf.rl.batch import Normalizer, TransitionBatch
    from mtf.rl.checkpoint import load_checkpoint
    from mtf.rl.export import build_policy
    from mtf.rl.layout import ActionSpace, TableLayout
    from mtf.rl.loader import InMemorySource
    from mtf.rl.train import train

    cols = select_groups(cols, train_cfg.explore_groups)
    n = train_cfg.max_steps
    c = replace(train_cfg, log_every=min(train_cfg.log_every, n), checkpoint_every=n,
                tensorboard=False)      # train.device: auto = the GPU where there is one
    batch = TransitionBatch.from_numpy(cols)
    layout = TableLayout("simulated", 0, tuple(cfg.features.feature_names), FEATURE_VERSION,
                         tuple(cfg.fusion.names))
    res = train(c, InMemorySource(batch, batch_size=c.batch_size, seed=seed),
                gamma=cfg.mdp.gamma, layout=layout,
                action_space=ActionSpace.from_fusion(cfg.fusion),
                run_dir=run_dir, seed=seed,
                normalizer=Normalizer.fit(cols["state"]))
    module: Any = build_policy(load_checkpoint(res.checkpoint, map_location="cpu"))
    return module
