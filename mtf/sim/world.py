"""MTF world: the true response model, the imperfect MTL model and the satisfaction dynamics.

A :class:`World` bundles the configs the simulator needs (simulator, fusion, features, reward,
discount) with the item catalog and the MTL model's fixed errors, all drawn from one seed. The
functions here are pure numpy over batches: ``B`` sessions, ``C`` candidates, ``l`` shown items,
``k`` fused tasks.

True model for user u (satisfaction s) and item i (quality q, clickbait b, preference p = the
user's taste for the item's category, log-length z)::

    P(click)          = sigmoid(c0 + c_b b + c_q q + c_p p + c_s s)
    P(finish | click) = sigmoid(f0 + f_q q - f_b b + f_p p - f_z z)
    P(like | click)   = sigmoid(l0 + l_q q + l_p p + l_s s)      (share, comment, follow alike)
    experience e      = click * (g_q q + g_f finish + g_p p - sensitivity_u letdown)
                        - skip_penalty * (1 - click),     letdown = max(b - q, 0)
    s'                = base_u + persistence (s - base_u) + mean_page(e) - fatigue
    P(leave | s')     = leave_floor + (1 - leave_floor) sigmoid(leave_bias - leave_slope s')

The fused MTL tasks predict, for one shown item: click, like, share, comment, follow and finish
(unconditional probabilities), watch_time (``1 - exp(-E[play_time] / watch_time_scale_s)``)
and exit (the leave probability if the whole page were like this item, i.e. with
``mean_page(e) = E[e]``). The MTL model does not observe a user's latent clickbait sensitivity:
its exit head uses ``sim.mtl.sensitivity_known * sensitivity_u + (1 - sensitivity_known) *
(population midpoint)``. So the MTL scores alone cannot tell a clickbait-tolerant user from a
sensitive one; the state (profile activity, history) can, which is what a personalised fusion
policy exploits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mtf.configtools import ConfigError
from mtf.contract import PROFILE_COLUMNS
from mtf.features import FeatureConfig
from mtf.fusion import FusionConfig
from mtf.mdp import MdpConfig
from mtf.reward import RewardConfig
from mtf.serving.exploration import ServingConfig
from mtf.sim.catalog import Catalog, make_catalog
from mtf.sim.config import SimConfig

if TYPE_CHECKING:
    from mtf.config import MtfConfig

# Tasks the world can produce ground truth for (fusion task names must come from this set).
KNOWN_TASKS = ("click", "like", "share", "comment", "follow", "finish", "watch_time", "exit")

# Random-stream tags: every generator is np.random.default_rng([seed, TAG, ...]).
STREAM_CATALOG = 0
STREAM_MTL = 1
STREAM_USERS = 2
STREAM_DAY = 3
STREAM_EVAL = 4

_P_EPS = 1e-6


def stream(seed: int, tag: int, *keys: int) -> np.random.Generator:
    """The generator of stream ``(seed, tag, *keys)``; equal keys give equal numbers."""
    return np.random.default_rng([int(seed), int(tag), *(int(k) for k in keys)])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _P_EPS, 1.0 - _P_EPS)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True, eq=False)
class World:
    """Everything a rollout needs that does not change while users act.

    Build it with :meth:`from_config` (an ``MtfConfig``) or :meth:`build` (sections).
    """

    sim: SimConfig
    serving: ServingConfig        # the logging policy the simulated platform serves
    fusion: FusionConfig
    features: FeatureConfig
    reward: RewardConfig
    gamma: float                  # discount of the evaluated session return
    seed: int
    catalog: Catalog
    task_bias: np.ndarray         # (k,) MTL calibration offset per fused task (logit units)
    item_error: np.ndarray        # (n_items, k) float32 persistent MTL error (logit units)
    task_index: dict[str, int] = field(default_factory=dict)  # fused task -> column

    @classmethod
    def from_config(cls, cfg: "MtfConfig") -> "World":
        return cls.build(sim=cfg.sim, serving=cfg.serving, fusion=cfg.fusion,
                         features=cfg.features, reward=cfg.reward, gamma=cfg.mdp.gamma,
                         seed=cfg.seed)

    @classmethod
    def build(cls, *, sim: SimConfig | None = None, serving: ServingConfig | None = None,
              fusion: FusionConfig | None = None, features: FeatureConfig | None = None,
              reward: RewardConfig | None = None, gamma: float = MdpConfig.gamma,
              seed: int = 7) -> "World":
        sim = sim or SimConfig()
        serving = serving or ServingConfig()
        fusion = fusion or FusionConfig()
        features = features or FeatureConfig()
        reward = reward or RewardConfig()
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"mdp.gamma must be in (0, 1], got {gamma!r}")
        unknown = [t for t in fusion.names if t not in KNOWN_TASKS]
        if unknown:
            raise ConfigError(f"fusion.tasks {unknown} have no simulated ground truth; the "
                              f"simulator knows {list(KNOWN_TASKS)}")
        unknown = [c for c in features.profile_columns if c not in PROFILE_COLUMNS]
        if unknown:
            raise ConfigError(f"features.profile_columns {unknown} are not simulated; the "
                              f"simulator writes {list(PROFILE_COLUMNS)}")
        base = serving.baseline_action
        if base and len(base) != fusion.k:
            raise ConfigError(f"serving.baseline_action has {len(base)} values but "
                              f"fusion.tasks has {fusion.k} ({list(fusion.names)})")
        resp = sim.response
        if resp.min_watch_s < features.skip_s or resp.skip_play_max_s >= features.skip_s:
            raise ConfigError(
                f"sim.response.min_watch_s ({resp.min_watch_s}) must be >= features.skip_s "
                f"({features.skip_s}) > sim.response.skip_play_max_s ({resp.skip_play_max_s}), "
                "so that 'click' in the simulator is 'not skipped' in the features")
        catalog = make_catalog(sim.catalog, stream(seed, STREAM_CATALOG))
        mtl_rng = stream(seed, STREAM_MTL)
        task_bias = sim.mtl.task_bias_sd * mtl_rng.standard_normal(fusion.k)
        item_error = (sim.mtl.item_error_sd
                      * mtl_rng.standard_normal((catalog.n_items, fusion.k))).astype(np.float32)
        return cls(sim=sim, serving=serving, fusion=fusion, features=features, reward=reward,
                   gamma=float(gamma),
                   seed=seed, catalog=catalog, task_bias=task_bias, item_error=item_error,
                   task_index={t: j for j, t in enumerate(fusion.names)})

    @property
    def k(self) -> int:
        return self.fusion.k

    @property
    def baseline_action(self) -> np.ndarray:
        """The logging policy's baseline action, ``(k,)`` in [-1, 1] (zeros when unset)."""
        base = self.serving.baseline_action
        return np.asarray(base, dtype=np.float64) if base else np.zeros(self.k)


