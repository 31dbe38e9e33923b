"""Run sessions request by request, vectorised across users.

One iteration = one request of every user currently in a session: state -> action ->
candidates -> MTL predictions -> fusion -> top-l page -> sampled responses -> reward ->
state/satisfaction update -> leave or continue. A user who leaves starts their next session of
the plan (after a gap) in a later iteration, so the batch stays full while users have sessions
left; users are independent, so they need not be at the same step or time.

Randomness comes from :class:`StepRandom`:

* ``paired=True`` (evaluation, one session per user, all users start together so the iteration
  is the step): a user's numbers at step t come from a generator keyed by ``(key, t, chunk of
  the user)``, so a session sees the same candidates, MTL noise and response/leave uniforms at
  step t whatever the policy did to the other sessions: common random numbers for paired
  comparisons.
* ``paired=False`` (log generation, warm-up): one running generator, draws only for the active
  users.

Session-level draws (start satisfaction, gaps between sessions) come from a separate generator,
``session_rng``. Everything is a deterministic function of the seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mtf.features import impression_behaviours
from mtf.fusion import action_to_weights, fused_score
from mtf.reward import impression_reward
from mtf.sim.state import StateTracker
from mtf.sim.users import Users
from mtf.sim.world import (N_ITEM_UNIFORMS, World, candidate_truth, leave_probability,
                           mtl_predict, mtl_sensitivity, sample_page, task_values,
                           update_satisfaction)

# act(states (n, S) float32, rows (n,), rng) -> (actions (n, k) in [-1, 1], logp (n,))
Actor = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

_US = 1_000_000
NO_LIMIT_US = np.iinfo(np.int64).max // 2


class StepRandom:
    """Per-request random numbers of one rollout; see the module docstring.

    In paired mode the batch is cut into fixed chunks of :attr:`CHUNK` users; the numbers of
    chunk c at step t come from a generator keyed by ``(*key, t, c)`` and are drawn only while
    the chunk has an active user, so the tail of long sessions stays cheap.

    Args:
        batch_size: users in the rollout (rows of the full batch).
        paired: common random numbers (keyed per step and chunk) or one running generator.
        key: integer key of the paired streams (e.g. ``(seed, tag, batch)``).
        rng: the running generator when ``paired`` is False.
    """

    CHUNK = 64

    def __init__(self, batch_size: int, *, paired: bool, key: tuple[int, ...] = (),
                 rng: np.random.Generator | None = None) -> None:
        if not paired and rng is None:
            raise ValueError("StepRandom(paired=False) needs rng")
        self._n = batch_size
        self._paired = paired
        self._key = tuple(int(k) for k in key)
        self._gen: np.random.Generator | None = rng
        self._active: np.ndarray = np.arange(batch_size)
        self._chunks: list[tuple[int, np.random.Generator]] = []
        self._index: np.ndarray = self._active

    @property
    def paired(self) -> bool:
        return self._paired

    def begin(self, iteration: int, active: np.ndarray) -> None:
        """Start an iteration for batch positions ``active`` (sorted, distinct)."""
        self._active = active
        if self._paired:
            chunk_of = active // self.CHUNK
            chunk_ids = np.unique(chunk_of)
            self._chunks = [(int(c), np.random.default_rng([*self._key, iteration, int(c)]))
                            for c in chunk_ids]
            # Position of each active user inside the concatenation of its chunks' draws.
            self._index = (np.searchsorted(chunk_ids, chunk_of) * self.CHUNK
                           + active % self.CHUNK)
            self._gen = np.random.default_rng([*self._key, iteration, self._n])

    @property
    def gen(self) -> np.random.Generator:
        """A generator for the policy's own sampling in this iteration."""
        assert self._gen is not None, "call begin() first"
        return self._gen

    def _draw(self, fn: Callable[[np.random.Generator, int], np.ndarray]) -> np.ndarray:
        if self._paired:
            return np.concatenate([fn(g, self.CHUNK) for _, g in self._chunks])[self._index]
        return fn(self.gen, self._active.shape[0])

    def integers(self, high: int, *tail: int) -> np.ndarray:
        return self._draw(lambda g, n: g.integers(0, high, (n, *tail)))

    def normal32(self, *tail: int) -> np.ndarray:
        return self._draw(lambda g, n: g.standard_normal((n, *tail), dtype=np.float32))

    def uniform(self, *tail: int) -> np.ndarray:
        return self._draw(lambda g, n: g.random((n, *tail)))


@dataclass
class StepLog:
    """One iteration's requests (n rows: the users active in it), kept when recording."""

    pos: np.ndarray            # (n,) batch positions
    session: np.ndarray        # (n,) int32 session number of the user in this rollout
    step: np.ndarray           # (n,) int32 request index within the session
    ts_us: np.ndarray          # (n,) int64 request time
    states: np.ndarray         # (n, S) float32 states the policy acted on
    actions: np.ndarray        # (n, k)
    logp: np.ndarray           # (n,) NaN where undefined
    items: np.ndarray          # (n, l) item numbers, in position order
    preds: np.ndarray          # (n, l, k) MTL predictions of the shown items
    play_time_s: np.ndarray    # (n, l)
    liked: np.ndarray          # (n, l) bool
    shared: np.ndarray
    commented: np.ndarray
    followed: np.ndarray


