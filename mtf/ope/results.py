"""Estimates with bootstrap intervals, paired differences, and the go / no-go decision.

Input: per policy, the ``(1 + B, m)`` session sums of :mod:`mtf.ope.bootstrap` (row 0 = full
data). Output: :class:`PolicyEstimates` (every estimator's value, percentile interval and
bootstrap standard error; paired differences against the logging policy; diagnostics) and one
:class:`Decision` per candidate policy.

Go / no-go rule (docs/ope.md): with ``D = V_cons(pi) - V_cons(logging)`` (conservative FQE of
each policy, same bootstrap replicates, so D is paired), ``[D_lo, D_hi]`` its two-sided
``ci_level`` percentile interval and ``P = V_FQE(pi) - V_cons(pi)`` the conservative penalty,

    go  <=>  D_lo > -go_margin * |V_cons(logging)|   and   P <= max_penalty * |V_cons(logging)|

i.e. a one-sided test at level (1 + ci_level) / 2 that the candidate loses less than the
margin, plus a support guard: when the regulariser had to cut the candidate's value by more
than ``max_penalty`` of the reference value, that value rests on extrapolation beyond the logged
actions and no bound computed from it is trusted (``max_penalty = 0`` disables the guard). The
other estimators do not change the decision; disagreements and weak diagnostics are attached
as warnings.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mtf.ope.bootstrap import percentile_interval
from mtf.ope.config import ENSEMBLE, ESTIMATORS, LOGGING_POLICY, OpeConfig
from mtf.ope.estimators import diagnostics_from_sums, estimates_from_sums
from mtf.ope.rules import ensemble_go, spread_guard_fails, support_guard_fails

if TYPE_CHECKING:
    from mtf.ope.ensemble import EnsembleFit

DECISION_ESTIMATOR = "conservative_fqe"   # the paper's gate (ope.gate picks the one used)
IS_FAMILY = ("pdis", "wpdis", "dr")
_MIN_ESS = 30.0           # below this effective sample size the IS family gets a warning
_MAX_CLIPPED_SHARE = 0.05


@dataclass(frozen=True)
class Estimate:
    """One estimator's value for one policy (or a paired difference of two policies)."""

    estimator: str
    value: float            # full-data point estimate
    ci_low: float           # percentile interval of the bootstrap replicates
    ci_high: float
    std_err: float          # standard deviation of the replicates
    available: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PolicyEstimates:
    policy: str
    estimates: dict[str, Estimate]
    diff_vs_logging: dict[str, Estimate]   # paired V(pi) - V(logging); empty for logging
    diagnostics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy,
                "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
                "diff_vs_logging": {k: e.to_dict() for k, e in self.diff_vs_logging.items()},
                "diagnostics": {k: _json_float(v) for k, v in self.diagnostics.items()}}


@dataclass(frozen=True)
class Decision:
    policy: str
    go: bool
    estimator: str
    diff: float              # V_cons(pi) - V_cons(logging)
    diff_low: float          # lower end of its interval
    margin: float            # absolute margin in return units
    reason: str              # the bound against the margin, and the support guard if it failed
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) for k, v in asdict(self).items()}


