"""The training loop: fixed number of steps, metrics, periodic checkpoints, resume.

:func:`train` is independent of where batches come from (petastorm or in-memory tensors) and of
how the processes were launched (plain Python, ``torchrun``, TorchDistributor). Every rank runs
exactly ``cfg.max_steps`` update steps; only global rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Protocol

import torch

from mtf.configtools import to_dict
from mtf.rays import canonical_actions
from mtf.rl.agent import Agent, agent_state, load_agent_state, make_agent, make_generator
from mtf.rl.batch import Normalizer, TransitionBatch
from mtf.rl.checkpoint import (Checkpoint, checkpoint_path, load_checkpoint, resolve_checkpoint,
                               save_checkpoint)
from mtf.rl.config import TrainConfig
from mtf.rl.distributed import DistInfo
from mtf.rl.layout import ActionSpace, TableLayout
from mtf.rl.metrics import MetricsMeter, MetricsWriter, action_stats, progress_line

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"


class BatchSource(Protocol):
    def batches(self, start_step: int) -> Iterator[TransitionBatch]:
        """Endless raw (unnormalised) batches, starting as if ``start_step`` were consumed."""


@dataclass(frozen=True)
class TrainResult:
    run_dir: str
    checkpoint: str                 # the newest checkpoint (written by rank 0)
    step: int                       # steps completed
    metrics: dict[str, float] = field(default_factory=dict)  # the last metrics record
    agent: Agent | None = field(default=None, repr=False, compare=False)  # the trained agent


def train(cfg: TrainConfig, source: BatchSource, *, gamma: float, layout: TableLayout,
          action_space: ActionSpace, run_dir: str, seed: int,
          normalizer: Normalizer | None = None, info: DistInfo = DistInfo(),
          device: torch.device = torch.device("cpu"), resume_from: str = "",
          n_train_rows: int | None = None,
          on_record: Callable[[dict[str, float], int], None] | None = None) -> TrainResult:
    """Train ``cfg.algo`` for ``cfg.max_steps`` steps on batches from ``source``.

    Args:
        gamma: the discount (``mdp.gamma``; recorded in checkpoints).
        layout: feature layout + table version of the data (recorded in checkpoints).
        action_space: task order and fusion weight intervals (recorded for export).
        run_dir: where rank 0 writes ``run.json``, ``metrics.jsonl`` and ``checkpoints/``.
        seed: seeds network initialisation (same on every rank) and sampling (per rank).
        normalizer: state mean/std; required unless resuming (the checkpoint's is used then).
        resume_from: checkpoint file or run directory; training continues from its step.
        n_train_rows: size of the training split, only to report ``data/epoch``.
        on_record: called on rank 0 with each metrics record and its step, after it is
            written to ``metrics.jsonl`` (MLflow tracking: :mod:`mtf.tracking`).
    Raises:
        ValueError: a checkpoint of another algorithm or layout, or no normaliser.
    """
    start_step, ckpt, last_ckpt = 0, None, ""
    if resume_from:
        path = resolve_checkpoint(resume_from)
        ckpt = load_checkpoint(path, map_location=device)
        _check_resumable(ckpt, cfg, layout, path)
        normalizer, start_step, last_ckpt = ckpt.normalizer, ckpt.step, path
        logger.info("resuming %s from %s at step %d", cfg.algo, path, start_step)
    elif normalizer is None:
        raise ValueError("train() needs a state normalizer unless it resumes from a checkpoint")
    if normalizer.state_dim != layout.state_dim:
        raise ValueError(f"normalizer has {normalizer.state_dim} features, layout has "
                         f"{layout.state_dim}")
    normalizer = normalizer.to(device)

    torch.manual_seed(seed)  # identical initial networks on every rank
    generator = make_generator(seed * 1_000 + info.rank, device)
    agent = make_agent(cfg, layout.state_dim, layout.action_dim, device, generator, gamma=gamma,
                       rays=action_space.rays)
    # ray parametrisation: the learners see every logged action as its ray's canonical point
    lo = torch.tensor(action_space.lo, device=device)
    hi = torch.tensor(action_space.hi, device=device)
    if ckpt is not None:
        load_agent_state(agent, ckpt.agent)
        if info.rank > 0:  # the checkpoint holds rank 0's sampling state; keep ranks distinct
            generator.manual_seed(seed * 1_000 + info.rank + 7_919 * start_step)
    agent.wrap_ddp()

    writer = None
    if info.is_main:
        os.makedirs(run_dir, exist_ok=True)
        _write_run_file(run_dir, cfg, layout, action_space, seed, info, resume_from)
        writer = MetricsWriter(run_dir, cfg.tensorboard)

    def snapshot(step: int) -> Checkpoint:
        return Checkpoint(step=step, algo=cfg.algo, state_dim=layout.state_dim,
                          action_dim=layout.action_dim, seed=seed, gamma=gamma,
                          train_config=to_dict(cfg),
                          layout=layout, action_space=action_space,
                          normalizer=normalizer.to("cpu"), agent=agent_state(agent))

    meter, record = MetricsMeter(), {}
    rows_per_step = cfg.batch_size * info.world_size
    batches = source.batches(start_step)
    t_start = t_last = time.perf_counter()
    step_last = start_step
    try:
        for step in range(start_step, cfg.max_steps):
            batch = normalizer.apply(next(batches).to(device, non_blocking=True))
            if action_space.rays:
                batch = replace(batch, action=canonical_actions(batch.action, lo, hi))
            meter.add(agent.update(batch, step))
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                meter.add(_policy_metrics(agent, batch, action_space.tasks))
                record = meter.reduce()
                now = time.perf_counter()
                record["time/steps_per_s"] = (done - step_last) / max(now - t_last, 1e-9)
                record["data/rows_per_s"] = record["time/steps_per_s"] * rows_per_step
                if n_train_rows:
                    record["data/epoch"] = done * rows_per_step / n_train_rows
                t_last, step_last = now, done
                if writer is not None:
                    writer.write(done, record)
                    if on_record is not None:
                        on_record(record, done)
                    rate = (done - start_step) / max(now - t_start, 1e-9)
                    logger.info("%s", progress_line(done, cfg.max_steps, record,
                                                    (cfg.max_steps - done) / rate))
            if info.is_main and (done % cfg.checkpoint_every == 0 or done == cfg.max_steps):
                last_ckpt = save_checkpoint(snapshot(done), run_dir, cfg.keep_checkpoints)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        if writer is not None:
            writer.close()

    final_step = max(start_step, cfg.max_steps)
    if start_step >= cfg.max_steps:
        logger.info("checkpoint is at step %d >= train.max_steps=%d: nothing to train",
                    start_step, cfg.max_steps)
    elif not info.is_main:
        last_ckpt = checkpoint_path(run_dir, final_step)  # rank 0 wrote it
    return TrainResult(run_dir, last_ckpt, final_step, record, agent)


@torch.no_grad()
def _policy_metrics(agent: Agent, batch: TransitionBatch,
                    tasks: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Action statistics of the current policy on a normalised batch.

    Sampling here must not shift the training RNG stream, or a resumed run (whose log steps
    differ) would diverge from an uninterrupted one.
    """
    with _rng_preserved(agent.generator):
        action = agent.act(batch.state)
        out = action_stats(action, batch.action, tasks)
        q = agent.q_value(batch.state, action)
    if q is not None:
        out["q/policy_action"] = q.mean()
    return out


@contextlib.contextmanager
def _rng_preserved(generator: torch.Generator) -> Iterator[None]:
    state = generator.get_state()
    try:
        yield
    finally:
        generator.set_state(state)


def _check_resumable(ckpt: Checkpoint, cfg: TrainConfig, layout: TableLayout, path: str) -> None:
    if ckpt.algo != cfg.algo:
        raise ValueError(f"checkpoint {path!r} was trained with train.algo={ckpt.algo!r}, "
                         f"this run has train.algo={cfg.algo!r}")
    ckpt.layout.require_same(layout, what=f"checkpoint {path!r}")
    if ckpt.layout.table_version != layout.table_version:
        logger.info("resuming on table version %d (checkpoint trained on version %d)",
                    layout.table_version, ckpt.layout.table_version)
    changed = sorted(k for k, v in to_dict(cfg).items() if ckpt.train_config.get(k) != v)
    if changed:
        logger.warning("train config differs from checkpoint %s in %s", path, changed)


def _write_run_file(run_dir: str, cfg: TrainConfig, layout: TableLayout,
                    action_space: ActionSpace, seed: int, info: DistInfo,
                    resume_from: str) -> None:
    run = {"train_config": to_dict(cfg), "layout": layout.to_dict(),
           "action_space": action_space.to_dict(), "seed": seed,
           "world_size": info.world_size, "resume_from": resume_from,
           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = os.path.join(run_dir, RUN_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(run, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
