"""Steps -> transitions: next state, done flags, split, and the fix-up of the previous day.

Done flags, with ``data_end`` = the end of the last day read (00:00 UTC after ``end_ds``):

* the next request of the user is in the same session: an ordinary step; ``next_state`` is that
  request's state;
* the user's next request is in another session, or the session's last request is more than
  ``session_gap_s`` before ``data_end``: the session really ended: ``is_terminal``;
  ``next_state`` is zeros;
* otherwise (last request within ``session_gap_s`` of ``data_end``): the session may go on
  tomorrow: ``is_truncated``. Its ``next_state`` is the state a request arriving at ``data_end``
  would see (history including this page, ``step + 1``, gap to ``data_end``), so a learner can
  bootstrap through it.

The last is computed with one *sentinel* impression per user at ``data_end``
(:func:`add_sentinels`): it rides through the ordered per-user pass (:mod:`mtf.etl.user_pass`,
which computes the next state and the flags), gets a state, joins the open session under the
gap rule, and is dropped from the output.

Tomorrow's run rewrites exactly those truncated rows (:func:`fix_previous_rows`): a session that
went on gets its real ``next_state`` and loses ``is_truncated``; one that did not becomes
``is_terminal``. Every other row of the previous day is rewritten unchanged.
"""
from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from mtf import contract as S
from mtf.etl.user_pass import IS_SENTINEL, SESSION_START_TS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame


def active_users(df: "DataFrame", *, data_end: dt.datetime, gap_s: int) -> "DataFrame":
    """Users with a row in the last ``gap_s`` seconds before ``data_end``: the only users whose
    session can still be open at ``data_end`` (a superset is fine: see add_sentinels)."""
    from pyspark.sql import functions as F

    return (df.where((F.col(S.TS) >= F.lit(data_end - dt.timedelta(seconds=gap_s)))
                     & F.col(S.USER_ID).isNotNull())
            .select(S.USER_ID).distinct())


def add_sentinels(imps: "DataFrame", *, users: "DataFrame", data_end: dt.datetime
                  ) -> "DataFrame":
    """Add ``is_sentinel`` (false) and one sentinel impression at ``data_end`` per user in
    ``users`` (:func:`active_users`).

    The sentinel has ts = ``data_end`` (after every real row), null request_id/event_id, zero
    feedback and null for every other column. It only ever affects its own row: a sentinel of a
    user whose last session ended before ``data_end`` - gap starts a session of its own and is
    dropped with the other sentinels.
    """
    from pyspark.sql import functions as F

    end = F.lit(data_end).cast("timestamp")
    sentinels = users.select(
        S.USER_ID, end.alias(S.TS), F.to_date(end).alias(S.DS),
        F.lit(0).alias(S.POSITION),
        F.lit(0.0).alias(S.PLAY_TIME_S), F.lit(0.0).alias(S.DURATION_S),
        *(F.lit(0).alias(c) for c in S.INTERACTION_COLUMNS),
        F.lit(True).alias(IS_SENTINEL))
    return (imps.withColumn(IS_SENTINEL, F.lit(False))
            .unionByName(sentinels, allowMissingColumns=True))


def zeros(n: int) -> "Column":
    from pyspark.sql import functions as F
    return F.array_repeat(F.lit(0.0), n).cast("array<float>")


def add_split(df: "DataFrame", *, train_until: dt.datetime | None,
              test_from: dt.datetime | None, previous: "DataFrame | None" = None
              ) -> "DataFrame":
    """Add ``split``: 'train' or 'test' by session start time, constant within a session.

    Exactly one of ``train_until`` (sessions starting at or before it are train: the
    train_fraction cutoff computed by the job) and ``test_from`` (sessions starting at or after it
    are test) is given. ``previous``: (session_id, split) already written for sessions that
    started before this run; they keep it. Requires session_id, ``session_start_ts``.
    """
    from pyspark.sql import functions as F

    if (train_until is None) == (test_from is None):
        raise ValueError("add_split needs exactly one of train_until and test_from")
    start = F.col(SESSION_START_TS)
    if test_from is not None:
        rule = F.when(start >= F.lit(test_from), F.lit(S.TEST)).otherwise(F.lit(S.TRAIN))
    else:
        rule = F.when(start <= F.lit(train_until), F.lit(S.TRAIN)).otherwise(F.lit(S.TEST))
    if previous is None:
        return df.withColumn(S.SPLIT, rule)
    prev = previous.select(S.SESSION_ID, F.col(S.SPLIT).alias("_prev_split")).distinct()
    return (df.join(prev, on=S.SESSION_ID, how="left")
            .withColumn(S.SPLIT, F.coalesce(F.col("_prev_split"), rule)).drop("_prev_split"))


def select_transitions(df: "DataFrame") -> "DataFrame":
    """Exactly the transition-table columns (docs/contract.md section 2), in order, typed."""
    from pyspark.sql import functions as F

    types = {S.STEP: "int", S.STATE: "array<float>", S.NEXT_STATE: "array<float>",
             S.ACTION: "array<float>", S.ACTION_LOGP: "double", S.REWARD: "double",
             S.REWARD_STICKINESS: "double", S.REWARD_ACTIVENESS: "double",
             S.IS_TERMINAL: "boolean", S.IS_TRUNCATED: "boolean", S.TS: "timestamp",
             S.DS: "date"}
    return df.select(*(F.col(c).cast(types[c]).alias(c) if c in types else F.col(c)
                       for c in S.TRANSITION_COLUMNS))


def fix_previous_rows(previous: "DataFrame", current: "DataFrame", *, state_dim: int
                      ) -> "DataFrame":
    """Re-derive the done flags of the previous day's last rows from this run's data.

    Args:
        previous: transition rows already written for the day before the run's first day,
            restricted to the last ``session_gap_s`` of it (every row that can have been
            truncated lies there).
        current: this run's transition rows.
        state_dim: S, the length of a state vector.
    Returns:
        ``previous`` with the same columns: a row whose session goes on in ``previous`` is
        unchanged; a row whose session goes on in ``current`` gets that step's state as
        ``next_state``, is_terminal = is_truncated = false; any other row is the session's last
        step: is_terminal, next_state zeros.
    """
    from pyspark.sql import functions as F

    key = [S.SESSION_ID, S.STEP]
    goes_on_prev = previous.select(S.SESSION_ID, (F.col(S.STEP) - 1).alias(S.STEP),
                                   F.lit(True).alias("_on_prev"))
    goes_on_cur = current.select(S.SESSION_ID, (F.col(S.STEP) - 1).alias(S.STEP),
                                 F.col(S.STATE).alias("_cur_state"))
    p = (previous.join(goes_on_prev, on=key, how="left")
         .join(goes_on_cur, on=key, how="left"))
    on_prev = F.coalesce(F.col("_on_prev"), F.lit(False))
    on_cur = F.col("_cur_state").isNotNull()
    fixed = p.withColumn(S.NEXT_STATE, F.when(on_prev, F.col(S.NEXT_STATE))
                         .when(on_cur, F.col("_cur_state")).otherwise(zeros(state_dim))) \
        .withColumn(S.IS_TERMINAL, F.when(on_prev, F.col(S.IS_TERMINAL)).otherwise(~on_cur)) \
        .withColumn(S.IS_TRUNCATED, F.when(on_prev, F.col(S.IS_TRUNCATED))
                    .otherwise(F.lit(False)))
    return select_transitions(fixed)
