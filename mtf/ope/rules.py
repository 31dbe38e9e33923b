"""Decision rules shared by the estimators and the gate, as plain functions of numbers."""
from __future__ import annotations


def ensemble_go(diff_lower: float, spread: float, margin: float, max_spread: float) -> bool:
    """The ensemble gate: the lower quantile of V(pi) - V(logging) is above ``-margin`` and
    the members agree (their sd of the difference, as a fraction of |V(logging)|, is at most
    ``max_spread``; 0 = no spread guard). Members that disagree that much are fitting
    extrapolation, not data, and a wide spread lets a large mean pass the bound
    (docs/ope.md section 9)."""
    return bool(diff_lower > -margin and (max_spread <= 0 or spread <= max_spread))
