"""Simulator configuration (SimConfig and its nested sections). Owned by mtf.sim.

Every field carries its unit and meaning. Latent item/user traits live on a logit-like scale
(standard-normal draws), so the response-model coefficients below are logit slopes. The YAML
section ``sim:`` mirrors this tree (``sim.catalog.n_items``, ``sim.session.page_size`` ...);
the logging policy it serves is the ``serving`` section
(:class:`mtf.serving.exploration.ServingConfig`).
See docs/simulator.md for the model these knobs drive.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

from mtf.configtools import check_non_negative, check_positive, check_probability


@dataclass(frozen=True)
class CatalogConfig:
    """The item catalog: latent truth per item, drawn once per seed (shared by all shards)."""

    n_items: int = 20_000                # items in the catalog
    n_categories: int = 20               # item categories (users hold a preference per category)
    quality_bait_corr: float = -0.3      # correlation of latent quality and clickbait appeal
    duration_median_s: float = 30.0      # median item length, seconds (log-normal lengths)
    duration_log_sd: float = 0.7         # sd of log(length)
    duration_min_s: float = 5.0          # lengths are clipped to [min, max], seconds; the max
    duration_max_s: float = 240.0        # keeps a whole page under the 30-min session gap

    def __post_init__(self) -> None:
        if self.n_items < 100:
            raise ValueError(f"sim.catalog.n_items must be >= 100, got {self.n_items!r}")
        if self.n_categories < 1:
            raise ValueError(f"sim.catalog.n_categories must be >= 1, got {self.n_categories!r}")
        if not -1.0 < self.quality_bait_corr < 1.0:
            raise ValueError("sim.catalog.quality_bait_corr must be in (-1, 1), "
                             f"got {self.quality_bait_corr!r}")
        check_positive("sim.catalog", duration_median_s=self.duration_median_s,
                       duration_log_sd=self.duration_log_sd, duration_min_s=self.duration_min_s)
        if self.duration_max_s < self.duration_min_s:
            raise ValueError("sim.catalog.duration_max_s must be >= duration_min_s, got "
                             f"{self.duration_max_s!r} < {self.duration_min_s!r}")


@dataclass(frozen=True)
class PopulationConfig:
    """Users: profile features, category tastes, clickbait tolerance, satisfaction, visits.

    Profiles (age, activity, tenure, gender) are numeric in [0, 1]. ``activity`` is the trait
    that matters most: it sets how often the user visits, the baseline satisfaction and, above
    all, how much clickbait hurts them (engaged users tolerate it, casual ones do not).
    """

    pref_sd: float = 1.0                 # sd of per-category preference (logit units)
    bait_sensitivity_casual: float = 1.5  # satisfaction lost per unit of clickbait watched
    bait_sensitivity_engaged: float = 0.0  # ... by casual (low-activity) and engaged users;
    bait_sensitivity_pivot: float = 0.5  # sensitivity = engaged + (casual - engaged)
    bait_sensitivity_width: float = 0.05 #   * sigmoid((pivot - activity) / width)
    bait_sensitivity_sd: float = 0.1     # per-user noise around that curve (floored at 0)
    base_satisfaction: float = 0.0       # mean session-start satisfaction (latent units)
    satisfaction_activity_slope: float = 1.0  # + slope * (activity - 0.5)
    base_satisfaction_sd: float = 0.3    # between-user sd of base satisfaction
    visit_prob_casual: float = 0.3       # P(user visits on a given day) at activity 0 ...
    visit_prob_engaged: float = 0.9      # ... and at activity 1 (linear between)
    extra_sessions_mean: float = 1.5     # mean extra sessions on a visit day at activity 1
    max_sessions_per_day: int = 6        # cap on sessions per user per day

    def __post_init__(self) -> None:
        check_positive("sim.population", pref_sd=self.pref_sd,
                       bait_sensitivity_width=self.bait_sensitivity_width)
        check_non_negative("sim.population", bait_sensitivity_casual=self.bait_sensitivity_casual,
                           bait_sensitivity_engaged=self.bait_sensitivity_engaged,
                           bait_sensitivity_sd=self.bait_sensitivity_sd,
                           base_satisfaction_sd=self.base_satisfaction_sd,
                           extra_sessions_mean=self.extra_sessions_mean)
        check_probability("sim.population", visit_prob_casual=self.visit_prob_casual,
                          visit_prob_engaged=self.visit_prob_engaged)
        if self.max_sessions_per_day < 1:
            raise ValueError("sim.population.max_sessions_per_day must be >= 1, got "
                             f"{self.max_sessions_per_day!r}")


@dataclass(frozen=True)
class ResponseConfig:
    """True response model per shown item (logit-linear in the latent traits).

    ``click`` means "watched past the skip threshold": a clicked item plays at least
    ``min_watch_s``; an unclicked one is skipped after at most ``skip_play_max_s``. Every
    interaction (like, share, comment, follow) and finishing require a click.
    """

    click_bias: float = -0.4             # click logit intercept
    click_bait: float = 2.0              # + per unit of clickbait appeal
    click_quality: float = 0.3           # + per unit of quality
    click_pref: float = 0.5              # + per unit of category preference
    click_satisfaction: float = 0.5      # + per unit of current satisfaction
    finish_bias: float = 0.0             # P(finish | click) logit intercept
    finish_quality: float = 1.0          # + per unit of quality
    finish_bait: float = 0.2             # - per unit of clickbait appeal
    finish_pref: float = 0.3             # + per unit of category preference
    finish_length: float = 0.8           # - per unit of log(length / median length)
    like_bias: float = -2.8              # P(like | click) logit: intercept
    like_quality: float = 0.8            # + per unit of quality
    like_pref: float = 0.4               # + per unit of category preference
    like_satisfaction: float = 0.4       # + per unit of current satisfaction
    share_bias: float = -5.0             # P(share | click) logit: intercept
    share_bait: float = 1.8              # + per unit of clickbait appeal (sensational content)
    share_quality: float = 0.4           # + per unit of quality
    comment_bias: float = -4.6           # P(comment | click) logit: intercept
    comment_bait: float = 1.8            # + per unit of clickbait appeal (outrage comments)
    comment_quality: float = 0.2         # + per unit of quality
    follow_bias: float = -4.5            # P(follow | click) logit: intercept
    follow_quality: float = 0.6          # + per unit of quality
    follow_pref: float = 0.5             # + per unit of category preference
    partial_ratio_min: float = 0.1       # a clicked, unfinished item plays U(min, max) of its
    partial_ratio_max: float = 0.85      # length (max must stay below the 0.9 finish ratio)
    min_watch_s: float = 3.0             # a click plays at least this long (= features.skip_s)
    skip_play_max_s: float = 2.5         # a skip plays U(0, this) seconds (< min_watch_s)
    browse_overhead_s: float = 1.0       # seconds per shown item on top of play time
    watch_time_scale_s: float = 30.0     # normalised watch time = 1 - exp(-E[play] / scale)

    def __post_init__(self) -> None:
        if not 0.0 <= self.partial_ratio_min < self.partial_ratio_max < 0.9:
            raise ValueError("sim.response needs 0 <= partial_ratio_min < partial_ratio_max < "
                             f"0.9, got {self.partial_ratio_min!r}, {self.partial_ratio_max!r}")
        if not 0.0 < self.skip_play_max_s < self.min_watch_s:
            raise ValueError("sim.response needs 0 < skip_play_max_s < min_watch_s, got "
                             f"{self.skip_play_max_s!r}, {self.min_watch_s!r}")
        check_non_negative("sim.response", browse_overhead_s=self.browse_overhead_s)
        check_positive("sim.response", watch_time_scale_s=self.watch_time_scale_s)


@dataclass(frozen=True)
class SatisfactionConfig:
    """Latent satisfaction s: evolves per request, drives clicks, likes and leaving.

    After each page ``s' = base_u + persistence * (s - base_u) + mean_i e_i - fatigue`` with
    the per-item experience ``e_i = clicked_i * (quality_gain * q_i + finish_gain * finished_i
    + pref_gain * pref_i - sensitivity_u * max(bait_i, 0)) - skip_penalty * (1 - clicked_i)``;
    then the user leaves with probability
    ``leave_floor + (1 - leave_floor) * sigmoid(leave_bias - leave_slope * s')``.
    """

    quality_gain: float = 0.0            # satisfaction per unit of quality watched
    finish_gain: float = 0.05            # satisfaction per finished item
    pref_gain: float = 0.1               # satisfaction per unit of preference watched
    skip_penalty: float = 0.1            # satisfaction lost per skipped item
    fatigue: float = 0.05                # satisfaction lost per request (sessions end)
    persistence: float = 0.5             # share of the deviation from base kept per request
    session_start_sd: float = 0.3        # sd of session-start satisfaction around the base
    carryover: float = 0.3               # share of the last session's deviation carried over
    leave_bias: float = -2.2             # leave logit at satisfaction 0
    leave_slope: float = 2.0             # leave logit decrease per unit of satisfaction
    leave_floor: float = 0.05            # leave probability of even the happiest user
    max_session_steps: int = 100         # a session ends after this many requests at most

    def __post_init__(self) -> None:
        check_non_negative("sim.satisfaction", quality_gain=self.quality_gain,
                           finish_gain=self.finish_gain, pref_gain=self.pref_gain,
                           skip_penalty=self.skip_penalty, fatigue=self.fatigue,
                           session_start_sd=self.session_start_sd)
        check_probability("sim.satisfaction", carryover=self.carryover,
                          persistence=self.persistence, leave_floor=self.leave_floor)
        check_positive("sim.satisfaction", leave_slope=self.leave_slope)
        if self.max_session_steps < 1:
            raise ValueError("sim.satisfaction.max_session_steps must be >= 1, got "
                             f"{self.max_session_steps!r}")


@dataclass(frozen=True)
class MtlConfig:
    """The imperfect multi-task model: predictions are noisy, biased true probabilities.

    ``pred = sigmoid(logit(truth) + task_bias_t + item_error_{i,t} + noise)``: a fixed
    calibration offset per task, a persistent per-(item, task) error and fresh per-request noise,
    all in logit units.
    """

    task_bias_sd: float = 0.2            # sd of the per-task calibration offset (fixed per seed)
    item_error_sd: float = 0.2           # sd of the persistent per-(item, task) error
    noise_sd: float = 0.3                # sd of the per-request, per-candidate noise
    sensitivity_known: float = 0.0       # how much of a user's latent clickbait sensitivity
    #                                      the exit head sees (0: assumes the population
    #                                      midpoint for everyone; 1: knows it exactly)

    def __post_init__(self) -> None:
        check_non_negative("sim.mtl", task_bias_sd=self.task_bias_sd,
                           item_error_sd=self.item_error_sd, noise_sd=self.noise_sd)
        check_probability("sim.mtl", sensitivity_known=self.sensitivity_known)


@dataclass(frozen=True)
class SessionConfig:
    """Requests, pages and time between sessions."""

    page_size: int = 6                   # l: items shown per request (one RL step)
    n_candidates: int = 40               # candidates scored per request (drawn with replacement,
    #                                      repeats within a request are dropped)
    min_session_gap_s: float = 2400.0    # sessions of a user start >= this after the last
    #                                      one ended (must exceed the ETL's 1800 s gap)
    mean_extra_gap_s: float = 10800.0    # + Exp(mean) seconds between sessions of a day
    app_session_id_share: float = 0.8    # share of users (by hash) whose logs carry an
    #                                      app_session_id; the rest exercise gap sessionizing

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError(f"sim.session.page_size must be >= 1, got {self.page_size!r}")
        if self.n_candidates < self.page_size:
            raise ValueError("sim.session.n_candidates must be >= page_size, got "
                             f"{self.n_candidates!r} < {self.page_size!r}")
        check_positive("sim.session", min_session_gap_s=self.min_session_gap_s)
        check_non_negative("sim.session", mean_extra_gap_s=self.mean_extra_gap_s)
        check_probability("sim.session", app_session_id_share=self.app_session_id_share)


@dataclass(frozen=True)
class EvalConfig:
    """Ground-truth evaluation (mtf.sim.evaluate)."""

    warmup_sessions: int = 3             # baseline-policy sessions run before the evaluated
    #                                      one, so episodes start from users with history
    ci_level: float = 0.95               # confidence level of reported intervals
    batch_sessions: int = 4096           # sessions simulated together (memory bound)

    def __post_init__(self) -> None:
        if self.warmup_sessions < 0:
            raise ValueError("sim.eval.warmup_sessions must be >= 0, got "
                             f"{self.warmup_sessions!r}")
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"sim.eval.ci_level must be in (0, 1), got {self.ci_level!r}")
        if self.batch_sessions < 1:
            raise ValueError(f"sim.eval.batch_sessions must be >= 1, got {self.batch_sessions!r}")


@dataclass(frozen=True)
class SimConfig:
    n_users: int = 2000                  # users in the population (user ids u00000000 ...)
    n_days: int = 3                      # days of logs written by `mtf simulate`
    start_date: str = "2026-01-01"       # first ds (UTC), YYYY-MM-DD
    users_per_shard: int = 1000          # users per shard: the unit of seeding and of work in
    #                                      the Spark job (logs do not depend on partitioning)
    spark_partitions: int = 0            # Spark partitions for `mtf simulate`; 0 = one per
    #                                      shard, at most 4 x the default parallelism
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    satisfaction: SatisfactionConfig = field(default_factory=SatisfactionConfig)
    mtl: MtlConfig = field(default_factory=MtlConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.n_users <= 0:
            raise ValueError(f"sim.n_users must be > 0, got {self.n_users!r}")
        if self.n_days <= 0:
            raise ValueError(f"sim.n_days must be > 0, got {self.n_days!r}")
        if self.users_per_shard <= 0:
            raise ValueError(f"sim.users_per_shard must be > 0, got {self.users_per_shard!r}")
        if self.spark_partitions < 0:
            raise ValueError(f"sim.spark_partitions must be >= 0, got {self.spark_partitions!r}")
        try:
            _dt.date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ValueError(f"sim.start_date must be a date YYYY-MM-DD, got "
                             f"{self.start_date!r}") from None

    @property
    def start(self) -> _dt.date:
        return _dt.date.fromisoformat(self.start_date)

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_users / self.users_per_shard)
