"""Parity: the Spark state features equal mtf.features.compute_states (the numpy reference).

Seeded random logs cover first requests, histories longer than history_len and recent_len,
session boundaries (gap and app session id), midnight, pages of 1..6 items and zero-length
items. The Spark side runs the pure chain (no Delta I/O); the reference gets the sessions the
Spark job assigned (compute_states takes them as input) and the same profiles.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtf.config import load_config
from mtf import contract as S
from mtf.etl.pipeline import RunWindow, build_requests, finish_transitions
from mtf.features import compute_states
from tests.etl.logs import logs_df
from tests.etl.randlogs import random_logs

PROFILES = pd.DataFrame({"user_id": ["u0", "u1", "u2", "x1"], "age": [0.1, 0.2, np.nan, 0.4],
                         "activity": [0.5, 0.5, 0.5, 0.5], "tenure": [1.0, 2.0, 3.0, 4.0],
                         "gender": [0.0, 1.0, 0.0, 1.0]})


def _spark_states(spark, rows: list[dict], overrides: list[str]) -> tuple[pd.DataFrame, object]:
    cfg = load_config(None, overrides)
    days = sorted({r[S.DS] for r in rows})
    window = RunWindow(days[0], days[-1], None, True, cfg.etl.session_gap_s)
    profiles = spark.createDataFrame(PROFILES)
    requests = build_requests(logs_df(spark, rows), etl=cfg.etl, features=cfg.features,
                              fusion=cfg.fusion, reward=cfg.reward, window=window)
    out = finish_transitions(requests, profiles, etl=cfg.etl, features=cfg.features,
                             fusion=cfg.fusion)
    got = out.select(S.USER_ID, S.TS, S.SESSION_ID, S.STEP, S.STATE, S.NEXT_STATE,
                     S.IS_TERMINAL, S.IS_TRUNCATED).toPandas()
    got[S.TS] = pd.to_datetime(got[S.TS], utc=True)
    return got, cfg


def _reference(rows: list[dict], got: pd.DataFrame, cfg) -> pd.DataFrame:
    imps = pd.DataFrame(rows)
    imps[S.TS] = pd.to_datetime(imps[S.TS], utc=True)
    imps = imps.merge(got[[S.USER_ID, S.TS, S.SESSION_ID, S.STEP]], on=[S.USER_ID, S.TS],
                      how="left", validate="many_to_one")
    assert imps[S.SESSION_ID].notna().all()
    ref = compute_states(cfg.features, imps, PROFILES)
    firsts = imps.drop_duplicates([S.USER_ID, S.REQUEST_ID])[[S.USER_ID, S.REQUEST_ID, S.TS]]
    return ref.merge(firsts, on=[S.USER_ID, S.REQUEST_ID])


@pytest.mark.parametrize("overrides, arrow_batch", [
    ([], 10_000),  # the defaults: history 500, recent 32, decay 0.9
    ([], 37),      # Arrow batches of 37 rows: users and pages carried across batches
    (["features.history_len=7", "features.recent_len=4", "features.decay=0.5",
      "features.sess_step_cap=3"], 10_000),
], ids=["defaults", "small-arrow-batches", "short-windows"])
def test_spark_states_equal_numpy_reference(spark, overrides: list[str],
                                            arrow_batch: int) -> None:
    rows = (random_logs(seed=11, n_users=4, max_requests=40, long_user_imps=1200)
            + random_logs(seed=12, n_users=3, max_requests=25, user_prefix="x"))
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, str(arrow_batch))
    try:
        got, cfg = _spark_states(spark, rows, overrides)
    finally:
        spark.conf.set(key, old)
    ref = _reference(rows, got, cfg)
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
    n_checked = 0
    for row in both.itertuples():
        nxt = by_key.get((row.user_id, row.session_id, row.step + 1))
        if row.is_terminal:
            assert nxt is None and not row.is_truncated
            assert not np.any(row.next_state)
        elif not row.is_truncated:
            np.testing.assert_array_equal(row.next_state, nxt)
            n_checked += 1
        else:
            assert nxt is None
    assert n_checked > 50
