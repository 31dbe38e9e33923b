"""Point-in-time user state: the :mod:`mtf.features` specification, on request rows.

The reference is :func:`mtf.features.compute_states` (numpy); ``tests/etl/test_parity.py`` holds
the two equal. The non-profile part (``state_core``) is computed in the ordered per-user pass
(:mod:`mtf.etl.user_pass`) from the sums before each request with the reference's own
:func:`mtf.features.state_from_sums`; :func:`add_profile_state` then prepends the profile in
Spark (a join by user). The sums are float64 (as the reference); the state is cast to float32
at the end.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mtf import contract as S
from mtf.features import FeatureConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

STATE_CORE = "state_core"        # the non-profile part of the state, array<double>
NEXT_CORE = "next_core"          # non-profile part of next_state (null when terminal)
PREV_TS = "prev_ts"              # ts of the user's previous request (null for the first)


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
