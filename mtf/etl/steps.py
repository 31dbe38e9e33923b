"""Per-impression inputs of a step (action, encoded strings) and the step's reward.

Reward (docs/method.md section 4, the formulas of :mod:`mtf.reward`): per impression

    stickiness = w_play_time * min(play_time_s / play_cap_s, 1) + w_integrity * play_ratio
    activeness = w_like * liked + w_share * shared + w_comment * commented + w_follow * followed

summed over the page (the ``fb_*`` page sums of :mod:`mtf.etl.user_pass`, also kept for the
reward-weight calibration job). The action is the logged ``fusion_weights`` of the request
mapped to [-1, 1] with :func:`mtf.fusion.weights_to_action` (validation guarantees alpha in
[lo, hi]).

A request (= page = RL step) is identified by (user_id, ts, request_id); its request-level
values (action, action_logp, explore_group, app_session_id, ds) come from its first impression
in (ts, request_id, position, event_id) order (:func:`mtf.etl.user_pass.impressions_to_requests`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mtf import contract as S
from mtf.etl.user_pass import APP_SID_HASH, FEEDBACK, RAW_PLAY_TIME_NORM, fb_col
from mtf.fusion import FusionConfig
from mtf.reward import RewardConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

EXPLORE_IDX = "explore_idx"          # 1-based index into the explore groups (null when absent)
REWARD_WEIGHT_NAMES = ("w_play_time", "w_integrity", "w_like", "w_share", "w_comment",
                       "w_follow")


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
    the other reward regressors are state behaviours), ``a_<i>`` for i < k, ``explore_idx``,
    ``app_sid_hash`` (strings encoded as numbers: cheaper to carry to the request level).
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
        play_norm.alias(RAW_PLAY_TIME_NORM),
        *actions,
        F.array_position(F.array(*map(F.lit, explore_groups)), F.col(S.EXPLORE_GROUP))
         .cast("int").alias(EXPLORE_IDX),
        F.when(sid.isNotNull() & (sid != ""), F.xxhash64(sid)).alias(APP_SID_HASH))


def add_reward(steps: "DataFrame", *, reward: RewardConfig) -> "DataFrame":
    """reward_stickiness, reward_activeness and reward = their sum, from the page sums.

    Requires ``fb_*`` (:func:`mtf.etl.user_pass.impressions_to_requests`). The weights are
    config numbers applied with ``col * lit(w)``; the sum over the page of the per-impression
    formula is linear, so weighting the page sums is the same reward as
    :func:`mtf.reward.impression_reward` summed.
    """
    from pyspark.sql import functions as F

    w = dict(zip(FEEDBACK, reward_weights(reward)))
    stick = F.col(fb_col("play_time_norm")) * w["play_time_norm"] \
        + F.col(fb_col("play_ratio")) * w["play_ratio"]
    act = F.lit(0.0)
    for c in S.INTERACTION_COLUMNS:
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
