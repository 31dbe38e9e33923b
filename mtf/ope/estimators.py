"""The estimators, as per-session statistics and ratios of their sums (numpy reference).

Notation: session i has steps t = 0..T_i-1 (``position`` in the session), logged action a_t
with behaviour log-density ``action_logp`` = log mu(a_t | s_t), target density pi_e (see
:mod:`mtf.ope.policies`), discount gamma, done_t = is_terminal_t. Per-decision weights

    rho_{0:t} = min(exp(sum_{t' <= t} [log pi_e(a_t'|s_t') - log mu(a_t'|s_t')]), max_weight)

(the cumulative weight is clipped, in log space). Q^ is the plain FQE fit of the policy,
V^(s) = Q^(s, pi(s)) (plug-in: exact for the deterministic policy, a second-order
approximation of E_{a ~ pi_e} Q^(s, a) for the smoothed one), Q^c the conservative fit.

    conservative_fqe = mean_{i in S0} Q^c(s_i0, pi(s_i0))                 (docs/method.md section 7)
    fqe (DM)         = mean_{i in S0} V^(s_i0)
    pdis             = (1/n) sum_i sum_t gamma^t rho^i_{0:t} r^i_t            (Precup 2000)
    wpdis            = sum_{t < H} [sum_i gamma^t rho^i_{0:t} r^i_t] / [sum_i rho~^i_t]
                       rho~^i_t = rho^i_{0:min(t, T_i - 1)} (an ended session keeps its last
                       weight: absorbing-state padding, Thomas & Brunskill 2016)
    dr               = (1/n) sum_i [ V^(s_i0) + sum_t gamma^t rho^i_{0:t}
                                      (r^i_t + gamma (1 - done^i_t) V^(s'^i_t) - Q^(s^i_t, a^i_t)) ]
                       (per-decision doubly robust, Jiang & Li 2016, telescoped form; a
                       truncated session bootstraps through V^(s') of its last step)

S0 is the initial-state sample (about ``ope.n_initial_states`` sessions, hash-selected); the
IS family (pdis, wpdis, dr) uses every session whose steps all carry ``action_logp`` (the
deterministic exploit group has none; such sessions are excluded and counted).

Every estimator is a ratio of sums over sessions of the columns :data:`SUM_COLUMNS`, so the
Spark job only ships those sums (one row per bootstrap replicate); the per-session columns
:data:`RAW_COLUMNS` are computed identically by this module and by :mod:`mtf.ope.score`.
"""
from __future__ import annotations

import math

import numpy as np

# Per-session statistics, per policy (Spark: the ``raw`` array column, in this order).
RAW_COLUMNS = (
    "v0",             # V^(s_0) = Q^(s_0, pi(s_0)), plain FQE
    "cv0",            # Q^c(s_0, pi(s_0)), conservative FQE
    "eligible",       # 1 if every step has action_logp (IS family uses the session)
    "pdis",           # sum_t gamma^t rho_{0:t} r_t                     (0 if not eligible)
    "dr_correction",  # sum_t gamma^t rho_{0:t} (r_t + gamma (1-done_t) V^(s'_t) - Q^(s_t,a_t))
    "rho_last",       # rho_{0:T-1}                                      (0 if not eligible)
    "rho_first",      # rho_{0:0}                                        (0 if not eligible)
    "n_rows",         # T
    "n_clipped",      # steps whose cumulative weight hit max_weight     (0 if not eligible)
    "truncated",      # 1 if the session was cut by the data window (is_truncated)
    "mc_return",      # sum_t gamma^t r_t of the logged session (on-policy return)
    "exploit",        # 1 if the session is in the exploit group (logging baseline, no noise)
)
R = {name: i for i, name in enumerate(RAW_COLUMNS)}

# Columns summed over sessions (+ NUM[H], DEN[H] for WPDIS), in this order.
SUM_COLUMNS = (
    "n_sessions", "n_initial", "initial_v0", "initial_cv0", "n_eligible", "eligible_pdis",
    "eligible_dr", "rho_last", "rho_last_sq", "rho_first", "rho_first_sq", "n_rows",
    "n_rows_eligible", "n_clipped", "n_truncated", "mc_return", "n_exploit",
    "exploit_mc_return",
)
S = {name: i for i, name in enumerate(SUM_COLUMNS)}


def n_sum_columns(horizon: int) -> int:
    return len(SUM_COLUMNS) + 2 * horizon


