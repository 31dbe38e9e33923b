"""FQE at table scale: the fit streams the split through petastorm instead of collecting it.

With ``ope.fqe_source: stream`` the plain and conservative FQE fits of every policy read their
minibatches from the pinned transitions snapshot through the trainer's own source
(:class:`mtf.rl.loader.PetastormSource`: the snapshot's active files, shuffled row groups and
a shuffling buffer), so the driver holds a few row groups and the networks whatever the size
of the split. What a fit needs from the whole split is aggregated in Spark: the state
statistics and the reward size of the Q networks (:func:`split_stats`) and a bounded sample of
initial states for the V(s0) curve (:func:`initial_states`).

All fits (two per policy) step in lockstep on the same minibatches, as the in-memory path's
fits share their minibatch order: the table is read once per K steps, not 2P times.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from mtf.ope.config import OpeConfig
from mtf.ope.data import STATE, STEP
from mtf.ope.fqe import FqeFit, FqeFitter, FqeSettings, FqeStats
from mtf.rays import canonical_actions

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from mtf.ope.policies import TargetPolicy
    from mtf.rl.batch import TransitionBatch

logger = logging.getLogger(__name__)


def split_stats(split_df: "DataFrame", state_dim: int, action_dim: int) -> FqeStats:
    """Per-feature mean and (population) std of ``state`` and mean |reward| over the split,
    in one Spark aggregation; the same numbers :meth:`FqeStats.of` computes in memory."""
    from pyspark.sql import functions as F

    from mtf.ope.data import REWARD

    aggs = [F.avg(F.abs(F.col(REWARD))).alias("r"), F.count(F.lit(1)).alias("n")]
    for i in range(state_dim):
        x = F.element_at(F.col(STATE), i + 1).cast("double")
        aggs += [F.avg(x).alias(f"m{i}"), F.stddev_pop(x).alias(f"s{i}")]
    row = split_df.agg(*aggs).first()
    if row is None or not row["n"]:
        raise ValueError("the evaluation split has no rows")
    mean = torch.tensor([row[f"m{i}"] for i in range(state_dim)], dtype=torch.float32)
    std = torch.tensor([row[f"s{i}"] or 0.0 for i in range(state_dim)], dtype=torch.float32)
    return FqeStats(mean, std.clamp_min(1e-6), float(row["r"]), action_dim)


def initial_states(split_df: "DataFrame", n: int, seed: int, state_dim: int) -> np.ndarray:
    """Up to ``n`` first-step states of the split's sessions (a hash sample), ``(n0, S)``."""
    from pyspark.sql import functions as F

    from mtf.ope.data import SESSION_ID
    from mtf.rl.loader import list_column_to_matrix

    first = split_df.where(F.col(STEP) == 0).select(SESSION_ID, STATE)
    table = (first.orderBy(F.xxhash64(F.lit(seed), F.col(SESSION_ID))).limit(n)
             .select(STATE).toArrow())
    return list_column_to_matrix(table[STATE], state_dim, STATE).astype(np.float32)


def _actions(module: Any, state: torch.Tensor, name: str) -> torch.Tensor:
    """``pi(state)`` for a CPU batch, validated (:func:`mtf.ope.evaluate.policy_actions`)."""
    from mtf.ope.evaluate import policy_actions

    return torch.from_numpy(policy_actions(module, state.numpy(), name=name))


def fit_fqe_stream(batches: Iterator["TransitionBatch"], policies: Sequence["TargetPolicy"],
                   stats: FqeStats, initial: np.ndarray,
                   settings: Mapping[str, FqeSettings],
                   progress_every: int = 500,
                   rays: tuple[Sequence[float], Sequence[float]] | None = None
                   ) -> dict[tuple[str, str], FqeFit]:
    """Fit one Q per (policy, settings key) in lockstep on the streamed minibatches.

    Args:
        batches: endless minibatches of the split (``PetastormSource.batches()``).
        settings: e.g. ``{"conservative": ..., "plain": ...}``; all must share
            ``n_iterations`` and ``device``.
        rays: the ray parametrisation's (lo, hi): every logged action is read as its
            canonical point (the policies must already be canonical: ``ray_policies``).
    Returns:
        ``{(policy name, settings key): fit}``.
    """
    steps = {s.n_iterations for s in settings.values()}
    devices = {s.device for s in settings.values()}
    if len(steps) != 1 or len(devices) != 1:
        raise ValueError("streamed FQE fits step in lockstep: every fit needs the same "
                         "n_iterations and device")
    [n_steps], [dev] = steps, devices
    device = torch.device(dev)
    lo, hi = (torch.tensor(rays[0]), torch.tensor(rays[1])) if rays is not None else (None, None)
    modules = {p.name: p.module() for p in policies}
    s0 = torch.as_tensor(initial, dtype=torch.float32)
    fitters = {(p.name, key): FqeFitter(stats, s, s0, _actions(modules[p.name], s0, p.name),
                                        name=p.name)
               for p in policies for key, s in settings.items()}
    t0 = time.perf_counter()
    rows = 0
    for step in range(1, n_steps + 1):
        b = next(batches)
        rows += len(b)
        state, next_state = b.state.float(), b.next_state.float()
        action = b.action.float()
        if rays is not None:
            action = canonical_actions(action, lo, hi)
        cols = (state, action, b.reward.reshape(-1).float(), next_state,
                1.0 - b.is_terminal.reshape(-1).float())
        moved = [x.to(device) for x in cols]
        for p in policies:
            pi_s = _actions(modules[p.name], state, p.name).to(device)
            pi_next = _actions(modules[p.name], next_state, p.name).to(device)
            for key in settings:
                fitters[p.name, key].step(*moved, pi_s, pi_next)
        if progress_every and (step % progress_every == 0 or step == n_steps):
            dt = time.perf_counter() - t0
            logger.info("streamed FQE: step %d/%d, %d rows read, %.0f rows/s", step, n_steps,
                        rows, rows / max(dt, 1e-9))
    return {k: f.result() for k, f in fitters.items()}


def stream_fits(table: Any, policies: Sequence["TargetPolicy"], ope: OpeConfig, *,
                stats: FqeStats, initial: np.ndarray, gamma: float, seed: int,
                rays: tuple[Sequence[float], Sequence[float]] | None = None
                ) -> dict[tuple[str, str], FqeFit]:
    """Plain and conservative FQE of every policy over ``ope.split`` of the pinned ``table``
    (:class:`mtf.rl.loader.TransitionTable`), read through petastorm (``rays``: see
    :func:`fit_fqe_stream`)."""
    from mtf.ope.evaluate import fqe_settings
    from mtf.rl.loader import PetastormSource

    settings = {"conservative": fqe_settings(ope, gamma, seed, ope.alpha),
                "plain": fqe_settings(ope, gamma, seed, 0.0)}
    source = PetastormSource(table, batch_size=ope.batch_size, split=ope.split, seed=seed)
    stream = source.batches()
    try:
        return fit_fqe_stream(stream, policies, stats, initial, settings,
                              progress_every=max(ope.log_every, 1) * 10, rays=rays)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
