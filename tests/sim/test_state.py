"""The incremental StateTracker equals the reference mtf.features.compute_states."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtf.features import BEHAVIOURS, FeatureConfig, compute_states
from mtf.sim.generate import TRUE_SESSION_ID, TRUE_STATE, TRUE_STEP, SimLogs, simulate_logs
from mtf.sim.state import StateTracker
from mtf.sim.world import World

from .conftest import SMALL_SIM, small_world


def _reference(features: FeatureConfig, logs: SimLogs) -> tuple[np.ndarray, np.ndarray]:
    """(reference states, simulator states) per request, aligned by request_id."""
    df = logs.impressions.to_pandas()
    df["session_id"] = df[TRUE_SESSION_ID]
    df["step"] = df[TRUE_STEP]
    # compute_states converts ts with numpy; tz-aware values trigger a pandas deprecation
    # (reported to the features owner), so hand it the same instants as naive UTC.
    df["ts"] = df["ts"].dt.tz_convert(None)
    ref = compute_states(features, df, logs.profiles.to_pandas())
    sim = df.groupby("request_id")[TRUE_STATE].first().loc[ref["request_id"]]
    return np.stack(ref["state"].to_numpy()), np.stack(sim.to_numpy())


def test_states_the_policy_saw_equal_the_reference_on_the_written_logs(world: World,
                                                                       logs: SimLogs) -> None:
    ref, sim = _reference(world.features, logs)
    assert ref.shape == (logs.impressions.num_rows // world.sim.session.page_size,
                         world.features.state_dim)
    np.testing.assert_allclose(sim, ref, rtol=0, atol=1e-6)
    # The logs are long enough for every feature to vary (no vacuous parity).
    assert np.all(ref.std(axis=0) > 0)


@pytest.mark.parametrize("features", [
    # Windows shorter than a page and than the recent window: exercises eviction.
    FeatureConfig(history_len=4, recent_len=9, decay=0.7, sess_step_cap=3),
    FeatureConfig(history_len=40, recent_len=8, decay=1.0, finish_ratio=0.5, skip_s=2.75,
                  play_cap_s=20.0, profile_columns=("activity", "age")),
])
def test_parity_with_other_feature_definitions(features: FeatureConfig) -> None:
    world = small_world(n_users=120, users_per_shard=60, n_days=2)
    world = type(world).build(sim=world.sim, features=features, seed=5)
    logs = simulate_logs(world, include_truth=True)
    ref, sim = _reference(features, logs)
    np.testing.assert_allclose(sim, ref, rtol=0, atol=1e-6)


def test_tracker_by_hand() -> None:
    cfg = FeatureConfig(history_len=2, recent_len=2, decay=0.5, sess_step_cap=4,
                        profile_columns=("age",))
    tracker = StateTracker(cfg, np.array([[0.25], [0.75]]))
    rows = np.array([0])
    first = tracker.states(rows, 0, np.array([0]))[0]
    names = cfg.feature_names
    assert first[names.index("profile_age")] == 0.25
    assert first[names.index("hist_count")] == 0.0
    assert first[names.index("gap_prev_request")] == 1.0
    nb = len(BEHAVIOURS)
    liked = BEHAVIOURS.index("liked")
    page = np.zeros((1, 3, nb))
    page[0, :, liked] = [1.0, 0.0, 1.0]   # impressions in position order
    tracker.start_session(rows)
    tracker.push(rows, np.array([0]), page)
    hour = 3_600_000_000
    s = tracker.states(rows, 1, np.array([hour]))[0]
    assert s[names.index("hist_count")] == pytest.approx(1.0)          # window full: 2 of 2
    assert s[names.index("hist_mean_liked")] == pytest.approx(0.5)     # last two: 0, 1
    assert s[names.index("recent_liked")] == pytest.approx(1.0 / 1.5)  # (1 + 0.5 * 0) / 1.5
    assert s[names.index("sess_step")] == pytest.approx(0.25)
    assert s[names.index("gap_prev_request")] == pytest.approx(np.log1p(1.0) / np.log1p(168.0))
    other = tracker.states(np.array([1]), 0, np.array([hour]))[0]    # user 1 untouched
    assert other[names.index("hist_count")] == 0.0


def test_tracker_rejects_a_bad_page_shape() -> None:
    tracker = StateTracker(FeatureConfig(), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"behaviours must be \(n_rows, page, 8\)"):
        tracker.push(np.array([0]), np.array([0]), np.zeros((1, 6, 3)))


def test_small_sim_is_the_fixture_config(world: World) -> None:
    assert world.sim == SMALL_SIM
    assert isinstance(pd.Timestamp(SMALL_SIM.start_date), pd.Timestamp)
