"""Decision rules shared by the estimators, the gate and the report: plain functions of
numbers and result rows (no estimator or job imports, so any of them can use the rules)."""
from __future__ import annotations

from mtf.ope.config import ENSEMBLE

# Rows are mtf.ope.results.PolicyEstimates / Decision; not imported, since results uses
# these rules (the package has no import cycles, typing-only ones included).


def ensemble_go(diff_lower: float, spread: float, margin: float, max_spread: float,
                support: float | None = None, min_support: float = 0.0) -> bool:
    """The ensemble gate: the lower quantile of V(pi) - V(logging) is above ``-margin``, the
    members agree (their sd of the difference, as a fraction of |V(logging)|, is at most
    ``max_spread``; 0 = no spread guard), and the logged actions reach the policy's (the share
    of its actions with a logged action nearby, :mod:`mtf.ope.support`, is at least
    ``min_support``; 0 or an unmeasured ``support`` = no support guard). Members that disagree
    are fitting extrapolation, and members far from the data extrapolate alike
    (docs/ope.md section 9)."""
    return bool(diff_lower > -margin and not spread_guard_fails(spread, max_spread)
                and not support_guard_fails(support, min_support))


def spread_guard_fails(spread: float, max_spread: float) -> bool:
    """The members' sd of the gain exceeds ``max_spread`` of |V(logging)| (0 = guard off)."""
    return bool(max_spread > 0 and spread > max_spread)


def support_guard_fails(support: float | None, min_support: float) -> bool:
    """Fewer than ``min_support`` of the policy's actions have a logged action nearby (0 or an
    unmeasured ``support`` = guard off)."""
    return bool(support is not None and min_support > 0 and support < min_support)


def pessimistic_value(row: "PolicyEstimates", gate: str) -> float:
    """The value the gate ranks by: the ensemble's one-sided lower quantile, or the
    conservative FQE estimate (already pessimistic by construction)."""
    if gate == ENSEMBLE:
        return float(row.diagnostics["ensemble_lower"])
    return float(row.estimates["conservative_fqe"].value)


def select_policy(results: "list[PolicyEstimates]", decisions: "list[Decision]",
                  candidates: "list[str] | None" = None) -> str | None:
    """Model selection without a simulator: among ``candidates`` (default: every policy with a
    decision) that got GO, the one with the highest pessimistic value under the gate that
    decided; None when none got GO (keep the deployed policy)."""
    by_name = {r.policy: r for r in results}
    allowed = [d for d in decisions if d.go and (candidates is None or d.policy in candidates)]
    if not allowed:
        return None
    best = max(allowed, key=lambda d: pessimistic_value(by_name[d.policy], d.estimator))
    return best.policy
