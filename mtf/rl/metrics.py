"""Training metrics: accumulation across steps and ranks, action statistics, the metrics file.

Keys are namespaced (``loss/critic``, ``q/data``, ``action/l2_to_logged``, ``data/rows_per_s``).
Per-step values stay on the device as detached tensors and are reduced as ``[sum, count]``
over ranks only when a record is written, so logging costs one sync per ``log_every`` steps.
Rank 0 appends one JSON object per record to ``<run_dir>/metrics.jsonl`` and, when TensorBoard
is installed and enabled, writes the same scalars there.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence

import torch

from mtf.rl.distributed import all_reduce_sum

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsMeter:
    """Running sums of scalar metrics since the last :meth:`reduce`."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            v = value.detach().float()
            self._sums[name] = self._sums[name] + v if name in self._sums else v
            self._counts[name] = self._counts.get(name, 0) + 1

    def reduce(self) -> dict[str, float]:
        """Means over steps and ranks (every rank must call it at the same step); resets."""
        if not self._sums:
            return {}
        names = sorted(self._sums)
        sums = torch.stack([self._sums[n] for n in names])
        counts = torch.tensor([float(self._counts[n]) for n in names], device=sums.device)
        total = all_reduce_sum(torch.cat([sums, counts]))   # (2 * n_metrics,)
        means = (total[:len(names)] / total[len(names):]).tolist()
        self._sums.clear()
        self._counts.clear()
        return dict(zip(names, means))


@torch.no_grad()
def action_stats(policy_action: torch.Tensor, logged_action: torch.Tensor,
                 tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    """How far the policy's actions are from the logged ones, and their spread.

    Args:
        policy_action: ``(B, k)`` the policy's actions for the batch's states.
        logged_action: ``(B, k)`` the logged actions of the same states.
        tasks: the k task names, for per-task means.
    """
    out = {
        "action/l2_to_logged": (policy_action - logged_action).norm(dim=1).mean(),
        "action/mean": policy_action.mean(),
        "action/std": policy_action.std(dim=0, unbiased=False).mean(),
        "action/abs_max": policy_action.abs().amax(dim=1).mean(),
    }
    per_task = policy_action.mean(dim=0)  # (k,)
    for i, task in enumerate(tasks):
        out[f"action/mean/{task}"] = per_task[i]
    return out


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` (and TensorBoard); only rank 0 creates one."""

    def __init__(self, run_dir: str, tensorboard: bool) -> None:
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, METRICS_FILE)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                logger.debug("TensorBoard is not installed; metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def write(self, step: int, record: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else None) for k, v in record.items()}
        self._file.write(json.dumps({"step": step, **clean}, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def progress_line(step: int, max_steps: int, record: dict[str, float], eta_s: float) -> str:
    """``step 1000/300000 (0.3%) loss/critic=0.123 ... data/rows_per_s=5120 eta 1h02m``."""
    shown = [k for k in record if k.startswith(("loss/", "q/"))] + [
        k for k in ("action/l2_to_logged", "data/rows_per_s", "time/steps_per_s") if k in record]
    parts = " ".join(f"{k}={_fmt(record[k])}" for k in shown)
    return (f"step {step}/{max_steps} ({100.0 * step / max_steps:.1f}%) {parts} "
            f"eta {_duration(eta_s)}")


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
