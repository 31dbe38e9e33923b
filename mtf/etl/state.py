"""Point-in-time user state in Spark: the :mod:`mtf.features` specification, O(n) per user.

The reference is :func:`mtf.features.compute_states` (numpy); ``tests/etl/test_parity.py`` holds
the two equal. Impressions of a user are ordered by (ts, request_id, position, event_id) and
numbered ``imp_idx`` = 0, 1, ...; a request's past is the impressions before its first one
(index ``s``). Per behaviour b:

* history window (last H = history_len impressions): running sums with a lagged difference,
  ``sum_{k in [s-H, s)} b_k = C(s-1) - C(s-H-1)``, both read from growing window frames
  (``ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING`` and ``... AND H+1 PRECEDING``), which
  Spark evaluates incrementally: no 500-row sliding frame.
* decayed recent window (last W = recent_len impressions, weight decay**age): block sums. With
  ``v_j = b_{j-1}`` the window is ``sum_{j in (s-W, s]} decay**(s-j) v_j``. Cut the index into
  blocks; inside a block, with weights ``w_j = decay**(B-1-offset_j)``, the window equals
  ``(G(s) - G(s-W)) / w_s`` where G is the running sum of ``w_j v_j``: exact whenever the window
  lies inside one block. A few block grids shifted against each other (:func:`_recent_grids`;
  two for the default decay) make sure every row is served by a grid in which its window fits
  and its weight is not tiny, so float64 rounding is not amplified.
* session and gap features are read at the request level (``add_state_core``).

The sums are float64 (as the reference); the state is cast to float32 at the end.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mtf.etl import schema as S
from mtf.features import BEHAVIOURS, GAP_CAP_HOURS, SESSION_BEHAVIOURS, FeatureConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

IMP_IDX = "imp_idx"              # 0-based impression index within the user
IMP_START = "imp_start"          # imp_idx of a request's first impression
IS_SENTINEL = "is_sentinel"      # end-of-data marker row (see mtf.etl.transitions)
IMPRESSION_ORDER = (S.TS, S.REQUEST_ID, S.POSITION, S.EVENT_ID)
STATE_CORE = "state_core"        # the non-profile part of the state, array<double>
PREV_TS = "prev_ts"              # ts of the user's previous request (null for the first)
SESS_IMP_START = "sess_imp_start"  # imp_start of the session's first request


def beh_col(b: str) -> str:
    return f"b_{b}"


def hist_cum_col(b: str) -> str:      # sum of b over all earlier impressions
    return f"cx_{b}"


def hist_lag_col(b: str) -> str:      # sum of b over impressions before the history window
    return f"cl_{b}"


def recent_col(b: str) -> str:        # decayed sum of b over the recent window
    return f"rc_{b}"


def sess_cum_col(b: str) -> str:      # cx_<b> at the session's first request
    return f"sess_cx_{b}"


def _behaviour_exprs(features: FeatureConfig) -> dict[str, "Column"]:
    """:data:`mtf.features.BEHAVIOURS` per impression, float64, as in impression_behaviours."""
    from pyspark.sql import functions as F

    play = F.col(S.PLAY_TIME_S).cast("double")
    dur = F.col(S.DURATION_S).cast("double")
    ratio = F.when(dur > 0, F.least(F.greatest(play / dur, F.lit(0.0)), F.lit(1.0))) \
             .otherwise(F.lit(0.0))
    exprs = {c: F.col(c).cast("double") for c in S.INTERACTIONS}
    exprs.update({
        "finished": (ratio >= features.finish_ratio).cast("double"),
        "skipped": (play < features.skip_s).cast("double"),
        "play_ratio": ratio,
        "play_time_norm": F.least(F.greatest(play / features.play_cap_s, F.lit(0.0)),
                                  F.lit(1.0)),
    })
    missing = [b for b in BEHAVIOURS if b not in exprs]
    if missing:
        raise ValueError(f"mtf.features.BEHAVIOURS has {missing}, which mtf.etl.state does not "
                         f"implement; keep the Spark and numpy feature definitions in step")
    return {b: exprs[b] for b in BEHAVIOURS}


# Largest factor by which a block-local weight is divided (see _recent_grids): bounds the
# amplification of float64 rounding in the recent-window sums.
MAX_WEIGHT_DIVISOR = 256.0


def _recent_grids(recent_len: int, decay: float) -> tuple[int, int, int]:
    """(block size B, grid shift D, number of grids m) for the decayed recent window.

    Grid g splits the impression index into blocks of B starting at -g*D. A window of W =
    recent_len impressions ending at row s is read from the grid in which s sits in the last D
    slots of its block: the window fits in that block when B - D >= W - 1, and s's weight is at
    least decay**(D - 1) >= 1 / MAX_WEIGHT_DIVISOR. With m * D = B, exactly one grid qualifies.
    For the default decay 0.9 and W = 32 this is 2 grids of 66.
    """
    W = recent_len
    if decay >= 1.0:
        D = W + 1
    else:
        D = max(1, min(W + 1, int(math.log(MAX_WEIGHT_DIVISOR) / -math.log(decay)) + 1))
    m = -(-(W - 1 + D) // D)  # ceil
    return m * D, D, m


def add_impression_history(imps: "DataFrame", *, features: FeatureConfig) -> "DataFrame":
    """Per impression: index, behaviours and the history/recent window sums before it.

    Requires: user_id, ts, request_id, position, event_id, play_time_s, duration_s, liked,
    shared, commented, followed (already validated: no nulls in feedback).
    Adds: ``imp_idx``; ``b_<b>``; ``cx_<b>`` (sum over all earlier impressions), ``cl_<b>``
    (sum over impressions earlier than the history window), ``rc_<b>`` (decayed sum over the
    recent window) for every behaviour b. Two window operators over one sort by user and
    impression order; all frames grow from the partition start, so Spark evaluates them
    incrementally: O(n) per user, no frame of history_len rows.

    Recent window: with ``v_j = b_{j-1}`` it is ``sum_{j in (s-W, s]} decay**(s-j) v_j``. For a
    grid (:func:`_recent_grids`) let ``w_j = decay**(B-1-offset_j)`` (block-local weights,
    between decay**(B-1) and 1) and ``G`` the running sum of ``w_j v_j``; when the window lies in
    one block it equals ``(G(s) - G(s-W)) / w_s``. ``G(s)`` and ``G(s-W)`` are partial sums of one
    addition sequence, so their difference carries the rounding of W additions only. (G is read
    as ``sum_{k < s} w_{k+1} b_k``, so no lagged column is needed.)
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    W = features.recent_len
    d = float(features.decay)
    B, D, m = _recent_grids(W, d)
    H = features.history_len
    beh = _behaviour_exprs(features)
    imps = imps.select("*", *(expr.alias(beh_col(b)) for b, expr in beh.items()))

    by_user = Window.partitionBy(S.USER_ID).orderBy(*IMPRESSION_ORDER)
    before = by_user.rowsBetween(Window.unboundedPreceding, -1)
    before_hist = by_user.rowsBetween(Window.unboundedPreceding, -(H + 1))
    before_recent = by_user.rowsBetween(Window.unboundedPreceding, -(W + 1))
    zero = F.lit(0.0)
    imps = imps.select("*", (F.row_number().over(by_user) - 1).alias(IMP_IDX))

    def weight(g: int, shift: int) -> "Column":  # w_g of the row at imp_idx + shift
        return F.pow(F.lit(d), F.lit(B - 1) - F.pmod(F.col(IMP_IDX) + (g * D + shift), F.lit(B)))

    # G_g(s) = sum_{k < s} w_g(k+1) b_k (= sum_{j <= s} w_g(j) v_j) and G_g(s - W), read from
    # two growing frames; no lag columns needed.
    cols = []
    for b in BEHAVIOURS:
        cols.append(F.coalesce(F.sum(beh_col(b)).over(before), zero).alias(hist_cum_col(b)))
        cols.append(F.coalesce(F.sum(beh_col(b)).over(before_hist), zero)
                    .alias(hist_lag_col(b)))
    for g in range(m):
        for b in BEHAVIOURS:
            u = weight(g, 1) * F.col(beh_col(b))
            cols.append(((F.coalesce(F.sum(u).over(before), zero)
                          - F.coalesce(F.sum(u).over(before_recent), zero))
                         / weight(g, 0)).alias(f"_r{g}_{b}"))
    imps = imps.select("*", *cols)
    # Read each row from the one grid in which it sits in the last D slots of its block.
    rc = []
    for b in BEHAVIOURS:
        expr = F.col(f"_r0_{b}")
        for g in range(1, m):
            expr = F.when(F.pmod(F.col(IMP_IDX) + g * D, F.lit(B)) >= B - D, F.col(f"_r{g}_{b}")
                          ).otherwise(expr)
        rc.append(expr.alias(recent_col(b)))
    imps = imps.select("*", *rc)
    return imps.drop(*[c for c in imps.columns if c.startswith("_")])


