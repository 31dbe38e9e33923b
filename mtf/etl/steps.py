"""Impressions -> steps: one row per request (= page = RL step), with action and reward.

Reward (paper-spec section 4, the formulas of :mod:`mtf.reward`): per impression

    stickiness = w_play_time * min(play_time_s / play_cap_s, 1) + w_integrity * play_ratio
    activeness = w_like * liked + w_share * shared + w_comment * commented + w_follow * followed

summed over the page. The per-page feedback sums are kept (``fb_*`` columns) for the reward-weight
calibration job. The action is the logged ``fusion_weights`` of the request mapped to [-1, 1]
with :func:`mtf.fusion.weights_to_action` (validation guarantees alpha in [lo, hi]).

A request is identified by (user_id, ts, request_id); its request-level values (action,
action_logp, explore_group, app_session_id, ds, and the state sums) come from its first
impression in (ts, request_id, position, event_id) order.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mtf.etl import schema as S
from mtf.etl.state import (IMP_IDX, IMP_START, IS_SENTINEL, beh_col, hist_cum_col,
                           hist_lag_col, recent_col)
from mtf.features import BEHAVIOURS
from mtf.fusion import FusionConfig
from mtf.reward import RewardConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

N_ITEMS = "n_items"
APP_SID_HASH = "app_sid_hash"        # xxhash64 of app_session_id (null when absent)
EXPLORE_IDX = "explore_idx"          # 1-based index into the explore groups (null when absent)
DWELL_S = "dwell_s"                  # sum of play_time_s over the page
# Per-page feedback sums: the reward's regressors, in the order of the reward weights.
FEEDBACK = ("play_time_norm", "play_ratio", *S.INTERACTIONS)
REWARD_WEIGHT_NAMES = ("w_play_time", "w_integrity", "w_like", "w_share", "w_comment",
                       "w_follow")


def fb_col(name: str) -> str:
    """Page sum of feedback ``name`` (request level)."""
    return f"fb_{name}"


def _impression_feedback_col(name: str) -> str:
    # The reward's play-time term has its own cap; the others equal the state behaviours.
    return fb_col(name) if name == "play_time_norm" else beh_col(name)


def action_col(i: int) -> str:
    return f"a_{i}"


def reward_weights(reward: RewardConfig) -> tuple[float, ...]:
    """The reward weights in :data:`FEEDBACK` order."""
    return tuple(float(getattr(reward, n)) for n in REWARD_WEIGHT_NAMES)


def add_impression_feedback(imps: "DataFrame", *, reward: RewardConfig, fusion: FusionConfig,
                            explore_groups: tuple[str, ...]) -> "DataFrame":
    """Per impression: capped play time for the reward, normalised action, encoded strings.

    Requires: play_time_s, fusion_weights (length k, validated), explore_group,
    app_session_id. Adds ``fb_play_time_norm`` (play time capped at the *reward's* play_cap_s;
    the other reward regressors are the state behaviours ``b_*``), ``a_<i>`` for i < k,
    ``explore_idx``, ``app_sid_hash``. (Strings are encoded so that the request aggregation
    stays a hash aggregation.)
    """
    from pyspark.sql import functions as F

    play = F.col(S.PLAY_TIME_S).cast("double")
    play_norm = F.least(F.greatest(play / reward.play_cap_s, F.lit(0.0)), F.lit(1.0))
    lo, hi = fusion.lo, fusion.hi
    actions = [(F.lit(2.0) * (F.get(F.col(S.FUSION_WEIGHTS), i) - float(lo[i]))
                / float(hi[i] - lo[i]) - F.lit(1.0)).alias(action_col(i))
               for i in range(fusion.k)]
    sid = F.col(S.APP_SESSION_ID)
    return imps.select(
        "*",
        play_norm.alias(fb_col("play_time_norm")),
        *actions,
        F.array_position(F.array(*map(F.lit, explore_groups)), F.col(S.EXPLORE_GROUP))
         .cast("int").alias(EXPLORE_IDX),
        F.when(sid.isNotNull() & (sid != ""), F.xxhash64(sid)).alias(APP_SID_HASH))


def to_requests(imps: "DataFrame", *, k: int) -> "DataFrame":
    """Aggregate impressions to one row per request (user_id, ts, request_id).

    Requires the columns of :func:`mtf.etl.state.add_impression_history` and
    :func:`add_impression_feedback`, plus ds, action_logp and ``is_sentinel``.
    Returns: user_id, ts, request_id, ds, is_sentinel, imp_start, n_items, dwell_s, ``fb_*``
    (page sums), ``a_<i>``, action_logp, explore_idx, app_sid_hash and the ``cx_/cl_/rc_``
    window sums of the first impression.
    """
    from pyspark.sql import functions as F

    def first(c: str) -> "Column":
        return F.min_by(F.col(c), F.col(IMP_IDX)).alias(c)

    firsts = [S.DS, S.ACTION_LOGP, EXPLORE_IDX, APP_SID_HASH,
              *(action_col(i) for i in range(k)),
              *(f(b) for b in BEHAVIOURS for f in (hist_cum_col, hist_lag_col, recent_col))]
    return imps.groupBy(S.USER_ID, S.TS, S.REQUEST_ID).agg(
        F.min(IMP_IDX).alias(IMP_START),
        F.max(F.col(IS_SENTINEL)).alias(IS_SENTINEL),
        F.count(F.lit(1)).alias(N_ITEMS),
        F.sum(F.col(S.PLAY_TIME_S).cast("double")).alias(DWELL_S),
        *(F.sum(_impression_feedback_col(f)).alias(fb_col(f)) for f in FEEDBACK),
        *(first(c) for c in firsts))


def add_reward(steps: "DataFrame", *, reward: RewardConfig) -> "DataFrame":
    """reward_stickiness, reward_activeness and reward = their sum, from the page sums.

    Requires ``fb_*`` (:func:`to_requests`). The weights are config numbers applied with
    ``col * lit(w)``; the sum over the page of the per-impression formula is linear, so
    weighting the page sums is the same reward as :func:`mtf.reward.impression_reward` summed.
    """
    from pyspark.sql import functions as F

    w = dict(zip(FEEDBACK, reward_weights(reward)))
    stick = F.col(fb_col("play_time_norm")) * w["play_time_norm"] \
        + F.col(fb_col("play_ratio")) * w["play_ratio"]
    act = F.lit(0.0)
    for c in S.INTERACTIONS:
        act = act + F.col(fb_col(c)) * w[c]
    return steps.select("*", stick.alias(S.REWARD_STICKINESS), act.alias(S.REWARD_ACTIVENESS)) \
        .withColumn(S.REWARD, F.col(S.REWARD_STICKINESS) + F.col(S.REWARD_ACTIVENESS))


def action_array(k: int) -> "Column":
    """The normalised action as array<float> from the ``a_<i>`` columns."""
    from pyspark.sql import functions as F
    return F.array(*(F.col(action_col(i)) for i in range(k))).cast("array<float>")


def explore_group_col(explore_groups: tuple[str, ...]) -> "Column":
    """Decode ``explore_idx`` back to the group name (null stays null)."""
    from pyspark.sql import functions as F
    groups = F.array(*map(F.lit, explore_groups))
    return F.when(F.col(EXPLORE_IDX) > 0, F.element_at(groups, F.col(EXPLORE_IDX)))