@dataclass
class Outcome:
    """Per-user totals of a rollout, arrays over the batch (B,).

    With one session per user (evaluation) these are per-session metrics; with several they
    sum over the user's sessions (``discounted_return`` discounts within each session).
    """

    n_sessions: np.ndarray       # sessions run
    n_steps: np.ndarray          # requests
    discounted_return: np.ndarray  # sum over sessions of sum_t gamma^t r_t
    first_reward: np.ndarray     # reward of the first request of the first session
    total_reward: np.ndarray
    dwell_s: np.ndarray          # total play time
    n_interactions: np.ndarray   # impressions with any like/share/comment/follow
    end_ts_us: np.ndarray        # end of the last session (last request + its dwell)
    end_satisfaction: np.ndarray
    first_states: np.ndarray     # (B, S) float32 state at the first request (0 if none)
    steps: list[StepLog] = field(default_factory=list)


def dedupe_mask(items: np.ndarray) -> np.ndarray:
    """``(B, C)`` True where a candidate repeats an earlier candidate of the same request."""
    order = np.argsort(items, axis=1, kind="stable")
    srt = np.take_along_axis(items, order, axis=1)
    rep_sorted = np.zeros(items.shape, dtype=bool)
    rep_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    rep = np.zeros_like(rep_sorted)
    np.put_along_axis(rep, order, rep_sorted, axis=1)
    return rep


def top_slots(scores: np.ndarray, page_size: int) -> np.ndarray:
    """``(B, l)`` candidate slots of the ``l`` highest scores, best first."""
    part = np.argpartition(-scores, page_size - 1, axis=1)[:, :page_size]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass
class _Page:
    """Result of one request for n users."""

    states: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    items: np.ndarray          # (n, l)
    preds: np.ndarray          # (n, l, k)
    play_time_s: np.ndarray    # (n, l)
    liked: np.ndarray
    shared: np.ndarray
    commented: np.ndarray
    followed: np.ndarray
    reward: np.ndarray         # (n,)
    satisfaction: np.ndarray   # (n,) after the page
    leave: np.ndarray          # (n,) bool
    dwell_us: np.ndarray       # (n,) int64 >= 1: time to the next request


def request(world: World, users: Users, tracker: StateTracker, urows: np.ndarray,
            step: np.ndarray, ts_us: np.ndarray, satisfaction: np.ndarray, act: Actor,
            rand: StepRandom) -> _Page:
    """Serve one request to each of ``urows`` (distinct user rows) and observe the response.

    Updates ``tracker`` with the page; ``rand.begin`` must have been called for this iteration.
    """
    sim = world.sim
    fusion = world.fusion
    l_page, n_cand = sim.session.page_size, sim.session.n_candidates
    states = tracker.states(urows, step, ts_us)
    actions, logp = act(states, urows, rand.gen)
    weights = action_to_weights(actions, fusion.lo, fusion.hi)

    cands = rand.integers(world.catalog.n_items, n_cand)                # (n, C)
    base = users.base_satisfaction[urows]
    sensitivity = users.bait_sensitivity[urows]
    truth = candidate_truth(world, users.pref[urows], satisfaction, cands)
    targets = task_values(world, truth, satisfaction, base, mtl_sensitivity(world, sensitivity))
    preds = mtl_predict(world, targets, cands, rand.normal32(n_cand, fusion.k))  # (n, C, k)
    scores = fused_score(preds, weights, fusion.beta, fusion.negative)   # (n, C)
    scores[dedupe_mask(cands)] = -np.inf
    shown = top_slots(scores, l_page)                                    # (n, l)
    items = np.take_along_axis(cands, shown, axis=1)
    page = sample_page(world, truth, shown, items, sensitivity,
                       rand.uniform(l_page, N_ITEM_UNIFORMS))
    u_leave = rand.uniform()

    dur = world.catalog.duration_s[items]
    stick, activ = impression_reward(world.reward, page.play_time_s, dur, page.liked,
                                     page.shared, page.commented, page.followed)
    beh = impression_behaviours(world.features, page.play_time_s.ravel(), dur.ravel(),
                                page.liked.ravel(), page.shared.ravel(),
                                page.commented.ravel(), page.followed.ravel())
    tracker.push(urows, ts_us, beh.reshape(items.shape[0], l_page, -1))
    new_sat = update_satisfaction(world, satisfaction, base, page)
    dwell = page.play_time_s.sum(axis=1) + l_page * sim.response.browse_overhead_s
    return _Page(states=states, actions=actions, logp=logp, items=items,
                 preds=np.take_along_axis(preds, shown[:, :, None], axis=1),
                 play_time_s=page.play_time_s, liked=page.liked, shared=page.shared,
                 commented=page.commented, followed=page.followed,
                 reward=(stick + activ).sum(axis=1), satisfaction=new_sat,
                 leave=u_leave < leave_probability(world, new_sat),
                 dwell_us=np.maximum(np.round(dwell * _US).astype(np.int64), 1))