def _json_float(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    return v


def _estimate(name: str, values: np.ndarray, level: float, note_if_missing: str) -> Estimate:
    point = float(values[0])
    reps = values[1:]
    if not math.isfinite(point):
        return Estimate(name, float("nan"), float("nan"), float("nan"), float("nan"),
                        available=False, note=note_if_missing)
    lo, hi = percentile_interval(reps, level)
    finite = reps[np.isfinite(reps)]
    se = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    note = "" if finite.size == reps.size else \
        f"{reps.size - finite.size} of {reps.size} replicates had no session to average"
    return Estimate(name, point, lo, hi, se, True, note)


def summarise(sums: Mapping[str, np.ndarray], cfg: OpeConfig,
              logging_name: str = LOGGING_POLICY) -> list[PolicyEstimates]:
    """Estimates, intervals and paired differences for every policy in ``sums``."""
    h = cfg.wpdis_horizon
    values = {name: estimates_from_sums(s, h) for name, s in sums.items()}
    ref = values.get(logging_name)
    out = []
    for name, s in sums.items():
        diag = diagnostics_from_sums(s[0])
        missing = {
            "conservative_fqe": "no initial state in the sample",
            "fqe": "no initial state in the sample",
        }
        for est in IS_FAMILY:
            missing[est] = (f"no session with action_logp on every step "
                            f"({int(diag['n_sessions_excluded_is'])} excluded)")
        estimates = {e: _estimate(e, values[name][e], cfg.ci_level, missing[e])
                     for e in ESTIMATORS}
        diffs: dict[str, Estimate] = {}
        if ref is not None and name != logging_name:
            diffs = {e: _estimate(e, values[name][e] - ref[e], cfg.ci_level, missing[e])
                     for e in ESTIMATORS}
        diag["conservative_penalty"] = (estimates["fqe"].value
                                        - estimates["conservative_fqe"].value)
        out.append(PolicyEstimates(name, estimates, diffs, diag))
    return out


def with_ensemble(results: list[PolicyEstimates], fit: "EnsembleFit", cfg: OpeConfig,
                  logging_name: str = LOGGING_POLICY) -> list[PolicyEstimates]:
    """``results`` with the FQE ensemble's estimate, paired difference and diagnostics added.

    Interval: ``mean -+ z sd`` across members (a normal bootstrap interval at ``ci_level``);
    diagnostics ``ensemble_lower`` / ``ensemble_diff_lower`` are the one-sided
    ``ope.ensemble.lower_quantile`` bounds the ensemble gate uses, ``ensemble_converged`` is
    1.0 when the fit's value stopped moving (mtf.ope.ensemble.EnsembleFit.converged).
    """
    has_ref = logging_name in fit.policies
    summary = fit.summary(logging_name if has_ref else fit.policies[0], level=cfg.ci_level,
                          margin=cfg.go_margin)
    out = []
    for r in results:
        s = summary.get(r.policy)
        if s is None:
            out.append(r)
            continue
        est = dict(r.estimates)
        est[ENSEMBLE] = Estimate(ENSEMBLE, float(s["estimate"]), float(s["ci_low"]),
                                 float(s["ci_high"]), float(s["sd"]))
        diffs = dict(r.diff_vs_logging)
        if has_ref and r.policy != logging_name:
            d = float(s["diff"])
            half = NormalDist().inv_cdf(0.5 + cfg.ci_level / 2) * float(s["diff_sd"])
            diffs[ENSEMBLE] = Estimate(ENSEMBLE, d, d - half, d + half, float(s["diff_sd"]))
        diag = dict(r.diagnostics)
        diag.update({"ensemble_lower": float(s["lower"]),
                     "ensemble_diff_lower": float(s["diff_lower"]),
                     "ensemble_spread": float(s["spread"]),
                     "ensemble_converged": 1.0 if s["converged"] else 0.0,
                     "ensemble_support": float(s.get("support", float("nan"))),
                     "occupancy_ess": float(s.get("occupancy_ess", float("nan"))),
                     "ensemble_backups": float(fit.backups)})
        out.append(PolicyEstimates(r.policy, est, diffs, diag))
    return out


def decide(results: list[PolicyEstimates], cfg: OpeConfig,
           logging_name: str = LOGGING_POLICY) -> list[Decision]:
    """The go / no-go decision of every policy other than the logging one (module docstring).

    With ``ope.gate = fqe_ensemble`` the bound is the ensemble's one-sided lower quantile of
    the paired difference (``ensemble_diff_lower``), and the spread guard
    (``ope.ensemble.max_spread``, :func:`mtf.ope.rules.ensemble_go`) replaces the
    conservative estimator's penalty guard: members that disagree about the gain are fitting
    extrapolation.

    Raises:
        ValueError: the logging policy is not among ``results`` or its conservative estimate
            is not a number (the rule has no reference then).
    """
    by_name = {r.policy: r for r in results}
    gate = cfg.gate
    if logging_name not in by_name:
        raise ValueError(f"the go / no-go rule compares with the logging policy "
                         f"{logging_name!r}, which was not evaluated (ope.include_logging)")
    ref = by_name[logging_name].estimates.get(gate)
    if ref is None or not ref.available:
        raise ValueError(f"the {gate} estimate of {logging_name!r} is not available"
                         f"{': ' + ref.note if ref is not None else ''}")
    margin = cfg.go_margin * abs(ref.value)
    max_penalty = cfg.max_penalty * abs(ref.value)
    out = []
    for r in results:
        if r.policy == logging_name:
            continue
        d = r.diff_vs_logging[gate]
        if not d.available or not math.isfinite(d.ci_low):
            raise ValueError(f"policy {r.policy!r}: the {gate} difference to the logging "
                             f"policy is not a number ({d.note or 'NaN replicates'})")
        if gate == ENSEMBLE:
            low = r.diagnostics["ensemble_diff_lower"]
            spread = r.diagnostics["ensemble_spread"]
            cap = cfg.ensemble.max_spread
            bound_ok = low > -margin
            support = r.diagnostics.get("ensemble_support", float("nan"))
            support = support if math.isfinite(support) else None
            min_support = cfg.ensemble.min_support
            go = ensemble_go(low, spread, margin, cap, support, min_support)
            reason = (f"{cfg.ensemble.lower_quantile:.0%} quantile of the ensemble's "
                      f"V({r.policy}) - V(logging) = {low:.4g} {'>' if bound_ok else '<='} "
                      f"-margin = {-margin:.4g}")
            if bound_ok and spread_guard_fails(spread, cap):
                reason += (f", but the spread guard fails: the members' sd of the difference "
                           f"is {spread:.0%} of |V(logging)| > {cap:.0%} (they disagree: the "
                           f"estimate rests on extrapolation, not on the logged data)")
            if bound_ok and support_guard_fails(support, min_support):
                reason += (f", but the support guard fails: only {support:.0%} of its actions "
                           f"have a logged action nearby (< {min_support:.0%}; the value "
                           f"extrapolates to actions the logs never took)")
            out.append(Decision(r.policy, go, gate, d.value, low, margin, reason,
                                _warnings(r, margin, go)))
            continue
        bound_ok = d.ci_low > -margin
        reason = (f"lower {cfg.ci_level:.0%} bound of V_cons({r.policy}) - V_cons(logging) = "
                  f"{d.ci_low:.4g} {'>' if bound_ok else '<='} -margin = {-margin:.4g}")
        penalty = r.diagnostics["conservative_penalty"]
        supported = cfg.max_penalty <= 0 or penalty <= max_penalty
        if bound_ok and not supported:
            reason += (f", but the support guard fails: FQE - conservative FQE = {penalty:.4g} > "
                       f"{cfg.max_penalty:g} * |V_cons(logging)| = {max_penalty:.4g} (the "
                       f"estimate extrapolates beyond the logged actions)")
        go = bound_ok and supported
        out.append(Decision(r.policy, go, gate, d.value, d.ci_low, margin, reason,
                            _warnings(r, margin, go)))
    return out


def _warnings(r: PolicyEstimates, margin: float, go: bool) -> list[str]:
    w = []
    dr = r.diff_vs_logging.get("dr")
    if dr is not None and dr.available and math.isfinite(dr.ci_low):
        dr_go = dr.ci_low > -margin
        if dr_go != go:
            w.append(f"the doubly robust estimate disagrees (its lower bound of the difference "
                     f"is {dr.ci_low:.4g})")
    diag = r.diagnostics
    ess = diag.get("ess_trajectory", 0.0)
    if diag.get("n_sessions_is", 0.0) > 0 and ess < _MIN_ESS:
        w.append(f"IS-family estimates rest on an effective sample of {ess:.1f} sessions "
                 f"(of {int(diag['n_sessions_is'])}): the policy is far from the logged actions")
    made, needed = diag.get("fqe_backups"), diag.get("backups_needed")
    if made is not None and needed is not None and made < needed:
        w.append(f"the FQE fits made {int(made)} Bellman backups (ope.n_iterations / "
                 f"ope.target_update_every) but this split's sessions need {int(needed)}: the "
                 f"values are truncated, raise ope.n_iterations")
    ens_low = diag.get("ensemble_diff_lower")
    if ens_low is not None and (ens_low > -margin) != go:
        w.append(f"the FQE ensemble disagrees (its lower bound of the difference is "
                 f"{ens_low:.4g})")
    if diag.get("ensemble_converged") == 0.0:
        w.append(f"the FQE ensemble's value still moved over its last backups "
                 f"({int(diag.get('ensemble_backups', 0))} backups): not converged, treat its "
                 f"numbers as provisional")
    clipped = diag.get("clipped_share", float("nan"))
    if math.isfinite(clipped) and clipped > _MAX_CLIPPED_SHARE:
        w.append(f"{clipped:.1%} of importance weights hit ope.max_weight (IS family biased)")
    return w


def flat_metrics(results: list[PolicyEstimates], decisions: list[Decision]) -> dict[str, float]:
    """The figures of a run as flat scalars (MLflow metrics, :mod:`mtf.tracking`).

    ``ope/<policy>/<estimator>`` (+ ``/ci_low``, ``/ci_high``) for every available estimate,
    ``ope/<policy>/diff/<estimator>`` for the paired difference to the logging policy, and
    per candidate ``gate/<policy>/go`` (1 = go, 0 = no-go), ``gate/<policy>/diff``,
    ``gate/<policy>/diff_low`` and ``gate/<policy>/margin``.
    """
    out: dict[str, float] = {}
    for r in results:
        for name, e in r.estimates.items():
            if e.available:
                out[f"ope/{r.policy}/{name}"] = e.value
                out[f"ope/{r.policy}/{name}/ci_low"] = e.ci_low
                out[f"ope/{r.policy}/{name}/ci_high"] = e.ci_high
        for name, e in r.diff_vs_logging.items():
            if e.available:
                out[f"ope/{r.policy}/diff/{name}"] = e.value
    for d in decisions:
        out.update({f"gate/{d.policy}/go": float(d.go), f"gate/{d.policy}/diff": d.diff,
                    f"gate/{d.policy}/diff_low": d.diff_low,
                    f"gate/{d.policy}/margin": d.margin})
    return {k: float(v) for k, v in out.items()}
