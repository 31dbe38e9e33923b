"""``mtf train`` / ``mtf export``: train on the transitions table, export the policy.

Launch (each process runs :func:`run`; torchrun sets the rank variables):

    mtf train --conf-file conf/local.yaml train.max_steps=20000
    mtf train --conf-file conf/local.yaml train.nproc_per_node=2     # local DDP ranks
    torchrun --nproc_per_node 2 jobs/train.py --conf-file conf/local.yaml train.batch_size=512
    python -c "from mtf.rl.job import train_with_distributor; ..."   # Spark: TorchDistributor

Outputs go to ``<lake models>/<run id>/``: ``run.json``, ``metrics.jsonl``, ``checkpoints/``
and ``export/policy.pt`` + ``export/policy.json``.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

from mtf.config import MtfConfig
from mtf.configtools import ConfigError, from_dict, to_dict
from mtf.log import setup_logging
from mtf.rl.batch import STATE, Normalizer
from mtf.rl.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, run_dir_of
from mtf.rl.config import TrainConfig
from mtf.rl.distributed import (DistInfo, barrier, broadcast_str, configure_threads,
                                destroy_distributed, dist_info_from_env, init_distributed,
                                pick_device)
from mtf.rl.export import export_policy
from mtf.rl.layout import ActionSpace
from mtf.rl.loader import PetastormSource, TransitionTable, open_transitions, read_split
from mtf.rl.train import RUN_FILE, TrainResult, train
from mtf.tracking import Tracker, check_available, start_run

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"


def run(cfg: "MtfConfig") -> int:
    """Train in this process (one rank, or the rank a launcher started); returns 0 on success.
    ``mtf train`` comes in through :func:`mtf.rl.launch.run`, which may start local ranks."""
    train_job(cfg)
    return 0


def train_job(cfg: "MtfConfig") -> "TrainResult":
    """Pin the transitions table, train with petastorm batches (DDP if launched so), export."""

    info = dist_info_from_env()
    tcfg = cfg.train
    check_available(cfg.tracking)   # a required MLflow that is missing stops before the work
    device = pick_device(tcfg.device, info)
    configure_threads(tcfg.num_threads, info, device)
    created = init_distributed(info, device)
    tracker = Tracker()   # an MLflow run once the run directory is known (rank 0)
    try:
        table = open_training_table(cfg)
        run_dir, resume_from = _run_dir(cfg.train, cfg.lake.path("models"), info)
        tracker = start_run(cfg.tracking, lake_root=cfg.lake.root, kind="train",
                            name=os.path.basename(run_dir), config=to_dict(cfg),
                            tags={"mtf.run_dir": run_dir,
                                  "mtf.table_path": table.layout.table_path,
                                  "mtf.table_version": str(table.layout.table_version)},
                            enabled=info.is_main)
        normalizer, n_train_rows = None, None
        if not resume_from:
            normalizer, n_train_rows = fit_normalizer(table, tcfg.split, tcfg.normalizer_rows,
                                                      cfg.seed, groups=tcfg.explore_groups)
        source = PetastormSource(table, batch_size=tcfg.batch_size, split=tcfg.split,
                                 seed=cfg.seed, info=info, cfg=tcfg.loader,
                                 groups=tcfg.explore_groups)
        result = train(tcfg, source, gamma=cfg.mdp.gamma, layout=table.layout,
                       action_space=ActionSpace.from_fusion(cfg.fusion), run_dir=run_dir,
                       seed=cfg.seed, normalizer=normalizer, info=info, device=device,
                       resume_from=resume_from, n_train_rows=n_train_rows,
                       on_record=tracker.log_metrics)
        if info.is_main:
            exported = export_policy(result.checkpoint, os.path.join(run_dir, EXPORT_DIR))
            logger.info("trained %s for %d steps; exported policy: %s (sidecar %s)",
                        tcfg.algo, result.step, exported.policy_path, exported.sidecar_path)
            tracker.log_artifact(os.path.dirname(exported.policy_path), "policy")
            tracker.log_artifact(os.path.join(run_dir, RUN_FILE))
        barrier()  # other ranks leave only once rank 0 has written the export
        tracker.finish()
        return result
    finally:
        tracker.finish("FAILED")   # no-op after a successful finish
        destroy_distributed(created)


def open_training_table(cfg: "MtfConfig") -> TransitionTable:
    """The transitions table pinned by the train config, checked against its tasks and
    feature version (every rank, and the local launcher before it starts them)."""
    tcfg = cfg.train
    table = open_transitions(cfg.lake.path("transitions"), tcfg.table_version,
                             start_ds=tcfg.start_ds, end_ds=tcfg.end_ds)
    table.layout.require_request(cfg.fusion.names, tcfg.feature_version)
    return table


def run_export(cfg: "MtfConfig") -> int:
    """Entry point of ``mtf export``: export ``train.export_checkpoint`` next to its run."""

    where = cfg.train.export_checkpoint
    if not where:
        raise ConfigError("mtf export needs train.export_checkpoint=<checkpoint file or run "
                          "directory> (a run id under the lake's models directory works too)")
    if not os.path.exists(where):
        candidate = os.path.join(cfg.lake.path("models"), where)
        where = candidate if os.path.exists(candidate) else where
    path = resolve_checkpoint(where)
    ckpt = load_checkpoint(path)
    configured = ActionSpace.from_fusion(cfg.fusion)
    if configured != ckpt.action_space:
        raise ConfigError(f"checkpoint {path!r} was trained with fusion tasks/intervals "
                          f"{ckpt.action_space.to_dict()} but the config has "
                          f"{configured.to_dict()}; set fusion.tasks as in training")
    exported = export_policy(path, os.path.join(run_dir_of(path), EXPORT_DIR))
    logger.info("exported policy: %s (sidecar %s)", exported.policy_path, exported.sidecar_path)
    return 0


def fit_normalizer(table: TransitionTable, split: str, max_rows: int,
                   seed: int, groups: tuple[str, ...] = ()) -> tuple[Normalizer, int]:
    """State mean/std from up to ``max_rows`` rows of ``split`` (seeded row-group sample).

    Deterministic, so every rank computes the same statistics without communicating. Also
    returns the estimated number of ``split`` rows in the table (for ``data/epoch``).
    """
    cols, scanned = read_split(table, split, columns=(STATE,), max_rows=max_rows, seed=seed,
                               groups=groups)
    states = cols[STATE]
    logger.info("state normaliser fitted on %d rows of split %r", len(states), split)
    return Normalizer.fit(states), round(table.n_rows * len(states) / max(scanned, 1))


def _run_dir(tcfg: TrainConfig, models: str, info: DistInfo) -> tuple[str, str]:
    """(run directory, checkpoint to resume from or "").

    ``train.resume_from`` continues that run in its own directory; a ``train.run_id`` whose
    directory already holds checkpoints resumes from the newest (so a restarted torchrun job
    picks up where it stopped); otherwise a new ``<algo>-<UTC time>-<random>`` run starts.
    """
    if tcfg.resume_from:
        path = resolve_checkpoint(tcfg.resume_from)
        return run_dir_of(path), path
    run_id = tcfg.run_id or broadcast_str(
        f"{tcfg.algo}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}")
    run_dir = os.path.join(models, run_id)
    # rank 0 decides, so every rank starts from the same step even if they see storage apart
    existing = broadcast_str((latest_checkpoint(run_dir) or "") if info.is_main else "")
    if existing:
        logger.info("run %s already has checkpoints; resuming from %s", run_id, existing)
    return run_dir, existing


def train_with_distributor(cfg: "MtfConfig", num_processes: int, *, local_mode: bool = True,
                           use_gpu: bool = False) -> str:
    """Run :func:`train_job` on ``num_processes`` ranks with Spark's TorchDistributor.

    Needs an active SparkSession (``mtf.spark.get_spark``). ``local_mode=True`` starts the ranks
    on the driver (torchrun underneath); ``False`` runs them as barrier tasks on executors, which
    must see the lake path (shared or object storage). Returns rank 0's run directory.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=num_processes, local_mode=local_mode,
                                   use_gpu=use_gpu)
    run_dir = distributor.run(_distributor_main, json.dumps(to_dict(cfg)))
    return str(run_dir)


def _distributor_main(cfg_json: str, log_level: str = "INFO") -> str:
    """Body of every TorchDistributor (and mtf.rl.launch) rank: rebuild the config, log with
    the rank, train; returns the run directory."""

    info = dist_info_from_env()
    setup_logging(log_level, rank=info.rank)
    cfg: Any = from_dict(MtfConfig, json.loads(cfg_json))
    return train_job(cfg).run_dir