def cumulative_log_weights(position: np.ndarray, log_ratio: np.ndarray) -> np.ndarray:
    """``L_t = sum_{t' <= t} log_ratio_t'`` within sessions (rows sorted by session, then t).

    Summed step by step in t order (as Spark's running window sum), so both give the same
    floating-point result.
    """
    out = np.array(log_ratio, dtype=np.float64, copy=True)
    if out.size == 0:
        return out
    for t in range(1, int(position.max()) + 1):
        idx = np.flatnonzero(position == t)       # rows at step t; their previous row is idx-1
        out[idx] = out[idx - 1] + log_ratio[idx]
    return out


def session_statistics(position: np.ndarray, reward: np.ndarray, is_terminal: np.ndarray,
                       is_truncated: np.ndarray, is_exploit: np.ndarray,
                       log_ratio: np.ndarray, q_sa: np.ndarray, v_s: np.ndarray,
                       v_next: np.ndarray, cv_s: np.ndarray, *, gamma: float,
                       max_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray]:
    """Per-session statistics of one policy from its row scores.

    Args:
        position: ``(N,)`` 0-based index within the session; rows sorted by session then t.
        log_ratio: ``(N,)`` log pi_e(a|s) - action_logp, NaN where action_logp is null.
        q_sa, v_s, v_next, cv_s: ``(N,)`` Q^(s,a), Q^(s,pi(s)), Q^(s',pi(s')), Q^c(s,pi(s)).
    Returns:
        (raw ``(n_sessions, len(RAW_COLUMNS))``, lengths ``(n_sessions,)``,
        rho ``(N,)`` = rho_{0:t}, num ``(N,)`` = gamma^t rho_{0:t} r_t; rho and num are 0 in
        sessions that are not eligible).
    """
    n = position.shape[0]
    starts = np.flatnonzero(position == 0)
    if starts.size == 0 or starts[0] != 0:
        raise ValueError("rows must be sorted by session and each session must start at "
                         "position 0")
    lengths = np.diff(np.r_[starts, n])
    sess = np.repeat(np.arange(starts.size), lengths)                   # (N,) session index
    missing = np.isnan(log_ratio)
    eligible = ~np.logical_or.reduceat(missing, starts)                  # (n_sessions,)
    row_ok = eligible[sess]
    log_w = cumulative_log_weights(position, np.where(missing, 0.0, log_ratio))
    log_max = math.log(max_weight)
    clipped = row_ok & (log_w > log_max)
    rho = np.where(row_ok, np.exp(np.minimum(log_w, log_max)), 0.0)
    disc = np.power(gamma, position.astype(np.float64))
    num = disc * rho * reward
    dr_terms = disc * rho * (reward + gamma * (1.0 - is_terminal) * v_next - q_sa)
    last = starts + lengths - 1
    raw = np.zeros((starts.size, len(RAW_COLUMNS)), dtype=np.float64)
    raw[:, R["v0"]] = v_s[starts]
    raw[:, R["cv0"]] = cv_s[starts]
    raw[:, R["eligible"]] = eligible
    raw[:, R["pdis"]] = np.add.reduceat(num, starts)
    raw[:, R["dr_correction"]] = np.add.reduceat(dr_terms, starts)
    raw[:, R["rho_last"]] = rho[last]
    raw[:, R["rho_first"]] = rho[starts]
    raw[:, R["n_rows"]] = lengths
    raw[:, R["n_clipped"]] = np.add.reduceat(clipped.astype(np.float64), starts)
    raw[:, R["truncated"]] = np.logical_or.reduceat(is_truncated, starts)
    raw[:, R["mc_return"]] = np.add.reduceat(disc * reward, starts)
    raw[:, R["exploit"]] = np.logical_or.reduceat(is_exploit, starts)
    return raw, lengths, rho, num