def run_sessions(world: World, users: Users, tracker: StateTracker, rows: np.ndarray, *,
                 first_start_us: np.ndarray, n_sessions: np.ndarray | int,
                 deviation: np.ndarray, act: Actor, rand: StepRandom,
                 session_rng: np.random.Generator, day_end_us: int = NO_LIMIT_US,
                 record: bool = False) -> Outcome:
    """Run up to ``n_sessions`` consecutive sessions for each of ``rows``.

    A user's first session starts at ``first_start_us``; each next one
    ``min_session_gap_s + Exp(mean_extra_gap_s)`` after the previous one ended, unless that is
    at or after ``day_end_us`` (then the user is done). A session starts with satisfaction
    ``base + carryover * deviation + session_start_sd * N(0, 1)``, ``deviation`` being the last
    session's end satisfaction minus base (updated as sessions end).

    Args:
        rows: ``(B,)`` distinct user rows of ``users`` / ``tracker``.
        first_start_us: ``(B,)`` int64 start of each first session.
        n_sessions: sessions per user (``(B,)`` or a scalar); users with 0 do nothing.
        deviation: ``(B,)`` carried-over satisfaction deviation (not modified).
        act: the acting policy; rand: per-request randomness for a batch of B.
        session_rng: generator for start satisfaction and gaps.
        record: keep a :class:`StepLog` per iteration.
    """
    sim = world.sim
    g = sim.satisfaction
    rows = np.asarray(rows, dtype=np.int64)
    b_total = rows.shape[0]
    remaining = np.broadcast_to(np.asarray(n_sessions, dtype=np.int64), (b_total,)).copy()
    base = users.base_satisfaction[rows]
    dev = np.asarray(deviation, dtype=np.float64).copy()
    ts = np.asarray(first_start_us, dtype=np.int64).copy()
    sat = np.zeros(b_total)
    step = np.zeros(b_total, dtype=np.int64)
    session = np.full(b_total, -1, dtype=np.int64)
    out = Outcome(n_sessions=np.zeros(b_total, dtype=np.int64),
                  n_steps=np.zeros(b_total, dtype=np.int64),
                  discounted_return=np.zeros(b_total), first_reward=np.zeros(b_total),
                  total_reward=np.zeros(b_total), dwell_s=np.zeros(b_total),
                  n_interactions=np.zeros(b_total, dtype=np.int64), end_ts_us=ts.copy(),
                  end_satisfaction=np.zeros(b_total),
                  first_states=np.zeros((b_total, tracker.state_dim), dtype=np.float32))

    def start(pos: np.ndarray) -> None:
        sat[pos] = (base[pos] + g.carryover * dev[pos]
                    + g.session_start_sd * session_rng.standard_normal(pos.shape[0]))
        step[pos] = 0
        session[pos] += 1
        remaining[pos] -= 1
        out.n_sessions[pos] += 1
        tracker.start_session(rows[pos])

    active = np.flatnonzero((remaining > 0) & (ts < day_end_us))
    start(active)
    iteration = 0
    while active.size:
        rand.begin(iteration, active)
        urows = rows[active]
        page = request(world, users, tracker, urows, step[active], ts[active], sat[active],
                       act, rand)
        if record:
            out.steps.append(StepLog(
                pos=active, session=session[active].astype(np.int32),
                step=step[active].astype(np.int32), ts_us=ts[active].copy(),
                states=page.states, actions=page.actions, logp=page.logp, items=page.items,
                preds=page.preds,
                play_time_s=page.play_time_s, liked=page.liked, shared=page.shared,
                commented=page.commented, followed=page.followed))
        first = (session[active] == 0) & (step[active] == 0)
        out.first_reward[active[first]] = page.reward[first]
        out.first_states[active[first]] = page.states[first]
        out.discounted_return[active] += world.gamma ** step[active] * page.reward
        out.total_reward[active] += page.reward
        out.n_steps[active] += 1
        out.dwell_s[active] += page.play_time_s.sum(axis=1)
        out.n_interactions[active] += (page.liked | page.shared | page.commented
                                       | page.followed).sum(axis=1)
        sat[active] = page.satisfaction
        ts[active] += page.dwell_us
        step[active] += 1
        ended = page.leave | (step[active] >= g.max_session_steps)
        done = active[ended]
        dev[done] = sat[done] - base[done]
        out.end_ts_us[done] = ts[done]
        out.end_satisfaction[done] = sat[done]
        again = done[remaining[done] > 0]
        if again.size:
            gap = sim.session.min_session_gap_s + session_rng.exponential(
                sim.session.mean_extra_gap_s, again.shape[0])
            ts[again] += np.round(gap * _US).astype(np.int64)
            again = again[ts[again] < day_end_us]
            start(again)
        active = np.sort(np.concatenate([active[~ended], again]))
        iteration += 1
    return out