@dataclass(frozen=True)
class CandidateTruth:
    """True per-candidate quantities for a batch, all ``(B, C)`` float64."""

    p_click: np.ndarray
    p_finish_c: np.ndarray     # P(finish | click)
    p_like_c: np.ndarray
    p_share_c: np.ndarray
    p_comment_c: np.ndarray
    p_follow_c: np.ndarray
    pref: np.ndarray           # the user's preference for the item's category
    exp_play_s: np.ndarray     # E[play time], seconds
    exp_gain: np.ndarray       # E[e] without the letdown term
    exp_letdown: np.ndarray    # E[click * letdown]: E[e] = exp_gain - sensitivity * exp_letdown


def candidate_truth(world: World, pref_rows: np.ndarray, satisfaction: np.ndarray,
                    items: np.ndarray) -> CandidateTruth:
    """True response probabilities of candidates ``items`` (B, C) for B users.

    Args:
        pref_rows: ``(B, n_categories)`` category preferences of the users.
        satisfaction: ``(B,)`` current latent satisfaction.
        items: ``(B, C)`` item numbers.
    """
    r = world.sim.response
    g = world.sim.satisfaction
    cat = world.catalog
    q = cat.quality[items]
    b = cat.bait[items]
    dur = cat.duration_s[items]
    pref = np.take_along_axis(pref_rows, cat.category[items], axis=1)
    s = satisfaction[:, None]
    p_click = sigmoid(r.click_bias + r.click_bait * b + r.click_quality * q + r.click_pref * pref
                      + r.click_satisfaction * s)
    p_fin = sigmoid(r.finish_bias + r.finish_quality * q - r.finish_bait * b
                    + r.finish_pref * pref - r.finish_length * cat.log_length[items])
    p_like = sigmoid(r.like_bias + r.like_quality * q + r.like_pref * pref
                     + r.like_satisfaction * s)
    p_share = sigmoid(r.share_bias + r.share_bait * b + r.share_quality * q)
    p_comment = sigmoid(r.comment_bias + r.comment_bait * b + r.comment_quality * q)
    p_follow = sigmoid(r.follow_bias + r.follow_quality * q + r.follow_pref * pref)
    # E[max(ratio * dur, min_watch)] for ratio ~ U(a, c): clip the kink x = min_watch / dur.
    a, c = r.partial_ratio_min, r.partial_ratio_max
    x = np.clip(r.min_watch_s / dur, a, c)
    partial = (r.min_watch_s * (x - a) + dur * (c * c - x * x) / 2.0) / (c - a)
    exp_play = (p_click * (p_fin * dur + (1.0 - p_fin) * partial)
                + (1.0 - p_click) * r.skip_play_max_s / 2.0)
    gain = p_click * (g.quality_gain * q + g.finish_gain * p_fin + g.pref_gain * pref) \
        - g.skip_penalty * (1.0 - p_click)
    return CandidateTruth(p_click=p_click, p_finish_c=p_fin, p_like_c=p_like,
                          p_share_c=p_share, p_comment_c=p_comment, p_follow_c=p_follow,
                          pref=pref, exp_play_s=exp_play, exp_gain=gain,
                          exp_letdown=p_click * cat.letdown[items])


