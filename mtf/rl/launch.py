"""``mtf train`` with ``train.nproc_per_node`` > 1: start the local DDP ranks itself.

``torchrun`` works too (every rank runs ``mtf train``), but a user mistake then comes back as
one line per rank followed by torchrun's own ``ChildFailedError`` traceback. Here the parent
process checks what every rank would check first (config, device, tracking, the pinned table)
and stops with the usual one line before any rank starts; the ranks are started with torch's
elastic launcher (the engine under torchrun, ``--standalone`` rendezvous), and a rank that
still stops on a user error leaves its own line plus one summary line, exit code 2.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from typing import TYPE_CHECKING

from mtf.errors import EXIT_USER_ERROR, NoGpuError, UserError

if TYPE_CHECKING:
    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)


def run(cfg: "MtfConfig") -> int:
    """Entry point of ``mtf train``: with ``train.nproc_per_node`` > 1 and no launcher around
    (torchrun, TorchDistributor set ``RANK``), start the local ranks; else train here."""
    from mtf.rl.job import run as train_here

    if cfg.train.nproc_per_node > 1 and "RANK" not in os.environ:
        launch_local_ranks(cfg)
        return 0
    return train_here(cfg)


class RanksFailedError(UserError):
    """Ranks stopped on user errors (each printed its own line first)."""


def preflight(cfg: "MtfConfig") -> None:
    """Raise the user errors a rank would raise before training, once, in the launcher."""
    import torch

    from mtf.rl.checkpoint import resolve_checkpoint
    from mtf.rl.distributed import DistInfo, pick_device
    from mtf.rl.job import open_training_table
    from mtf.tracking import check_available

    tcfg = cfg.train
    check_available(cfg.tracking)
    device = pick_device(tcfg.device, DistInfo())
    if device.type == "cuda" and torch.cuda.device_count() < tcfg.nproc_per_node:
        raise NoGpuError(f"train.nproc_per_node={tcfg.nproc_per_node} ranks need as many GPUs "
                         f"(NCCL), this machine has {torch.cuda.device_count()}: lower "
                         f"train.nproc_per_node or set train.device=cpu")
    open_training_table(cfg)
    if tcfg.resume_from:
        resolve_checkpoint(tcfg.resume_from)


def launch_local_ranks(cfg: "MtfConfig") -> str:
    """Train on ``train.nproc_per_node`` local ranks; returns rank 0's run directory.

    Raises:
        UserError: from :func:`preflight`, or :class:`RanksFailedError` when every failed rank
            stopped on a user error (exit code 2).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from mtf.configtools import to_dict

    preflight(cfg)
    n = cfg.train.nproc_per_node
    # The launcher's own progress and its "terminating the other ranks" lines are noise next
    # to the ranks' logs; they stay visible at debug level.
    quiet = logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    for name in ("torch.distributed.elastic", "torch.multiprocessing.spawn"):
        logging.getLogger(name).setLevel(max(quiet, logging.getLogger(name).level))
    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n,
                          run_id=f"mtf-train-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.5,
                          start_method="spawn")
    logger.info("starting %d local ranks (train.nproc_per_node)", n)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    try:
        results = elastic_launch(launch, _rank_main)(json.dumps(to_dict(cfg)), level)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        if codes and all(code == EXIT_USER_ERROR for code in codes.values()):
            ranks = ", ".join(str(r) for r in sorted(codes))
            raise RanksFailedError(f"rank {ranks} of {n} stopped on the error above "
                                   f"(train.nproc_per_node={n})") from None
        raise
    return str(results[0])


def _rank_main(cfg_json: str, log_level: str) -> str:
    """Body of every launched rank: the config from the launcher, logs tagged with the rank."""
    from mtf.cli import report_user_error
    from mtf.rl.job import _distributor_main

    try:
        return _distributor_main(cfg_json, log_level)
    except UserError as exc:
        report_user_error("train", exc)
        sys.exit(EXIT_USER_ERROR)
