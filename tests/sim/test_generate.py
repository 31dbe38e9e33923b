"""In-process log generation: determinism, contract conformance, sessions and exploration."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from mtf.fusion import weights_to_action
from mtf.reward import impression_reward
from mtf import contract as S
from mtf.sim.generate import (TRUE_SESSION_ID, TRUE_STATE, TRUE_STEP, SimLogs, simulate_logs,
                              simulate_shard)
from mtf.sim.logging_policy import truncated_normal_logpdf
from mtf.sim.policies import FixedPolicy
from mtf.sim.world import World

from .conftest import SMALL_SIM, small_world

GAP_S = 1800  # the ETL's inactivity gap


def _requests(df: pd.DataFrame) -> pd.DataFrame:
    """One row per request, in user/time order, with the gap to the user's previous request."""
    req = (df.groupby(S.REQUEST_ID, sort=False)
           .agg(user_id=(S.USER_ID, "first"), ts=(S.TS, "first"),
                session=(TRUE_SESSION_ID, "first"), step=(TRUE_STEP, "first"),
                app=(S.APP_SESSION_ID, "first"), group=(S.EXPLORE_GROUP, "first"),
                logp=(S.ACTION_LOGP, "first"), w=(S.FUSION_WEIGHTS, "first"),
                n=(S.POSITION, "size"))
           .sort_values(["user_id", "ts"]).reset_index())
    req["gap_s"] = req.groupby("user_id")["ts"].diff().dt.total_seconds()
    req["new_session"] = req["session"] != req.groupby("user_id")["session"].shift()
    return req


@pytest.fixture(scope="module")
def requests(log_df: pd.DataFrame) -> pd.DataFrame:
    return _requests(log_df)


def test_same_seed_same_logs_other_seed_other_logs(world: World, logs: SimLogs) -> None:
    again = simulate_logs(World.build(sim=world.sim, seed=world.seed), include_truth=True)
    assert again.impressions.equals(logs.impressions)
    assert again.profiles.equals(logs.profiles)
    other = simulate_logs(World.build(sim=world.sim, seed=world.seed + 1))
    assert not other.impressions.slice(0, 1000).equals(logs.impressions.slice(0, 1000))


def test_a_shard_does_not_depend_on_the_others(world: World, logs: SimLogs) -> None:
    alone = simulate_logs(world, shards=[2], include_truth=True).impressions
    users = pc.is_in(logs.impressions[S.USER_ID], alone[S.USER_ID].unique())
    assert logs.impressions.filter(users).equals(alone)


def test_schema_and_nullability(world: World, logs: SimLogs) -> None:
    contract = S.impression_log_arrow_schema(world.fusion.names)
    imp = logs.impressions.select(contract.names)
    assert imp.schema.equals(contract)
    for field in contract:
        if not field.nullable:
            assert imp[field.name].null_count == 0, field.name
    assert logs.profiles.schema.equals(S.user_profile_arrow_schema())
    assert logs.profiles.num_rows == world.sim.n_users


def test_contract_values(world: World, log_df: pd.DataFrame) -> None:
    df = log_df
    assert df[S.EVENT_ID].is_unique
    assert (df[S.DS] == df[S.TS].dt.date).all()
    preds = df[[S.pred_column(t) for t in world.fusion.names]].to_numpy()
    assert np.all((preds > 0.0) & (preds < 1.0))
    w = np.stack(df[S.FUSION_WEIGHTS].to_numpy())
    assert w.shape[1] == world.k
    assert np.all((w >= world.fusion.lo) & (w <= world.fusion.hi))
    for col in S.INTERACTION_COLUMNS:
        assert set(df[col].unique()) <= {0, 1}
    assert (df[S.PLAY_TIME_S] >= 0).all()
    assert (df[S.PLAY_TIME_S] <= df[S.DURATION_S]).all()
    pages = df.groupby(S.REQUEST_ID)[S.POSITION].agg(["min", "max", "size", "nunique"])
    l_page = world.sim.session.page_size
    assert (pages["min"] == 0).all() and (pages["max"] == l_page - 1).all()
    assert (pages["nunique"] == l_page).all()
    items = df.groupby(S.REQUEST_ID)[S.ITEM_ID].nunique()
    assert (items == l_page).all()  # no item twice on a page
    assert set(df[S.EXPLORE_GROUP].unique()) == set(S.EXPLORE_GROUPS)


def test_window_is_exactly_the_simulated_days(log_df: pd.DataFrame) -> None:
    days = sorted(log_df[S.DS].unique())
    start = SMALL_SIM.start
    assert days == [start + dt.timedelta(days=d) for d in range(SMALL_SIM.n_days)]


