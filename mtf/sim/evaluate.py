"""Ground truth: the true expected discounted session return of any fusion policy.

An episode is one session (docs/method.md section 3) of a fresh simulated user who already has
history:
each evaluation user first runs ``sim.eval.warmup_sessions`` sessions under the logging
baseline (exploit group, no exploration), then one evaluated session under the policy. The
return is ``sum_t gamma^t r_t`` with ``r_t`` the pipeline's reward
(:func:`mtf.reward.impression_reward`, stickiness + activeness, summed over the page) and
``gamma = mdp.gamma``.

Common random numbers: users, their warm-up histories and session-start states depend only on
``seed``; inside the evaluated session, step t of session i draws the same candidates, MTL noise
and response/leave uniforms under every policy. :func:`compare` and :func:`evaluate_many`
therefore give paired differences whose intervals are much tighter than the unpaired ones.
Results depend on ``seed``, ``n_sessions`` and ``sim.eval.batch_sessions``.

Example:
    >>> world = World.from_config(load_config())
    >>> res = evaluate(world, FixedPolicy(np.zeros(world.k)), n_sessions=2000, seed=1)
    >>> res.mean_return, res.ci
"""
from __future__ import annotations

import copy
import datetime as dt
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

from mtf.sim.policies import FixedPolicy, Policy, check_actions
from mtf.sim.rollout import Outcome, StepRandom, run_sessions
from mtf.sim.state import StateTracker
from mtf.sim.users import Users, make_users
from mtf.sim.world import STREAM_EVAL, World, stream

if TYPE_CHECKING:
    from mtf.config import MtfConfig

_US_PER_DAY = 86_400 * 1_000_000
_EVAL_EPOCH_US = (dt.date(2030, 1, 1) - dt.date(1970, 1, 1)).days * _US_PER_DAY
_EVAL_USER_OFFSET = 10 ** 9   # evaluation users are numbered apart from logged users
_USERS, _WARMUP, _EPISODE, _EPISODE_START = 0, 1, 2, 3   # sub-streams of a batch


def _interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """(mean, half-width of the normal-approximation CI, standard error)."""
    n = values.shape[0]
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return mean, z * se, se


@dataclass(frozen=True)
class EvalResult:
    """Ground-truth metrics of one policy over ``n_sessions`` evaluated sessions."""

    n_sessions: int
    mean_return: float          # E[sum_t gamma^t r_t] per session
    ci: tuple[float, float]     # confidence interval of mean_return (level = ci_level)
    std_err: float
    mean_first_reward: float    # E[r_0]: the immediate (first-request) reward
    first_reward_ci: tuple[float, float]
    mean_total_reward: float    # undiscounted reward per session
    mean_dwell_s: float         # play time per session, seconds
    interaction_rate: float     # share of impressions with a like/share/comment/follow
    mean_session_length: float  # requests per session
    ci_level: float
    returns: np.ndarray = field(repr=False)        # (n_sessions,) per-session returns
    first_rewards: np.ndarray = field(repr=False)  # (n_sessions,)
    first_states: np.ndarray = field(repr=False)   # (n_sessions, S) state at the first
    #                                                request (equal across paired policies)
    dwells: np.ndarray = field(repr=False)         # (n_sessions,) play time per session, s

    def segment(self, mask: np.ndarray) -> float:
        """Mean return over the sessions selected by ``mask`` (e.g. on ``first_states``)."""
        return float(self.returns[np.asarray(mask, dtype=bool)].mean())


@dataclass(frozen=True)
class CompareResult:
    """Paired comparison ``a - b`` on common random numbers."""

    a: EvalResult
    b: EvalResult
    diff_return: float                 # mean of per-session (return_a - return_b)
    diff_ci: tuple[float, float]
    diff_std_err: float
    diff_first_reward: float
    diff_first_reward_ci: tuple[float, float]
    diff_dwell_s: float                # mean of per-session (dwell_a - dwell_b), seconds
    diff_dwell_ci: tuple[float, float]


def _as_world(world_or_cfg: "World | MtfConfig") -> World:
    return world_or_cfg if isinstance(world_or_cfg, World) else World.from_config(world_or_cfg)


@dataclass
class _Start:
    """Users of one evaluation batch after their warm-up, ready for the evaluated session."""

    batch: int
    users: Users
    tracker: StateTracker
    start_ts_us: np.ndarray   # (n,) start of the evaluated session
    deviation: np.ndarray     # (n,) satisfaction deviation carried into it


