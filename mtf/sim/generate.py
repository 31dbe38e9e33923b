"""Generate impression logs and user profiles, shard by shard (in-process, no Spark).

Users are split into fixed blocks of ``sim.users_per_shard`` by user number; a shard's users,
their days and every random number they use come from streams keyed by ``(seed, shard, day)``,
so the logs of a shard do not depend on which process, partition or order produces them. Within
a shard all days run in one loop so that histories (and the state tracker) carry over.

Day model: a user visits on a day with probability ``visit_prob`` and then has
``1 + Poisson(extra_sessions_mean * activity)`` sessions (capped). The first session starts at a
uniform time of the day, later ones ``min_session_gap_s + Exp(mean_extra_gap_s)`` after the
previous one ended (also across days). A session never starts after its day ends, but may run
past midnight; rows at or after the end of the simulated window are cut (those sessions are
truncated, as in real logs).

The Arrow tables follow :mod:`mtf.contract`. With ``include_truth=True`` three extra columns
carry, per row, the true session (``true_session_id``), the 0-based ``true_step`` of the request
and ``true_state``, the state vector the logging policy acted on (``mtf.features`` layout), for
tests of the ETL's sessionizer and feature parity; they are not part of the contract.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtf.fusion import action_to_weights
from mtf import contract as S
from mtf.sim.logging_policy import LoggingPolicy, assign_groups
from mtf.sim.policies import FixedPolicy, Policy
from mtf.sim.rollout import Outcome, StepRandom, run_sessions
from mtf.sim.state import StateTracker
from mtf.sim.users import Users, hash_unit, make_users
from mtf.sim.world import STREAM_DAY, STREAM_USERS, World, stream

logger = logging.getLogger(__name__)

TRUE_SESSION_ID = "true_session_id"
TRUE_STEP = "true_step"
TRUE_STATE = "true_state"
APP_SESSION_SALT = "mtf-app-session"
ITEM_ID_WIDTH = 7
_US_PER_DAY = 86_400 * 1_000_000
_EPOCH = dt.date(1970, 1, 1)


def day_start_us(day: dt.date) -> int:
    """Midnight UTC of ``day`` in microseconds since the epoch."""
    return (day - _EPOCH).days * _US_PER_DAY


def shard_user_range(world: World, shard: int) -> tuple[int, int]:
    """Global user numbers ``[lo, hi)`` of ``shard``."""
    sim = world.sim
    if not 0 <= shard < sim.n_shards:
        raise ValueError(f"shard {shard} out of range [0, {sim.n_shards}) for "
                         f"sim.n_users={sim.n_users}, sim.users_per_shard={sim.users_per_shard}")
    lo = shard * sim.users_per_shard
    return lo, min(sim.n_users, lo + sim.users_per_shard)


def shard_users(world: World, shard: int) -> Users:
    """The users of ``shard`` (deterministic in ``(seed, shard)``)."""
    lo, hi = shard_user_range(world, shard)
    return make_users(world.sim.population, world.sim.catalog.n_categories,
                      np.arange(lo, hi), stream(world.seed, STREAM_USERS, shard))


def item_id_array(n_items: int) -> pa.Array:
    """``item_id`` strings of the catalog (``i0000042``), indexable with ``take``."""
    return pa.array([f"i{i:0{ITEM_ID_WIDTH}d}" for i in range(n_items)], pa.string())


def profiles_table(world: World, shard: int) -> pa.Table:
    """The user-profile rows of ``shard`` (all simulated profile columns)."""
    users = shard_users(world, shard)
    cols = [pa.array(users.ids, pa.string())]
    cols += [pa.array(users.profile[:, j]) for j in range(len(S.PROFILE_COLUMNS))]
    return pa.Table.from_arrays(cols, schema=S.user_profile_arrow_schema())


def simulate_shard(world: World, shard: int, base_policy: Policy | None = None, *,
                   include_truth: bool = False) -> Iterator[tuple[dt.date, pa.Table]]:
    """Simulate all days of ``shard``; yields ``(day, impressions)`` per simulated day.

    A day's table holds the sessions that *started* that day (their rows may carry the next
    ``ds`` when they run past midnight).

    Args:
        base_policy: the logging policy's base, e.g. a deployed learned policy (exploration
            is added around it); default: the configured baseline action.
        include_truth: add the ``true_session_id`` / ``true_step`` / ``true_state`` columns.
    """
    sim = world.sim
    users = shard_users(world, shard)
    tracker = StateTracker(world.features, users.profile_columns(world.features.profile_columns))
    groups = assign_groups(users.ids, world.serving)
    logging_policy = LoggingPolicy(base_policy or FixedPolicy(world.baseline_action),
                                   world.serving, world.k, world.fusion)

    def act(states: np.ndarray, rows: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return logging_policy.act(states, groups[rows], rng)

    has_sid = hash_unit(users.ids, APP_SESSION_SALT) < sim.session.app_session_id_share
    assembler = _Assembler(world, users, groups, has_sid, include_truth)
    pop = sim.population
    n = users.n
    rows = np.arange(n)
    last_end = np.full(n, np.iinfo(np.int64).min // 2, dtype=np.int64)
    deviation = np.zeros(n)       # last session's end satisfaction - base (carried over)
    min_gap_us = int(round(sim.session.min_session_gap_s * 1e6))
    window_end = day_start_us(sim.start + dt.timedelta(days=sim.n_days))
    for d in range(sim.n_days):
        day = sim.start + dt.timedelta(days=d)
        day0 = day_start_us(day)
        rng = stream(world.seed, STREAM_DAY, shard, d)
        visits = rng.random(n) < users.visit_prob
        extra = np.minimum(rng.poisson(pop.extra_sessions_mean * users.activity),
                           pop.max_sessions_per_day - 1)
        first = day0 + np.floor(rng.random(n) * _US_PER_DAY).astype(np.int64)
        out = run_sessions(world, users, tracker, rows,
                           first_start_us=np.maximum(first, last_end + min_gap_us),
                           n_sessions=np.where(visits, 1 + extra, 0), deviation=deviation,
                           act=act, rand=StepRandom(n, paired=False, rng=rng),
                           session_rng=rng, day_end_us=day0 + _US_PER_DAY, record=True)
        ran = out.n_sessions > 0
        last_end[ran] = out.end_ts_us[ran]
        deviation[ran] = out.end_satisfaction[ran] - users.base_satisfaction[ran]
        table = assembler.table(out, day)
        if d == sim.n_days - 1:  # cut what runs past the simulated window
            table = table.filter(pc.less(table[S.TS], pa.scalar(window_end, S.TS_ARROW)))
        yield day, table


class _Assembler:
    """Turns a recorded day of a shard into impression-log Arrow tables."""

    def __init__(self, world: World, users: Users, groups: np.ndarray, has_sid: np.ndarray,
                 include_truth: bool) -> None:
        self.world = world
        self.user_ids = pa.array(users.ids, pa.string())
        self.item_ids = item_id_array(world.catalog.n_items)
        self.group_names = pa.array(list(S.EXPLORE_GROUPS), pa.string())
        self.groups = groups
        self.has_sid = has_sid
        self.include_truth = include_truth
        self.schema = S.impression_log_arrow_schema(world.fusion.names)
        if include_truth:
            self.schema = (self.schema.append(pa.field(TRUE_SESSION_ID, pa.string(), False))
                           .append(pa.field(TRUE_STEP, pa.int32(), False))
                           .append(pa.field(TRUE_STATE, pa.list_(pa.float32()), False)))

    def table(self, out: Outcome, day: dt.date) -> pa.Table:
        """Impression rows of the sessions recorded in ``out`` (sessions started on ``day``)."""
        if not out.steps:
            return self.schema.empty_table()
        world, k = self.world, self.world.k
        steps = out.steps
        l_page = steps[0].items.shape[1]
        # Request level: n_req rows, ordered by user then time.
        rows = np.concatenate([s.pos for s in steps])
        ts_us = np.concatenate([s.ts_us for s in steps])
        order = np.lexsort((ts_us, rows))
        rows, ts_us = rows[order], ts_us[order]
        session = np.concatenate([s.session for s in steps])[order]
        step = np.concatenate([s.step for s in steps])[order]
        actions = np.concatenate([s.actions for s in steps])[order]
        logp = np.concatenate([s.logp for s in steps])[order]
        n_req = rows.shape[0]

        def per_item(name: str) -> np.ndarray:   # (n_req, l, ...) -> (n_req * l, ...)
            a = np.concatenate([getattr(s, name) for s in steps])[order]
            return a.reshape(n_req * l_page, *a.shape[2:])

        items = per_item("items")
        uid = self.user_ids.take(pa.array(rows))
        session_key = pc.binary_join_element_wise(
            uid, day.strftime("%Y%m%d"), pc.cast(pa.array(session), pa.string()), "-")
        request_id = pc.binary_join_element_wise(
            session_key, pc.utf8_lpad(pc.cast(pa.array(step), pa.string()), 3, "0"), "-")
        weights = action_to_weights(actions, world.fusion.lo, world.fusion.hi)
        offsets = pa.array(np.arange(0, n_req * k + 1, k, dtype=np.int32))
        req_cols = {
            S.USER_ID: uid,
            S.REQUEST_ID: request_id,
            S.FUSION_WEIGHTS: pa.ListArray.from_arrays(
                offsets, pa.array(weights.ravel()), type=self.schema.field(S.FUSION_WEIGHTS).type),
            S.EXPLORE_GROUP: self.group_names.take(pa.array(self.groups[rows])),
            S.ACTION_LOGP: pa.array(logp, pa.float64(), from_pandas=True),  # NaN -> null
            S.APP_SESSION_ID: pc.if_else(pa.array(self.has_sid[rows]), session_key,
                                         pa.scalar(None, pa.string())),
        }
        if self.include_truth:
            states = np.concatenate([s.states for s in steps])[order]
            req_cols[TRUE_SESSION_ID] = session_key
            req_cols[TRUE_STEP] = pa.array(step)
            req_cols[TRUE_STATE] = pa.ListArray.from_arrays(
                pa.array(np.arange(0, states.size + 1, states.shape[1], dtype=np.int32)),
                pa.array(states.ravel()))
        # Impression level: request r -> rows r * l .. r * l + l - 1, in position order.
        rep = pa.array(np.repeat(np.arange(n_req), l_page))
        cols = {name: col.take(rep) for name, col in req_cols.items()}
        position = np.tile(np.arange(l_page, dtype=np.int32), n_req)
        ts_imp = np.repeat(ts_us, l_page)
        cols[S.EVENT_ID] = pc.binary_join_element_wise(
            cols[S.REQUEST_ID], pc.cast(pa.array(position), pa.string()), "-")
        cols[S.TS] = pa.array(ts_imp, S.TS_ARROW)
        cols[S.DS] = pa.array((ts_imp // _US_PER_DAY).astype(np.int32), pa.date32())
        cols[S.ITEM_ID] = self.item_ids.take(pa.array(items))
        cols[S.POSITION] = pa.array(position)
        preds = per_item("preds")
        for j, task in enumerate(world.fusion.names):
            cols[S.pred_column(task)] = pa.array(preds[:, j])
        cols[S.PLAY_TIME_S] = pa.array(per_item("play_time_s"))
        cols[S.DURATION_S] = pa.array(world.catalog.duration_s[items])
        for name in S.INTERACTION_COLUMNS:
            cols[name] = pa.array(per_item(name).astype(np.int32))
        return pa.Table.from_arrays([cols[f.name] for f in self.schema], schema=self.schema)


@dataclass(frozen=True)
class SimLogs:
    """In-process simulator output: Arrow tables in the contract schemas."""

    impressions: pa.Table
    profiles: pa.Table


def simulate_logs(world: World, base_policy: Policy | None = None, *,
                  shards: Sequence[int] | None = None, include_truth: bool = False) -> SimLogs:
    """Simulate every day of ``shards`` (default: all) in this process, for small runs/tests.

    Rows come shard by shard, day by day; the Spark job produces the same rows (in another
    order) for the same config.
    """
    shards = range(world.sim.n_shards) if shards is None else shards
    impressions, profiles = [], []
    for shard in shards:
        impressions += [t for _, t in simulate_shard(world, shard, base_policy,
                                                     include_truth=include_truth)]
        profiles.append(profiles_table(world, shard))
    imp = pa.concat_tables(impressions)
    logger.info("simulated %d impressions of %d users (%d shards, %d days) in-process",
                imp.num_rows, sum(p.num_rows for p in profiles), len(profiles),
                world.sim.n_days)
    return SimLogs(impressions=imp, profiles=pa.concat_tables(profiles))