def recent_weight_sum(n_past: "Column", features: FeatureConfig) -> "Column":
    """Sum of decay**age over the min(recent_len, n_past) impressions of the recent window."""
    from pyspark.sql import functions as F

    m = F.least(n_past, F.lit(features.recent_len)).cast("double")
    d = float(features.decay)
    if d == 1.0:
        return m
    return (F.lit(1.0) - F.pow(F.lit(d), m)) / (1.0 - d)


def _safe_div(num: "Column", den: "Column") -> "Column":
    from pyspark.sql import functions as F
    return F.when(den > 0, num / den).otherwise(F.lit(0.0))


def add_state_core(steps: "DataFrame", *, features: FeatureConfig) -> "DataFrame":
    """Assemble the non-profile part of the state, in :func:`mtf.features.feature_names` order.

    Requires (request level): ``imp_start``, ``cx_<b>``, ``cl_<b>``, ``rc_<b>`` of the request's
    first impression, ``step``, ``sess_cx_<b>`` (cx at the session's first impression) and
    ``sess_imp_start`` (from :func:`mtf.etl.sessionize.sessionize`), ts and ``prev_ts``.
    Adds ``state_core`` (array<double>): hist_count, hist_mean_*, recent_*, sess_step,
    sess_mean_*, gap_prev_request.
    """
    from pyspark.sql import functions as F

    H = features.history_len
    s = F.col(IMP_START).cast("double")
    n_hist = F.least(s, F.lit(float(H)))
    parts = [F.log1p(n_hist) / math.log1p(H)]
    parts += [_safe_div(F.col(hist_cum_col(b)) - F.col(hist_lag_col(b)), n_hist)
              for b in BEHAVIOURS]
    den = recent_weight_sum(F.col(IMP_START), features)
    parts += [_safe_div(F.col(recent_col(b)), den) for b in BEHAVIOURS]
    cap = features.sess_step_cap
    parts.append(F.least(F.col(S.STEP), F.lit(cap)).cast("double") / cap)
    n_sess = (F.col(IMP_START) - F.col(SESS_IMP_START)).cast("double")
    parts += [_safe_div(F.col(hist_cum_col(b)) - F.col(sess_cum_col(b)), n_sess)
              for b in SESSION_BEHAVIOURS]
    hours = (F.unix_micros(F.col(S.TS)) - F.unix_micros(F.col(PREV_TS))).cast("double") / 3.6e9
    gap = F.least(F.log1p(F.greatest(hours, F.lit(0.0))) / math.log1p(GAP_CAP_HOURS),
                  F.lit(1.0))
    parts.append(F.when(F.col(PREV_TS).isNull(), F.lit(1.0)).otherwise(gap))
    return steps.withColumn(STATE_CORE, F.array(*parts))