def pad_sessions(rho: np.ndarray, num: np.ndarray, lengths: np.ndarray,
                 horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-session WPDIS arrays padded to ``horizon`` steps.

    Args:
        rho, num: row values of consecutive sessions (``sum(lengths)`` rows).
    Returns:
        NUM ``(n, H)``: gamma^t rho_{0:t} r_t for t < T, else 0;
        DEN ``(n, H)``: rho_{0:min(t, T-1)} (an ended session keeps its last weight).
    """
    n = lengths.shape[0]
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    t = np.arange(horizon)
    idx = starts[:, None] + np.minimum(t[None, :], lengths[:, None] - 1)   # (n, H)
    den = rho[idx] if rho.size else np.zeros((n, horizon))
    num_p = np.where(t[None, :] < lengths[:, None], num[idx] if num.size else 0.0, 0.0)
    return num_p, den


def derived_stats(raw: np.ndarray, num: np.ndarray, den: np.ndarray,
                  in_initial: np.ndarray) -> np.ndarray:
    """``(n, len(SUM_COLUMNS) + 2H)`` per-session values whose sums give every estimator."""
    n = raw.shape[0]
    e = raw[:, R["eligible"]]
    s0 = in_initial.astype(np.float64)
    x = raw[:, R["exploit"]]
    cols = np.empty((n, len(SUM_COLUMNS)), dtype=np.float64)
    cols[:, S["n_sessions"]] = 1.0
    cols[:, S["n_initial"]] = s0
    cols[:, S["initial_v0"]] = s0 * raw[:, R["v0"]]
    cols[:, S["initial_cv0"]] = s0 * raw[:, R["cv0"]]
    cols[:, S["n_eligible"]] = e
    cols[:, S["eligible_pdis"]] = e * raw[:, R["pdis"]]
    cols[:, S["eligible_dr"]] = e * (raw[:, R["v0"]] + raw[:, R["dr_correction"]])
    cols[:, S["rho_last"]] = e * raw[:, R["rho_last"]]
    cols[:, S["rho_last_sq"]] = e * raw[:, R["rho_last"]] ** 2
    cols[:, S["rho_first"]] = e * raw[:, R["rho_first"]]
    cols[:, S["rho_first_sq"]] = e * raw[:, R["rho_first"]] ** 2
    cols[:, S["n_rows"]] = raw[:, R["n_rows"]]
    cols[:, S["n_rows_eligible"]] = e * raw[:, R["n_rows"]]
    cols[:, S["n_clipped"]] = e * raw[:, R["n_clipped"]]
    cols[:, S["n_truncated"]] = raw[:, R["truncated"]]
    cols[:, S["mc_return"]] = raw[:, R["mc_return"]]
    cols[:, S["n_exploit"]] = x
    cols[:, S["exploit_mc_return"]] = x * raw[:, R["mc_return"]]
    return np.hstack([cols, e[:, None] * num, e[:, None] * den])


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def estimates_from_sums(sums: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """Every estimator for every row of ``sums`` ``(R, len(SUM_COLUMNS) + 2H)``; NaN when a
    replicate has no session to average (no initial state, no eligible session)."""
    c = len(SUM_COLUMNS)
    num, den = sums[:, c:c + horizon], sums[:, c + horizon:c + 2 * horizon]
    with np.errstate(invalid="ignore", divide="ignore"):
        steps = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    wpdis = np.where(sums[:, S["n_eligible"]] > 0, steps.sum(axis=1), np.nan)
    return {
        "conservative_fqe": _ratio(sums[:, S["initial_cv0"]], sums[:, S["n_initial"]]),
        "fqe": _ratio(sums[:, S["initial_v0"]], sums[:, S["n_initial"]]),
        "pdis": _ratio(sums[:, S["eligible_pdis"]], sums[:, S["n_eligible"]]),
        "wpdis": wpdis,
        "dr": _ratio(sums[:, S["eligible_dr"]], sums[:, S["n_eligible"]]),
    }


def diagnostics_from_sums(point: np.ndarray) -> dict[str, float]:
    """Counts, effective sample sizes and clipping from the full-data sums (row 0)."""
    p = point

    def ess(total: float, sq: float) -> float:
        return float(total * total / sq) if sq > 0 else 0.0

    n_elig = float(p[S["n_eligible"]])
    rows_elig = float(p[S["n_rows_eligible"]])
    n_sess = float(p[S["n_sessions"]])
    n_exploit = float(p[S["n_exploit"]])
    return {
        "n_sessions": n_sess,
        "n_rows": float(p[S["n_rows"]]),
        "n_initial_states": float(p[S["n_initial"]]),
        "n_sessions_is": n_elig,
        "n_sessions_excluded_is": n_sess - n_elig,
        "n_rows_excluded_is": float(p[S["n_rows"]]) - rows_elig,
        "ess_trajectory": ess(float(p[S["rho_last"]]), float(p[S["rho_last_sq"]])),
        "ess_first_step": ess(float(p[S["rho_first"]]), float(p[S["rho_first_sq"]])),
        "clipped_rows": float(p[S["n_clipped"]]),
        "clipped_share": float(p[S["n_clipped"]] / rows_elig) if rows_elig else float("nan"),
        "mean_weight_last": float(p[S["rho_last"]] / n_elig) if n_elig else float("nan"),
        "n_truncated_sessions": float(p[S["n_truncated"]]),
        "logged_return": float(p[S["mc_return"]] / n_sess) if n_sess else float("nan"),
        "n_exploit_sessions": n_exploit,
        "exploit_logged_return": (float(p[S["exploit_mc_return"]] / n_exploit)
                                  if n_exploit else float("nan")),
    }