def test_request_times_increase_and_sessions_separate_by_gap(requests: pd.DataFrame) -> None:
    within = requests.loc[~requests["new_session"], "gap_s"]
    between = requests.loc[requests["new_session"], "gap_s"].dropna()
    assert (within > 0).all() and within.max() < GAP_S
    assert between.min() > GAP_S
    assert (requests.loc[requests["new_session"], "step"] == 0).all()
    steps = requests.groupby("session")["step"].agg(["max", "size"])
    assert (steps["max"] + 1 == steps["size"]).all()   # steps 0..n-1, none missing


def test_some_sessions_span_midnight_and_users_return_across_days(
        log_df: pd.DataFrame) -> None:
    per_session = log_df.groupby(TRUE_SESSION_ID)[S.DS].nunique()
    assert (per_session > 1).sum() >= 1
    per_user = log_df.groupby(S.USER_ID)[S.DS].nunique()
    assert (per_user == SMALL_SIM.n_days).mean() > 0.2


def test_app_session_id_for_most_but_not_all_users(requests: pd.DataFrame) -> None:
    by_user = requests.groupby("user_id")["app"].agg(lambda s: s.notna().all() or s.isna().all())
    assert by_user.all()   # a user either always or never carries the id
    share = requests.groupby("user_id")["app"].first().notna().mean()
    assert share == pytest.approx(SMALL_SIM.session.app_session_id_share, abs=0.06)
    with_id = requests.dropna(subset=["app"])
    assert (with_id["app"] == with_id["session"]).all()


def test_group_shares_and_logged_densities(world: World, requests: pd.DataFrame) -> None:
    expl = world.serving
    shares = requests.groupby("user_id")["group"].first().value_counts(normalize=True)
    tol = 3 * math.sqrt(0.25 / world.sim.n_users)
    assert shares["noise"] == pytest.approx(expl.noise_share, abs=tol)
    assert shares["random"] == pytest.approx(expl.random_share, abs=tol)
    assert requests.groupby("user_id")["group"].nunique().max() == 1
    assert requests.loc[requests["group"] == "exploit", "logp"].isna().all()
    assert requests.loc[requests["group"] != "exploit", "logp"].notna().all()
    # Recompute the density from the logged weights: base = the baseline action (fixed).
    a = weights_to_action(np.stack(requests["w"].to_numpy()), world.fusion.lo, world.fusion.hi)
    exploit = (requests["group"] == "exploit").to_numpy()
    np.testing.assert_allclose(a[exploit] - world.baseline_action, 0.0, atol=1e-12)
    for group, mu, sigma in (("noise", world.baseline_action, expl.noise_sigma),
                             ("random", 0.0, expl.random_sigma)):
        rows = (requests["group"] == group).to_numpy()
        want = truncated_normal_logpdf(a[rows], mu, sigma).sum(axis=1)
        np.testing.assert_allclose(requests.loc[rows, "logp"], want, rtol=1e-9, atol=1e-9)


def test_sessions_and_rewards_are_calibrated(world: World, log_df: pd.DataFrame,
                                             requests: pd.DataFrame) -> None:
    length = requests.groupby("session").size()
    assert 3.0 <= length.mean() <= 10.0
    stick, act = impression_reward(world.reward, log_df[S.PLAY_TIME_S], log_df[S.DURATION_S],
                                   log_df[S.LIKED], log_df[S.SHARED], log_df[S.COMMENTED],
                                   log_df[S.FOLLOWED])
    per_step = (stick + act).sum() / len(requests)
    assert 0.3 <= per_step <= 3.0


def test_a_state_dependent_base_policy_drives_the_logged_weights() -> None:
    world = small_world(n_users=40, users_per_shard=40, n_days=1)
    j = world.features.feature_names.index("sess_step")

    def ramp(states: np.ndarray) -> np.ndarray:   # action grows with the session step
        return np.repeat(np.clip(2.0 * states[:, j:j + 1] - 1.0, -1, 1), world.k, axis=1)

    df = next(simulate_shard(world, 0, ramp, include_truth=True))[1].to_pandas()
    exploit = df[df[S.EXPLORE_GROUP] == "exploit"]
    a = weights_to_action(np.stack(exploit[S.FUSION_WEIGHTS].to_numpy()), world.fusion.lo,
                          world.fusion.hi)
    want = ramp(np.stack(exploit[TRUE_STATE].to_numpy()))
    np.testing.assert_allclose(a, want, atol=1e-12)
    assert len(np.unique(a[:, 0])) > 3


def test_a_fixed_base_policy_other_than_the_baseline(world: World) -> None:
    base = np.full(world.k, 0.5)
    table = next(simulate_shard(world, 0, FixedPolicy(base)))[1]
    df = table.filter(pc.equal(table[S.EXPLORE_GROUP], "exploit")).to_pandas()
    a = weights_to_action(np.stack(df[S.FUSION_WEIGHTS].to_numpy()), world.fusion.lo,
                          world.fusion.hi)
    np.testing.assert_allclose(a, np.broadcast_to(base, a.shape), atol=1e-12)
