"""Point-in-time user state: the :mod:`mtf.features` specification, on request rows.

The reference is :func:`mtf.features.compute_states` (numpy); ``tests/etl/test_parity.py`` holds
the two equal. The non-profile part (``state_core``) is computed in the ordered per-user pass
(:mod:`mtf.etl.user_pass`) from the sums before each request with the reference's own
:func:`mtf.features.state_from_sums`; :func:`add_profile_state` then prepends the profile in
Spark (a join by user). The sums are float64 (as the reference); the state is cast to float32
at the end.

Profiles (docs/contract.md section 4): a static table (one row per user) is joined by user_id.
A table with ``snapshot_ds`` is joined point-in-time: a state looked up on day D uses the user's
newest snapshot dated strictly before D. :func:`profile_intervals` turns the snapshots into
per-user validity intervals [snapshot_ds + 1, next snapshot_ds + 1) with one window, so the
lookup is an equi-join on user_id with a range condition that matches at most one interval per
row (no join-then-max over every snapshot).
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Mapping

from mtf import contract as S
from mtf.features import FeatureConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

STATE_CORE = "state_core"        # the non-profile part of the state, array<double>
NEXT_CORE = "next_core"          # non-profile part of next_state (null when terminal)
NEXT_DS = "next_ds"              # ds of the request next_core describes (null when terminal)
PREV_TS = "prev_ts"              # ts of the user's previous request (null for the first)
VALID_FROM = "valid_from"        # first day a snapshot applies to (snapshot_ds + 1)
VALID_UNTIL = "valid_until"      # first day it no longer applies to (null: still current)


def profile_intervals(profiles: "DataFrame", columns: tuple[str, ...], *,
                      days: tuple[dt.date, dt.date] | None = None) -> "DataFrame":
    """Profile snapshots -> one row per user and validity interval.

    ``profiles``: user_id, ``snapshot_ds`` (date, non-null) and ``columns`` (double). Several
    rows of one (user_id, snapshot_ds) resolve to the per-column maximum (nulls ignored), as
    duplicate users of a static table. Returns user_id, ``valid_from`` = snapshot_ds + 1 day,
    ``valid_until`` = the user's next snapshot_ds + 1 day (null for the newest) and ``columns``:
    a request on day D uses the row with valid_from <= D < valid_until, i.e. the newest snapshot
    strictly before D. ``days`` (first, last): only intervals that can match a lookup day in
    that range are kept (snapshots dated >= last never apply), so a daily run joins a few rows
    per user whatever the table's history. One shuffle by user_id (the dedup and the window
    share it); the result stays partitioned by user_id for the join.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    snaps = profiles
    if days is not None:
        snaps = snaps.where(F.col(S.SNAPSHOT_DS) < F.lit(days[1]))
    one = (snaps.repartition(S.USER_ID)
           .groupBy(S.USER_ID, S.SNAPSHOT_DS).agg(*(F.max(c).alias(c) for c in columns)))
    following = F.lead(S.SNAPSHOT_DS).over(Window.partitionBy(S.USER_ID)
                                           .orderBy(S.SNAPSHOT_DS))
    out = one.select(S.USER_ID, F.date_add(S.SNAPSHOT_DS, 1).alias(VALID_FROM),
                     F.date_add(following, 1).alias(VALID_UNTIL), *columns)
    if days is not None:
        out = out.where(F.col(VALID_UNTIL).isNull() | (F.col(VALID_UNTIL) > F.lit(days[0])))
    return out


def add_profile_state(steps: "DataFrame", profiles: "DataFrame | None", *,
                      features: FeatureConfig, state_days: Mapping[str, str],
                      days: tuple[dt.date, dt.date] | None = None) -> "DataFrame":
    """Prepend the user's profile features to each array column of ``state_days``.

    Requires user_id and the ``state_days`` columns: state column (array<double>, non-profile
    part; a null array stays null) -> the date column of the day it describes (for next_state:
    the next request's ds, so that it equals that request's state). ``profiles`` (from
    :func:`mtf.etl.pipeline.read_profiles`), or None (all profile features 0, as
    :func:`mtf.features.compute_states` without profiles):

    * static: user_id + the profile columns as double; several rows of a user resolve to the
      per-column maximum; every state of the user gets the same values (the day is not used);
    * with ``snapshot_ds``: point-in-time, the newest snapshot strictly before the state's day
      (:func:`profile_intervals`; ``days`` bounds the lookup days, when known).

    A missing user (or no snapshot before the day), null and NaN values give 0 (the reference's
    ``nan_to_num``).
    """
    from pyspark.sql import functions as F

    cols = tuple(features.profile_columns)
    if not cols:
        return steps
    state_cols = list(state_days)
    if profiles is None:
        values = {c: [F.lit(0.0)] * len(cols) for c in state_cols}
        joined = steps
    elif S.SNAPSHOT_DS not in profiles.columns:
        # One row per user: duplicates (if any) resolve to the per-column max, deterministically.
        one = profiles.groupBy(S.USER_ID).agg(*(F.max(c).alias(c) for c in cols))
        joined = steps.join(one.select(S.USER_ID, *(F.col(c).alias(f"_prof_{c}") for c in cols)),
                            on=S.USER_ID, how="left")
        values = {c: [_zero_missing(F.col(f"_prof_{p}")) for p in cols] for c in state_cols}
    else:
        intervals = profile_intervals(profiles, cols, days=days)
        joined, values, lookups = steps, {}, {}
        # One join per distinct day column (state: ds, next_state: next_ds); both are
        # equi-joins on user_id, so the second reuses the first's partitioning of the steps.
        for c in state_cols:
            day = state_days[c]
            if day not in lookups:
                k = len(lookups)
                lookups[day] = k
                joined = _join_interval(joined, intervals, cols, day=day, prefix=f"_prof{k}_")
            values[c] = [_zero_missing(F.col(f"_prof{lookups[day]}_{p}")) for p in cols]
    out = joined.select("*", *(
        F.when(F.col(c).isNotNull(), F.concat(F.array(*values[c]), F.col(c))).alias(f"_full_{c}")
        for c in state_cols))
    for c in state_cols:
        out = out.withColumn(c, F.col(f"_full_{c}"))
    return out.drop(*[c for c in out.columns if c.startswith("_prof") or c.startswith("_full_")])


def _zero_missing(value: "Column") -> "Column":
    from pyspark.sql import functions as F
    return F.nanvl(F.coalesce(value, F.lit(0.0)), F.lit(0.0))


def _join_interval(steps: "DataFrame", intervals: "DataFrame", cols: tuple[str, ...], *,
                   day: str, prefix: str) -> "DataFrame":
    """``steps`` + ``<prefix><c>``: the interval of the step's user that holds ``day`` (null
    when none). Intervals of a user do not overlap, so each step matches at most one row."""
    from pyspark.sql import functions as F

    iv = intervals.select(F.col(S.USER_ID).alias(f"{prefix}user"),
                          F.col(VALID_FROM).alias(f"{prefix}from"),
                          F.col(VALID_UNTIL).alias(f"{prefix}until"),
                          *(F.col(c).alias(f"{prefix}{c}") for c in cols))
    until = F.col(f"{prefix}until")
    holds = ((F.col(S.USER_ID) == F.col(f"{prefix}user"))
             & (F.col(day) >= F.col(f"{prefix}from")) & (until.isNull() | (F.col(day) < until)))
    return steps.join(iv, on=holds, how="left").drop(f"{prefix}user", f"{prefix}from",
                                                     f"{prefix}until")