def add_profile_state(steps: "DataFrame", profiles: "DataFrame | None", *,
                      features: FeatureConfig, state_cols: tuple[str, ...]) -> "DataFrame":
    """Prepend the user's profile features to each array column in ``state_cols``.

    Requires user_id and the ``state_cols`` (array<double>, non-profile part; a null array stays
    null). ``profiles``: user_id + the profile columns as double (one row per user), or None
    (all profile features 0, as :func:`mtf.features.compute_states` without profiles).
    Missing users, null and NaN values give 0 (the reference's ``nan_to_num``).
    """
    from pyspark.sql import functions as F

    cols = list(features.profile_columns)
    if not cols:
        return steps
    if profiles is None:
        prof = [F.lit(0.0)] * len(cols)
        joined = steps
    else:
        renamed = profiles.select(S.USER_ID, *(F.col(c).alias(f"_p_{c}") for c in cols))
        joined = steps.join(renamed, on=S.USER_ID, how="left")
        prof = [F.nanvl(F.coalesce(F.col(f"_p_{c}"), F.lit(0.0)), F.lit(0.0)) for c in cols]
    out = joined.select("*", *(
        F.when(F.col(c).isNotNull(), F.concat(F.array(*prof), F.col(c))).alias(f"_full_{c}")
        for c in state_cols))
    for c in state_cols:
        out = out.withColumn(c, F.col(f"_full_{c}"))
    return out.drop(*[c for c in out.columns if c.startswith("_p_") or c.startswith("_full_")])
