"""How good is an off-policy estimator? Ranking, error, pessimism and gate metrics.

The definitions follow the DOPE benchmark (Fu et al., ICLR 2021) where it has one; every
function takes plain numbers (estimates and true values per policy), so the same code scores
any estimator against any ground truth (docs/ope.md section 9):

* :func:`spearman` (from :mod:`mtf.ope.truth`): rank correlation of estimates with the truth;
* :func:`regret_at_1`: true value lost by deploying the policy the estimator ranks first,
  normalised by the spread of true values ``(max V - V[argmax est]) / (max V - min V)``;
* :func:`pairwise_accuracy`: share of the policy pairs whose true values differ by more than
  ``min_gap`` that the estimator orders the same way;
* :func:`relative_mae`: mean absolute error over ``|V(reference)|``;
* :func:`share_at_or_below`: share of policies whose (pessimistic) estimate is <= the truth;
* :func:`coverage`: share of intervals containing the truth;
* :func:`gate_confusion`: the go / no-go decisions against the true difference to the logging
  policy, with a dead zone of ``margin`` (a fraction of the logging value) on either side.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from mtf.ope.truth import spearman

__all__ = ["regret_at_1", "pairwise_accuracy", "relative_mae", "share_at_or_below", "coverage",
           "gate_confusion", "true_class", "estimator_accuracy", "spearman"]


def _arrays(est: Sequence[float], true: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    e, t = np.asarray(est, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if e.shape != t.shape or e.ndim != 1:
        raise ValueError(f"estimates and truths must be equal-length vectors, got {e.shape} "
                         f"and {t.shape}")
    if e.size == 0:
        raise ValueError("no policies to score")
    return e, t


def regret_at_1(est: Sequence[float], true: Sequence[float]) -> float:
    """``(max V - V[argmax est]) / (max V - min V)``; 0 when all truths are equal.

    Ties in the estimate go to the policy listed first (deterministic)."""
    e, t = _arrays(est, true)
    spread = t.max() - t.min()
    if spread == 0:
        return 0.0
    return float((t.max() - t[int(np.argmax(e))]) / spread)


def pairwise_accuracy(est: Sequence[float], true: Sequence[float],
                      min_gap: float) -> tuple[float, int]:
    """(share of pairs ordered like the truth, number of pairs) over the pairs whose true
    values differ by more than ``min_gap``; an estimated tie counts as wrong. NaN, 0 when no
    pair qualifies."""
    e, t = _arrays(est, true)
    right = total = 0
    for i in range(e.size):
        for j in range(i + 1, e.size):
            td = t[i] - t[j]
            if abs(td) > min_gap:
                total += 1
                right += int(np.sign(e[i] - e[j]) == np.sign(td))
    return (right / total if total else float("nan")), total


def relative_mae(est: Sequence[float], true: Sequence[float], reference_value: float) -> float:
    """``mean |est - true| / |reference_value|`` (the logging policy's true value)."""
    e, t = _arrays(est, true)
    if reference_value == 0:
        raise ValueError("relative_mae needs a non-zero reference value")
    return float(np.abs(e - t).mean() / abs(reference_value))


def share_at_or_below(est: Sequence[float], true: Sequence[float]) -> float:
    """Share of policies whose estimate is <= the true value (pessimism that holds)."""
    e, t = _arrays(est, true)
    return float(np.mean(e <= t))


def coverage(low: Sequence[float], high: Sequence[float], true: Sequence[float]) -> float:
    """Share of intervals ``[low, high]`` that contain the true value."""
    lo, t = _arrays(low, true)
    hi, _ = _arrays(high, true)
    return float(np.mean((lo <= t) & (t <= hi)))


def true_class(true_diff: float, margin: float) -> str:
    """``better`` / ``worse`` when the true difference to logging exceeds ``margin`` (absolute
    units) up / down, else ``neutral``."""
    if true_diff > margin:
        return "better"
    if true_diff < -margin:
        return "worse"
    return "neutral"


def gate_confusion(go: Mapping[str, bool], true_diff: Mapping[str, float],
                   margin: float) -> dict[str, dict[str, int]]:
    """``{true class: {"go": n, "no_go": n}}`` for the candidates in ``go``."""
    out = {c: {"go": 0, "no_go": 0} for c in ("better", "neutral", "worse")}
    for name, decision in go.items():
        out[true_class(true_diff[name], margin)]["go" if decision else "no_go"] += 1
    return out


def estimator_accuracy(policies: Sequence[str], estimate: Sequence[float],
                       truth: Mapping[str, float], *, reference: str, rel_gap: float = 0.01,
                       low: Sequence[float] | None = None, high: Sequence[float] | None = None,
                       pessimistic: Sequence[float] | None = None,
                       go: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """Every metric above for one estimator on one world.

    ``truth`` holds the true value per policy (the ``reference`` among them); ``rel_gap`` is
    the share of ``|truth[reference]|`` used both as the pairwise-accuracy gap and as the
    gate's dead zone. ``low``/``high``: the estimator's interval; ``pessimistic``: the value
    that should sit at or below the truth (default: the estimate itself); ``go``: decisions.
    """
    t = [truth[p] for p in policies]
    ref = truth[reference]
    gap = rel_gap * abs(ref)
    acc, n_pairs = pairwise_accuracy(estimate, t, gap)
    out: dict[str, Any] = {
        "n_policies": len(policies), "spearman": spearman(estimate, t),
        "regret_at_1": regret_at_1(estimate, t), "pairwise_accuracy": acc,
        "n_pairs": n_pairs, "relative_mae": relative_mae(estimate, t, ref),
        "share_at_or_below_truth": share_at_or_below(
            pessimistic if pessimistic is not None else estimate, t),
    }
    if low is not None and high is not None:
        out["coverage"] = coverage(low, high, t)
    if go is not None:
        out["gate"] = gate_confusion(go, {p: truth[p] - ref for p in go}, gap)
    out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
    return out