def leave_probability(world: World, satisfaction: np.ndarray) -> np.ndarray:
    """P(leave after a request) at satisfaction ``s'``: falls as satisfaction rises."""
    g = world.sim.satisfaction
    return g.leave_floor + (1.0 - g.leave_floor) * sigmoid(g.leave_bias - g.leave_slope
                                                            * satisfaction)


def mtl_sensitivity(world: World, sensitivity: np.ndarray) -> np.ndarray:
    """The clickbait sensitivity the MTL model's exit head assumes for these users."""
    pop = world.sim.population
    w = world.sim.mtl.sensitivity_known
    midpoint = 0.5 * (pop.bait_sensitivity_casual + pop.bait_sensitivity_engaged)
    return w * sensitivity + (1.0 - w) * midpoint


def task_values(world: World, truth: CandidateTruth, satisfaction: np.ndarray,
                base: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
    """``(B, C, k)`` values of the fused tasks, in fusion task order.

    The true probabilities for every task; ``exit`` is the leave probability after a page of
    such items for a user of clickbait sensitivity ``sensitivity`` (pass the true one for the
    truth, :func:`mtl_sensitivity` for what the MTL model targets).

    Args:
        satisfaction, base, sensitivity: ``(B,)`` per user.
    """
    def exit_prob() -> np.ndarray:
        experience = truth.exp_gain - sensitivity[:, None] * truth.exp_letdown
        return leave_probability(world, next_satisfaction(
            world, satisfaction[:, None], base[:, None], experience))

    values = {
        "click": lambda: truth.p_click,
        "like": lambda: truth.p_click * truth.p_like_c,
        "share": lambda: truth.p_click * truth.p_share_c,
        "comment": lambda: truth.p_click * truth.p_comment_c,
        "follow": lambda: truth.p_click * truth.p_follow_c,
        "finish": lambda: truth.p_click * truth.p_finish_c,
        "watch_time": lambda: -np.expm1(-truth.exp_play_s / world.sim.response.watch_time_scale_s),
        "exit": exit_prob,
    }
    return np.stack([values[t]() for t in world.fusion.names], axis=-1)


def mtl_predict(world: World, truths: np.ndarray, items: np.ndarray,
                noise: np.ndarray) -> np.ndarray:
    """The imperfect MTL model: ``sigmoid(logit(truth) + bias + item error + noise_sd * noise)``.

    Args:
        truths: ``(B, C, k)`` true task values.
        items: ``(B, C)`` item numbers (for the persistent per-item error).
        noise: ``(B, C, k)`` standard-normal draws.
    """
    z = logit(truths) + world.task_bias + world.item_error[items] \
        + world.sim.mtl.noise_sd * noise
    return sigmoid(z)


@dataclass(frozen=True)
class PageResponse:
    """Sampled responses for the shown items, all ``(B, l)``."""

    clicked: np.ndarray        # bool
    finished: np.ndarray       # bool
    play_time_s: np.ndarray    # float64
    liked: np.ndarray          # bool
    shared: np.ndarray
    commented: np.ndarray
    followed: np.ndarray
    experience: np.ndarray     # float64, e_i


# Uniform draws per shown item, in this order (the last axis of ``u`` in sample_page).
N_ITEM_UNIFORMS = 8


def sample_page(world: World, truth: CandidateTruth, shown: np.ndarray, items: np.ndarray,
                sensitivity: np.ndarray, u: np.ndarray) -> PageResponse:
    """Sample the user's responses to the shown candidates.

    Args:
        truth: candidate truths ``(B, C)``.
        shown: ``(B, l)`` candidate slots shown, in position order.
        items: ``(B, l)`` their item numbers.
        sensitivity: ``(B,)`` clickbait sensitivity.
        u: ``(B, l, N_ITEM_UNIFORMS)`` uniforms in [0, 1).
    """
    r = world.sim.response
    g = world.sim.satisfaction
    cat = world.catalog

    def pick(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, shown, axis=1)

    clicked = u[..., 0] < pick(truth.p_click)
    finished = clicked & (u[..., 1] < pick(truth.p_finish_c))
    dur = cat.duration_s[items]
    ratio = r.partial_ratio_min + (r.partial_ratio_max - r.partial_ratio_min) * u[..., 2]
    partial = np.maximum(ratio * dur, r.min_watch_s)
    skip = r.skip_play_max_s * u[..., 3]
    play = np.where(finished, dur, np.where(clicked, partial, skip))
    liked = clicked & (u[..., 4] < pick(truth.p_like_c))
    shared = clicked & (u[..., 5] < pick(truth.p_share_c))
    commented = clicked & (u[..., 6] < pick(truth.p_comment_c))
    followed = clicked & (u[..., 7] < pick(truth.p_follow_c))
    watched = (g.quality_gain * cat.quality[items] + g.finish_gain * finished
               + g.pref_gain * pick(truth.pref) - sensitivity[:, None] * cat.letdown[items])
    experience = np.where(clicked, watched, -g.skip_penalty)
    return PageResponse(clicked=clicked, finished=finished, play_time_s=play, liked=liked,
                        shared=shared, commented=commented, followed=followed,
                        experience=experience)


def next_satisfaction(world: World, satisfaction: np.ndarray, base: np.ndarray,
                      experience: np.ndarray | float) -> np.ndarray:
    """``s' = base + persistence (s - base) + experience - fatigue`` (experience: page mean)."""
    g = world.sim.satisfaction
    return base + g.persistence * (satisfaction - base) + experience - g.fatigue


def update_satisfaction(world: World, satisfaction: np.ndarray, base: np.ndarray,
                        page: PageResponse) -> np.ndarray:
    """Satisfaction after a page: :func:`next_satisfaction` with the page's mean experience."""
    return next_satisfaction(world, satisfaction, base, page.experience.mean(axis=1))
