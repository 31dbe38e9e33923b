"""The session engine: paired random numbers, session plans, caps."""
from __future__ import annotations

import dataclasses

import numpy as np

from mtf.sim.config import SatisfactionConfig
from mtf.sim.generate import shard_users
from mtf.sim.policies import FixedPolicy
from mtf.sim.rollout import Outcome, StepRandom, run_sessions
from mtf.sim.state import StateTracker
from mtf.sim.world import World

from .conftest import small_world


def test_paired_draws_of_a_user_do_not_depend_on_who_else_is_active() -> None:
    n = 300
    everyone, some = np.arange(n), np.array([3, 64, 65, 200, 299])
    full, part = StepRandom(n, paired=True, key=(1, 2)), StepRandom(n, paired=True, key=(1, 2))
    full.begin(4, everyone)
    part.begin(4, some)
    for draw in (lambda r: r.integers(50, 7), lambda r: r.normal32(7, 3), lambda r: r.uniform()):
        np.testing.assert_array_equal(draw(part), draw(full)[some])
    again, next_step = StepRandom(n, paired=True, key=(1, 2)), StepRandom(n, paired=True,
                                                                           key=(1, 2))
    again.begin(4, everyone)
    next_step.begin(5, everyone)
    assert not np.array_equal(again.uniform(), next_step.uniform())


def _run(world: World, n_sessions: np.ndarray, day_end: int | None = None) -> Outcome:
    users = shard_users(world, 0)
    tracker = StateTracker(world.features, users.profile_columns(world.features.profile_columns))
    n = users.n
    policy = FixedPolicy(np.zeros(world.k))
    rng = np.random.default_rng(0)
    kwargs = {} if day_end is None else {"day_end_us": day_end}
    return run_sessions(world, users, tracker, np.arange(n),
                        first_start_us=np.zeros(n, np.int64), n_sessions=n_sessions,
                        deviation=np.zeros(n),
                        act=lambda s, r, g: (policy(s), np.full(len(s), np.nan)),
                        rand=StepRandom(n, paired=False, rng=rng), session_rng=rng, record=True,
                        **kwargs)


def test_session_plans_are_followed() -> None:
    world = small_world(n_users=50, users_per_shard=50)
    plan = np.arange(50) % 4                                  # 0..3 sessions per user
    out = _run(world, plan)
    np.testing.assert_array_equal(out.n_sessions, plan)
    assert np.all(out.n_steps[plan == 0] == 0) and np.all(out.n_steps[plan > 0] >= plan[plan > 0])
    logged = np.concatenate([s.pos for s in out.steps])
    assert np.bincount(logged, minlength=50).tolist() == out.n_steps.tolist()


def test_no_session_starts_after_the_day_ends() -> None:
    world = small_world(n_users=50, users_per_shard=50)
    out = _run(world, np.full(50, 5), day_end=3_600_000_000)   # 1 h: little room for 5
    starts = [s.ts_us[s.step == 0] for s in out.steps]
    assert np.concatenate(starts).max() < 3_600_000_000
    assert out.n_sessions.max() < 5


def test_sessions_are_capped() -> None:
    capped = small_world(n_users=50, users_per_shard=50)
    capped = World.build(sim=dataclasses.replace(
        capped.sim, satisfaction=SatisfactionConfig(max_session_steps=2, leave_floor=0.0,
                                                    leave_bias=-20.0)), seed=1)
    out = _run(capped, np.ones(50, np.int64))
    np.testing.assert_array_equal(out.n_steps, 2)