def _starts(world: World, n_sessions: int, seed: int) -> Iterator[_Start]:
    sim = world.sim
    size = sim.eval.batch_sessions
    baseline = FixedPolicy(world.baseline_action)

    def act_baseline(states: np.ndarray, rows: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return baseline(states), np.full(states.shape[0], np.nan)

    for batch, lo in enumerate(range(0, n_sessions, size)):
        n = min(size, n_sessions - lo)
        users = make_users(sim.population, sim.catalog.n_categories,
                           _EVAL_USER_OFFSET + lo + np.arange(n),
                           stream(seed, STREAM_EVAL, batch, _USERS))
        tracker = StateTracker(world.features,
                               users.profile_columns(world.features.profile_columns))
        rng = stream(seed, STREAM_EVAL, batch, _WARMUP)
        first = _EVAL_EPOCH_US + np.floor(rng.random(n) * _US_PER_DAY).astype(np.int64)
        warm = run_sessions(world, users, tracker, np.arange(n), first_start_us=first,
                            n_sessions=sim.eval.warmup_sessions, deviation=np.zeros(n),
                            act=act_baseline, rand=StepRandom(n, paired=False, rng=rng),
                            session_rng=rng)
        if sim.eval.warmup_sessions:
            deviation = warm.end_satisfaction - users.base_satisfaction
            gap = sim.session.min_session_gap_s + rng.exponential(sim.session.mean_extra_gap_s, n)
            start = warm.end_ts_us + np.round(gap * 1e6).astype(np.int64)
        else:
            deviation, start = np.zeros(n), first
        yield _Start(batch, users, tracker, start, deviation)


def _episode(world: World, start: _Start, policy: Policy, seed: int) -> Outcome:
    """The evaluated session, on a copy of the warmed-up state (paired random numbers)."""
    k = world.k

    def act(states: np.ndarray, rows: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        a = check_actions(policy(states), states.shape[0], k)
        return a, np.full(states.shape[0], np.nan)

    n = start.users.n
    key = (seed, STREAM_EVAL, start.batch, _EPISODE)
    return run_sessions(world, start.users, copy.deepcopy(start.tracker), np.arange(n),
                        first_start_us=start.start_ts_us, n_sessions=1,
                        deviation=start.deviation, act=act,
                        rand=StepRandom(n, paired=True, key=key),
                        session_rng=stream(seed, STREAM_EVAL, start.batch, _EPISODE_START))


def _result(world: World, outcomes: list[Outcome]) -> EvalResult:
    level = world.sim.eval.ci_level
    ret = np.concatenate([o.discounted_return for o in outcomes])
    first = np.concatenate([o.first_reward for o in outcomes])
    steps = np.concatenate([o.n_steps for o in outcomes])
    inter = np.concatenate([o.n_interactions for o in outcomes])
    mean, half, se = _interval(ret, level)
    fmean, fhalf, _ = _interval(first, level)
    dwells = np.concatenate([o.dwell_s for o in outcomes])
    n_imp = steps.sum() * world.sim.session.page_size
    return EvalResult(
        n_sessions=int(ret.shape[0]), mean_return=mean, ci=(mean - half, mean + half),
        std_err=se, mean_first_reward=fmean, first_reward_ci=(fmean - fhalf, fmean + fhalf),
        mean_total_reward=float(np.concatenate([o.total_reward for o in outcomes]).mean()),
        mean_dwell_s=float(dwells.mean()),
        interaction_rate=float(inter.sum() / n_imp) if n_imp else float("nan"),
        mean_session_length=float(steps.mean()), ci_level=level, returns=ret,
        first_rewards=first, first_states=np.concatenate([o.first_states for o in outcomes]),
        dwells=dwells)


def evaluate_many(world_or_cfg: "World | MtfConfig", policies: Mapping[str, Policy],
                  n_sessions: int, seed: int) -> dict[str, EvalResult]:
    """Evaluate several policies on the same users and random numbers (paired)."""
    world = _as_world(world_or_cfg)
    if n_sessions < 2:
        raise ValueError(f"n_sessions must be >= 2 for a confidence interval, got {n_sessions}")
    if not policies:
        raise ValueError("evaluate_many needs at least one policy")
    outcomes: dict[str, list[Outcome]] = {name: [] for name in policies}
    for start in _starts(world, n_sessions, seed):
        for name, policy in policies.items():
            outcomes[name].append(_episode(world, start, policy, seed))
    return {name: _result(world, outs) for name, outs in outcomes.items()}


def evaluate(world_or_cfg: "World | MtfConfig", policy: Policy, n_sessions: int,
             seed: int) -> EvalResult:
    """True expected discounted session return of ``policy`` (mean, CI) and plain metrics."""
    return evaluate_many(world_or_cfg, {"policy": policy}, n_sessions, seed)["policy"]


def paired_difference(a: EvalResult, b: EvalResult) -> CompareResult:
    """Paired ``a - b`` of two results from the same ``(seed, n_sessions)``: return, first
    reward and dwell time per session."""
    if a.n_sessions != b.n_sessions:
        raise ValueError("paired_difference needs results over the same sessions, got "
                         f"{a.n_sessions} and {b.n_sessions} sessions")
    d, half, se = _interval(a.returns - b.returns, a.ci_level)
    fd, fhalf, _ = _interval(a.first_rewards - b.first_rewards, a.ci_level)
    dd, dhalf, _ = _interval(a.dwells - b.dwells, a.ci_level)
    return CompareResult(a=a, b=b, diff_return=d, diff_ci=(d - half, d + half),
                         diff_std_err=se, diff_first_reward=fd,
                         diff_first_reward_ci=(fd - fhalf, fd + fhalf), diff_dwell_s=dd,
                         diff_dwell_ci=(dd - dhalf, dd + dhalf))


def compare(world_or_cfg: "World | MtfConfig", policy_a: Policy, policy_b: Policy,
            n_sessions: int, seed: int) -> CompareResult:
    """Paired comparison of two policies (``a - b``) with common random numbers."""
    res = evaluate_many(world_or_cfg, {"a": policy_a, "b": policy_b}, n_sessions, seed)
    return paired_difference(res["a"], res["b"])
