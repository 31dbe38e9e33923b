"""OPE estimates against true values: the instrument that says how far to trust the estimators.

A *ground truth* is anything that can tell the true value of a policy: in mtf the simulator
(:class:`mtf.sim.truth.SimulatorTruth`), which the closed loop and the validation experiment
pass in. The OPE never imports the simulator; it only knows the :class:`GroundTruth` interface.

* :func:`compare_with_truth`: per estimator, errors, Spearman rank correlation, interval
  coverage; the pairs the conservative estimator orders differently from the truth; each
  go / no-go decision against the true difference.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from mtf.ope.config import LOGGING_POLICY, REPORTED_ESTIMATORS

if TYPE_CHECKING:
    from mtf.ope.results import Decision, PolicyEstimates

NumpyPolicy = Callable[[np.ndarray], np.ndarray]   # raw states (B, S) -> actions (B, k)


class GroundTruth(Protocol):
    """What OPE validation needs from a source of true policy values."""

    note: str   # how the truth is defined (start distribution, sessions), for the report

    def values(self, policies: Mapping[str, NumpyPolicy], n_sessions: int,
               seed: int) -> dict[str, dict[str, Any]]:
        """True value of each policy, paired (common random numbers): name -> ``{"mean",
        "ci_low", "ci_high", "std_err", "n_sessions", "mean_session_length", "ci_level"}``."""


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.arange(1, a.size + 1)
    for v in np.unique(a):
        tie = a == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks); NaN if undefined."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return float("nan")
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def compare_with_truth(results: Sequence["PolicyEstimates"],
                       truth: Mapping[str, Mapping[str, Any]],
                       decisions: Sequence["Decision"] = (), note: str = "",
                       reference: str = LOGGING_POLICY) -> dict[str, Any]:
    """Per estimator: errors (of values and of differences to the ``reference`` policy, the
    logging baseline the decisions compare with), Spearman, interval coverage; the pairs the
    conservative estimator orders differently from the truth; each decision against the true
    difference."""
    rows = [r for r in results if r.policy in truth]
    true = np.array([truth[r.policy]["mean"] for r in rows])
    out: dict[str, Any] = {"policies": [r.policy for r in rows], "truth": true.tolist(),
                           "estimators": {}, "note": note}
    ref = truth.get(reference)
    for est in REPORTED_ESTIMATORS:
        ok = [i for i, r in enumerate(rows)
              if est in r.estimates and r.estimates[est].available]
        if len(ok) < 1:
            continue
        est_v = np.array([rows[i].estimates[est].value for i in ok])
        err = est_v - true[ok]
        covered = [rows[i].estimates[est].ci_low <= true[i] <= rows[i].estimates[est].ci_high
                   for i in ok]
        rho = spearman(est_v, true[ok])
        out["estimators"][est] = {
            "policies": [rows[i].policy for i in ok],
            "estimate": est_v.tolist(), "error": err.tolist(),
            "mean_abs_error": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err ** 2).mean())),
            "spearman": rho, "coverage": float(np.mean(covered)),
            "same_order": bool(np.array_equal(np.argsort(est_v, kind="mergesort"),
                                              np.argsort(true[ok], kind="mergesort"))),
        }
        diffs = [(rows[i].diff_vs_logging[est].value, true[i] - ref["mean"]) for i in ok
                 if ref is not None and est in rows[i].diff_vs_logging
                 and rows[i].diff_vs_logging[est].available]
        if diffs:
            d_err = np.array([a - b for a, b in diffs])
            out["estimators"][est]["diff_mean_abs_error"] = float(np.abs(d_err).mean())
    pairs = []
    cons = {r.policy: r for r in rows}
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            td = truth[a.policy]["mean"] - truth[b.policy]["mean"]
            ed = (a.estimates["conservative_fqe"].value - b.estimates["conservative_fqe"].value)
            if np.sign(td) != np.sign(ed):
                se = math.hypot(truth[a.policy]["std_err"], truth[b.policy]["std_err"])
                pairs.append({"a": a.policy, "b": b.policy, "true_diff": td,
                              "estimated_diff": ed, "truth_tied": abs(td) < 2 * se,
                              "penalty_a": cons[a.policy].diagnostics["conservative_penalty"],
                              "penalty_b": cons[b.policy].diagnostics["conservative_penalty"]})
    out["discordant_pairs"] = pairs
    if ref is not None:
        out["decisions"] = []
        for d in decisions:
            if d.policy in truth:
                true_diff = truth[d.policy]["mean"] - ref["mean"]
                true_go = true_diff > -d.margin
                out["decisions"].append({"policy": d.policy, "go": d.go, "true_diff": true_diff,
                                         "true_go": bool(true_go), "agree": d.go == true_go})
    return out
