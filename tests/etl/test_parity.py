"""Parity: the Spark state features equal mtf.features.compute_states (the numpy reference).

Seeded random logs cover first requests, histories longer than history_len and recent_len,
session boundaries (gap and app session id), midnight, pages of 1..6 items and zero-length
items. The Spark side runs the pure chain (no Delta I/O); the reference gets the sessions the
Spark job assigned (compute_states takes them as input) and the same profiles: a static table,
or dated snapshots (point-in-time: the newest snapshot strictly before the request's day) that
change at midnight inside sessions, so next_state is checked across a profile change.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mtf.config import load_config
from mtf import contract as S
from mtf.etl.pipeline import RunWindow, build_requests, finish_transitions
from mtf.features import compute_states
from tests.etl.logs import DAY1, at, logs_df, page
from tests.etl.randlogs import random_logs

PROFILES = pd.DataFrame({"user_id": ["u0", "u1", "u2", "x1"], "age": [0.1, 0.2, np.nan, 0.4],
                         "activity": [0.5, 0.5, 0.5, 0.5], "tenure": [1.0, 2.0, 3.0, 4.0],
                         "gender": [0.0, 1.0, 0.0, 1.0]})
D0, D2 = DAY1 - dt.timedelta(days=1), DAY1 + dt.timedelta(days=1)
# Dated snapshots (the logs cover DAY1 and D2): u0 and m change at DAY1 (seen from D2 on); u1
# has two rows for DAY1 (per-column max); u2's first snapshot is DAY1 (D1 requests: zeros);
# x1's only one is D2 (never before a request's day); x0 has none.
SNAPSHOTS = pd.DataFrame({
    "user_id": ["u0", "u0", "u1", "u1", "u1", "u2", "x1", "x2", "m", "m"],
    "snapshot_ds": [D0, DAY1, D0, DAY1, DAY1, DAY1, D2, D0 - dt.timedelta(days=3), D0, DAY1],
    "age": [0.1, 0.15, 0.2, 0.3, 0.25, np.nan, 0.4, 0.5, 0.6, 0.7],
    "activity": [0.5, 0.9, 0.5, 0.1, 0.2, 0.3, 0.5, 0.5, 0.2, 0.8],
    "tenure": [1.0, 2.0, 2.0, 3.0, 4.0, 3.0, 4.0, 5.0, 6.0, 7.0],
    "gender": [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]})


def _spark_states(spark, rows: list[dict], overrides: list[str], profile_table: pd.DataFrame
                  ) -> tuple[pd.DataFrame, object]:
    cfg = load_config(None, overrides)
    days = sorted({r[S.DS] for r in rows})
    window = RunWindow(days[0], days[-1], None, True, cfg.etl.session_gap_s)
    profiles = spark.createDataFrame(profile_table)
    requests = build_requests(logs_df(spark, rows), etl=cfg.etl, features=cfg.features,
                              fusion=cfg.fusion, reward=cfg.reward, window=window)
    out = finish_transitions(requests, profiles, etl=cfg.etl, features=cfg.features,
                             fusion=cfg.fusion)
    got = out.select(S.USER_ID, S.TS, S.SESSION_ID, S.STEP, S.STATE, S.NEXT_STATE,
                     S.IS_TERMINAL, S.IS_TRUNCATED).toPandas()
    got[S.TS] = pd.to_datetime(got[S.TS], utc=True)
    return got, cfg


def _reference(rows: list[dict], got: pd.DataFrame, cfg, profiles: pd.DataFrame
               ) -> pd.DataFrame:
    imps = pd.DataFrame(rows)
    imps[S.TS] = pd.to_datetime(imps[S.TS], utc=True)
    imps = imps.merge(got[[S.USER_ID, S.TS, S.SESSION_ID, S.STEP]], on=[S.USER_ID, S.TS],
                      how="left", validate="many_to_one")
    assert imps[S.SESSION_ID].notna().all()
    ref = compute_states(cfg.features, imps, profiles)
    firsts = imps.drop_duplicates([S.USER_ID, S.REQUEST_ID])[[S.USER_ID, S.REQUEST_ID, S.TS]]
    return ref.merge(firsts, on=[S.USER_ID, S.REQUEST_ID])


@pytest.mark.parametrize("overrides, arrow_batch, profiles", [
    ([], 10_000, PROFILES),  # the defaults: history 500, recent 32, decay 0.9
    ([], 37, PROFILES),      # Arrow batches of 37 rows: users and pages carried across batches
    (["features.history_len=7", "features.recent_len=4", "features.decay=0.5",
      "features.sess_step_cap=3"], 10_000, PROFILES),
    ([], 10_000, SNAPSHOTS),  # point-in-time profiles
], ids=["defaults", "small-arrow-batches", "short-windows", "profile-snapshots"])
def test_spark_states_equal_numpy_reference(spark, overrides: list[str], arrow_batch: int,
                                            profiles: pd.DataFrame) -> None:
    rows = (random_logs(seed=11, n_users=4, max_requests=40, long_user_imps=1200)
            + random_logs(seed=12, n_users=3, max_requests=25, user_prefix="x")
            # user m: one session across midnight (23:50, 23:55, 00:05, 00:10)
            + [r for i, t in enumerate([at(DAY1, 23, 50), at(DAY1, 23, 55), at(D2, 0, 5),
                                        at(D2, 0, 10)]) for r in page("m", f"m{i}", t)])
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, str(arrow_batch))
    try:
        got, cfg = _spark_states(spark, rows, overrides, profiles)
    finally:
        spark.conf.set(key, old)
    ref = _reference(rows, got, cfg, profiles)
    both = got.merge(ref, on=[S.USER_ID, S.TS], suffixes=("", "_ref"), validate="one_to_one")
    assert len(both) == len(got) == len(ref) > 100
    assert (both[S.SESSION_ID] == both[f"{S.SESSION_ID}_ref"]).all()
    spark_states = np.stack(both[S.STATE].to_numpy())
    ref_states = np.stack(both[f"{S.STATE}_ref"].to_numpy())
    assert spark_states.shape[1] == len(cfg.features.feature_names)
    np.testing.assert_allclose(spark_states, ref_states, rtol=1e-6, atol=1e-6)
    # Not a vacuous comparison: every feature varies across requests.
    assert (ref_states.std(axis=0) > 0).sum() >= len(cfg.features.feature_names) - 1

    # next_state: the next step's state in the session, zeros when terminal.
    by_key = {(u, sid, st): s for u, sid, st, s in
              zip(both[S.USER_ID], both[S.SESSION_ID], both[S.STEP], both[S.STATE])}
    n_checked = n_profile_changes = 0
    n_prof = len(cfg.features.profile_columns)
    for row in both.itertuples():
        nxt = by_key.get((row.user_id, row.session_id, row.step + 1))
        if row.is_terminal:
            assert nxt is None and not row.is_truncated
            assert not np.any(row.next_state)
        elif not row.is_truncated:
            np.testing.assert_array_equal(row.next_state, nxt)
            n_checked += 1
            n_profile_changes += not np.array_equal(row.state[:n_prof], nxt[:n_prof])
        else:
            assert nxt is None
    assert n_checked > 50
    # A static profile never changes within a session; with snapshots some sessions cross
    # midnight into a newer snapshot (user m at least).
    if S.SNAPSHOT_DS in profiles.columns:
        assert n_profile_changes >= 1
    else:
        assert n_profile_changes == 0
