"""``mtf calibrate-rewards``: fit the reward weights against future dwell time (Spark ML).

The paper sets the reward weights "via statistic analysis on relationships between these
feedback and future user app dwell time" (docs/method.md section 4). This job makes that concrete:

    rest_dwell(t) = sum of play_time_s over the steps of the session after step t
    rest_dwell(t) ~ b0 + sum_j beta_j * feedback_j(t)

with ``feedback_j`` the per-page sums the reward uses (capped play time, play ratio, like,
share, comment, follow), fitted by ordinary least squares (``LinearRegression``, normal
equations). Steps of sessions cut by the end of the data (``is_truncated``) are left out (their
future is unknown), and by default so is each session's last step (its future is 0 by
construction). The proposed weights are ``max(beta_j, 0)`` scaled so that the mean step reward
equals that under the configured weights (rewards stay O(1), comparable side by side).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mtf import contract as S
from mtf.etl.ingest import read_raw_logs
from mtf.etl.pipeline import (BUILD_SESSION_CONF, RunWindow, Validator, build_requests, day_range,
                              session_conf, validation_context)
from mtf.etl.steps import REWARD_WEIGHT_NAMES, reward_weights
from mtf.etl.user_pass import DWELL_S, FEEDBACK, fb_col
from mtf.etl.validate import RowRules
from mtf.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mtf.config import MtfConfig
    from mtf.reward import RewardConfig

logger = logging.getLogger(__name__)

REST_DWELL_S = "rest_dwell_s"


@dataclass(frozen=True)
class Calibration:
    """Fitted reward weights next to the configured ones (all in :data:`REWARD_WEIGHT_NAMES`
    order)."""

    names: tuple[str, ...]
    configured: tuple[float, ...]
    coefficients: tuple[float, ...]   # beta_j: seconds of future dwell per unit of feedback
    proposed: tuple[float, ...]       # max(beta, 0), scaled to the configured mean reward
    intercept: float
    r2: float
    n_steps: int

    def table(self) -> str:
        """A plain-text table, one weight per line."""
        lines = [f"{'weight':<12} {'configured':>10} {'proposed':>10} {'coef (s/unit)':>14}"]
        for n, c, p, b in zip(self.names, self.configured, self.proposed, self.coefficients):
            lines.append(f"{n:<12} {c:>10.4f} {p:>10.4f} {b:>14.4f}")
        lines.append(f"intercept {self.intercept:.3f} s, R^2 {self.r2:.4f}, "
                     f"{self.n_steps} steps")
        return "\n".join(lines)


def calibration_rows(requests: "DataFrame", *, drop_last_step: bool = True) -> "DataFrame":
    """Per step: the feedback sums and the rest-of-session dwell (label).

    Requires session_id, step, ``dwell_s``, ``fb_*``, is_terminal, is_truncated (one row per
    request, :func:`mtf.etl.pipeline.build_requests`). Drops steps of truncated sessions and,
    with ``drop_last_step``, each session's last step. Adds ``rest_dwell_s``.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    session = Window.partitionBy(S.SESSION_ID)
    upto = Window.partitionBy(S.SESSION_ID).orderBy(S.STEP) \
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    rows = requests.select(
        "*",
        (F.sum(DWELL_S).over(session) - F.sum(DWELL_S).over(upto)).alias(REST_DWELL_S),
        F.max(F.col(S.IS_TRUNCATED).cast("int")).over(session).alias("_cut"))
    rows = rows.where(F.col("_cut") == 0)
    if drop_last_step:
        rows = rows.where(~F.col(S.IS_TERMINAL))
    return rows.select(S.SESSION_ID, S.STEP, *(fb_col(f) for f in FEEDBACK), REST_DWELL_S)


def fit_reward_weights(rows: "DataFrame", *, reward: "RewardConfig") -> Calibration:
    """Regress ``rest_dwell_s`` on the feedback sums; see the module docstring."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import functions as F

    features = [fb_col(f) for f in FEEDBACK]
    data = VectorAssembler(inputCols=features, outputCol="_x").transform(rows)
    model = LinearRegression(featuresCol="_x", labelCol=REST_DWELL_S, fitIntercept=True,
                             regParam=0.0, solver="normal", standardization=False).fit(data)
    beta = [float(b) for b in model.coefficients]
    means = rows.agg(*(F.mean(c).alias(c) for c in features)).first()
    mean_fb = [float(means[c] or 0.0) for c in features]
    configured = reward_weights(reward)
    clipped = [max(b, 0.0) for b in beta]
    raw_mean = sum(b * m for b, m in zip(clipped, mean_fb))
    target_mean = sum(w * m for w, m in zip(configured, mean_fb))
    scale = target_mean / raw_mean if raw_mean > 0 else 0.0
    return Calibration(names=REWARD_WEIGHT_NAMES, configured=configured,
                       coefficients=tuple(beta), proposed=tuple(scale * b for b in clipped),
                       intercept=float(model.intercept), r2=float(model.summary.r2),
                       n_steps=int(model.summary.numInstances))


def run_calibration(spark: "SparkSession", cfg: "MtfConfig") -> Calibration:
    """Read and validate the logs of the configured days, build steps, fit (no writes)."""

    with session_conf(spark, BUILD_SESSION_CONF):   # the build's settings (validation speed)
        return _run_calibration(spark, cfg)


def _run_calibration(spark: "SparkSession", cfg: "MtfConfig") -> Calibration:
    from pyspark.sql import functions as F

    raw_path = cfg.lake.path("raw_logs")
    raw = read_raw_logs(spark, raw_path, cfg.fusion.names, cfg.etl)
    first_ds, last_ds = (day_range(raw, cfg.etl.column_map.get(S.DS, S.DS))
                         if cfg.etl.is_full_rebuild else (None, None))
    window = RunWindow.resolve(cfg.etl, first_ds, last_ds)
    context = validation_context(raw, window)
    validator = Validator(context, RowRules.from_config(cfg.etl, cfg.fusion))   # as the build validates
    try:
        valid = (validator.flag(context).where(F.col(S.REJECT_REASON).isNull())
                 .drop(S.REJECT_REASON))
        requests = build_requests(valid, etl=cfg.etl, features=cfg.features, fusion=cfg.fusion,
                                  reward=cfg.reward, window=window)
        rows = calibration_rows(requests, drop_last_step=cfg.etl.calibration_drop_last_step)
        result = fit_reward_weights(rows, reward=cfg.reward)
    finally:
        validator.close()
    logger.info("reward-weight calibration on %s..%s (rest-of-session dwell time ~ step "
                "feedback):\n%s", window.start, window.end, result.table())
    return result


def run(cfg: "MtfConfig") -> int:
    """CLI entry point: fit and log the proposed weights; 0 on success."""

    run_calibration(get_spark("mtf-calibrate-rewards", cfg.spark), cfg)
    return 0
