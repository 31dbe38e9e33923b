"""Point-in-time user state in Spark, at the request level: the :mod:`mtf.features` spec.

The reference is :func:`mtf.features.compute_states` (numpy); ``tests/etl/test_parity.py`` holds
the two equal. The impression-level sums (history window, decayed recent window, all earlier
impressions) come from :mod:`mtf.etl.history`; this module turns them, with the session columns
of :mod:`mtf.etl.sessionize`, into the state vector (:func:`add_state_core`) and prepends the
profile (:func:`add_profile_state`). The sums are float64 (as the reference); the state is cast
to float32 at the end.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mtf.etl import schema as S
from mtf.etl.history import IMP_START, hist_cum_col, hist_lag_col, recent_col
from mtf.features import BEHAVIOURS, GAP_CAP_HOURS, SESSION_BEHAVIOURS, FeatureConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

STATE_CORE = "state_core"        # the non-profile part of the state, array<double>
PREV_TS = "prev_ts"              # ts of the user's previous request (null for the first)
SESS_IMP_START = "sess_imp_start"  # imp_start of the session's first request


def sess_cum_col(b: str) -> str:      # cx_<b> at the session's first request
    return f"sess_cx_{b}"


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
