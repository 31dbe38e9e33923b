"""mtf.etl.user_pass: the ordered per-user pass from impressions to request rows.

No Spark here: :func:`request_rows` is numpy over Arrow batches. Exact values on hand-built
users, and (property) the output does not depend on where the batches are cut, which is what
carries a user, a page and a session across batches. The Spark path is covered by
tests/etl/test_parity.py and the job tests.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtf import contract as S
from mtf.etl.sessionize import session_id
from mtf.etl.state import NEXT_CORE, PREV_TS, STATE_CORE
from mtf.etl.user_pass import (APP_SID_HASH, DWELL_S, IS_SENTINEL, N_ITEMS, RAW_PLAY_TIME_NORM,
                               SESSION_START_TS, fb_col, request_rows)
from mtf.features import FeatureConfig

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
PASSTHROUGH = (S.USER_ID, S.TS, S.DS, IS_SENTINEL, S.ACTION_LOGP)
SHORT = FeatureConfig(history_len=3, recent_len=2, decay=0.5, sess_step_cap=4)
GAP_S = 1800.0


def _core_index(features: FeatureConfig) -> dict[str, int]:
    names = [n for n in features.feature_names if not n.startswith("profile_")]
    return {n: i for i, n in enumerate(names)}


def _table(pages: list[tuple], liked: list[int] | None = None) -> pa.Table:
    """Sorted impressions. A page: (user, minute, play times[, app sid[, sentinel]]);
    duration 10 s, so play_ratio = play / 10."""
    rows = []
    for r, (user, minute, plays, *rest) in enumerate(pages):
        sid = rest[0] if rest else None
        sentinel = rest[1] if len(rest) > 1 else False
        for play in plays:
            rows.append((user, T0 + dt.timedelta(minutes=minute),
                         None if sentinel else f"r{r:04d}", play, sid, sentinel))
    n = len(rows)
    liked = liked if liked is not None else [0] * n
    return pa.table({
        S.USER_ID: [r[0] for r in rows],
        S.TS: pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
        S.REQUEST_ID: pa.array([r[2] for r in rows], pa.string()),
        S.DS: pa.array([T0.date()] * n, pa.date32()),
        IS_SENTINEL: [r[5] for r in rows],
        APP_SID_HASH: pa.array([r[4] for r in rows], pa.int64()),
        S.ACTION_LOGP: pa.array([float(i) for i in range(n)]),
        S.PLAY_TIME_S: pa.array([r[3] for r in rows], pa.float64()),
        S.DURATION_S: pa.array([10.0] * n),
        S.LIKED: pa.array(liked, pa.int32()),
        **{c: pa.array([0] * n, pa.int32()) for c in S.INTERACTION_COLUMNS if c != S.LIKED},
        RAW_PLAY_TIME_NORM: pa.array([min(r[3] / 60.0, 1.0) for r in rows]),
    })


def _run(table: pa.Table, cuts: list[int], features: FeatureConfig = SHORT) -> pa.Table:
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < table.num_rows), table.num_rows]
    batches = [b for lo, hi in zip(bounds[:-1], bounds[1:])
               for b in table.slice(lo, hi - lo).to_batches()]
    out = list(request_rows(batches, features=features, gap_s=GAP_S, passthrough=PASSTHROUGH))
    return pa.Table.from_batches(out)


def _core(got: pa.Table, name: str, features: FeatureConfig = SHORT) -> list[float]:
    i = _core_index(features)[name]
    return [s[i] for s in got[STATE_CORE].to_pylist()]


def test_pages_sums_and_state_of_a_hand_built_user() -> None:
    # One user, pages of 2, 3 and 1 items at minutes 0, 1, 2; liked on impressions 0, 2, 3.
    # H = 3, W = 2, decay 0.5.
    table = _table([("u", 0, [1.0, 2.0]), ("u", 1, [3.0, 4.0, 5.0]), ("u", 2, [6.0])],
                   liked=[1, 0, 1, 1, 0, 0])
    got = _run(table, [])
    assert got[N_ITEMS].to_pylist() == [2, 3, 1]
    assert got[DWELL_S].to_pylist() == [3.0, 12.0, 6.0]
    assert got[fb_col("liked")].to_pylist() == [1.0, 2.0, 0.0]
    assert got[fb_col("play_ratio")].to_pylist() == pytest.approx([0.3, 1.2, 0.6])
    assert got[S.ACTION_LOGP].to_pylist() == [0.0, 2.0, 5.0]      # first impression's value
    # hist over the last 3 impressions: request 1 sees idx 0-1, request 2 idx 2-4
    assert _core(got, "hist_mean_liked") == pytest.approx([0.0, 0.5, 2 / 3])
    assert _core(got, "hist_count") == pytest.approx([0.0, np.log1p(2) / np.log1p(3), 1.0])
    # decayed last 2, divided by the weights present: (0 + 0.5 * 1) / 1.5 at idx 5
    assert _core(got, "recent_liked") == pytest.approx([0.0, 0.5 / 1.5, 0.5 / 1.5])
    assert _core(got, "recent_play_ratio") == pytest.approx([0.0, 0.25 / 1.5, 0.7 / 1.5])
    # one session: steps 0, 1, 2; session mean play ratio over the earlier requests' items
    assert got[S.STEP].to_pylist() == [0, 1, 2]
    assert got[S.SESSION_ID].to_pylist() == [session_id("u", int(T0.timestamp() * 1e6),
                                                        "r0000")] * 3
    assert _core(got, "sess_step") == pytest.approx([0.0, 0.25, 0.5])
    assert _core(got, "sess_mean_play_ratio") == pytest.approx([0.0, 0.15, 0.3])
    one_minute = np.log1p(1 / 60) / np.log1p(168)
    assert _core(got, "gap_prev_request") == pytest.approx([1.0, one_minute, one_minute])
    # next state: the next request's state; the last one is terminal
    assert got[S.IS_TERMINAL].to_pylist() == [False, False, True]
    assert got[S.IS_TRUNCATED].to_pylist() == [False, False, False]
    states = got[STATE_CORE].to_pylist()
    assert got[NEXT_CORE].to_pylist() == [states[1], states[2], None]
    assert got[PREV_TS].to_pylist()[0] is None


def test_sessions_split_on_gap_and_app_session_id() -> None:
    table = _table([("u", 0, [1.0]), ("u", 30, [1.0]),        # gap of exactly 1800 s: same
                    ("u", 61, [1.0]),                           # 31 min: new session
                    ("u", 62, [1.0], 7), ("u", 63, [1.0], 8),   # app ids differ: new session
                    ("u", 64, [1.0]),                           # no id: continues
                    ("v", 64, [1.0])])                          # another user: new
    got = _run(table, [])
    assert got[S.STEP].to_pylist() == [0, 1, 0, 1, 0, 1, 0]
    sids = got[S.SESSION_ID].to_pylist()
    assert len(set(sids)) == 4 and sids[0] == sids[1] and sids[2] == sids[3]
    assert got[S.IS_TERMINAL].to_pylist() == [False, True, False, True, False, True, True]
    starts = got[SESSION_START_TS].to_pylist()
    assert starts[3] == T0 + dt.timedelta(minutes=61)


def test_the_sentinel_makes_the_open_session_truncated() -> None:
    table = _table([("u", 0, [1.0, 2.0]), ("u", 20, [1.0], None, True),   # session open
                    ("v", 0, [1.0]), ("v", 40, [1.0], None, True)])       # v's ended
    got = _run(table, [])
    assert got[IS_SENTINEL].to_pylist() == [False, True, False, True]
    assert got[S.IS_TRUNCATED].to_pylist() == [True, False, False, False]
    assert got[S.IS_TERMINAL].to_pylist() == [False, True, True, True]
    states = got[STATE_CORE].to_pylist()
    assert got[NEXT_CORE].to_pylist()[0] == states[1]   # the state at data_end


@st.composite
def _pages(draw) -> tuple[list[tuple], list[int], list[int]]:
    pages = []
    for u in range(draw(st.integers(1, 4))):
        minute = 0
        for _ in range(draw(st.integers(1, 6))):
            minute += draw(st.sampled_from([0, 1, 29, 31]))   # 0: same ts, next request id
            size = draw(st.sampled_from([1, 2, 3, 9]))
            pages.append((f"u{u}", minute, [draw(st.sampled_from([0.0, 1.0, 2.5, 9.0, 30.0]))
                                            for _ in range(size)],
                          draw(st.sampled_from([None, None, 1, 2]))))
        if draw(st.booleans()):
            pages.append((f"u{u}", minute + 20, [0.0], None, True))
    n = sum(len(p[2]) for p in pages)
    liked = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))
    return pages, liked, cuts


def _assert_same(a: pa.Table, b: pa.Table) -> None:
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].to_pylist(), b[name].to_pylist()
        if name in (STATE_CORE, NEXT_CORE):
            assert [v is None for v in x] == [v is None for v in y], name
            x = [v for v in x if v is not None]
            y = [v for v in y if v is not None]
        if x and isinstance(x[0], (float, list)):
            np.testing.assert_allclose(np.asarray(x, dtype=float), np.asarray(y, dtype=float),
                                       rtol=1e-12, atol=1e-12, err_msg=name)
        else:
            assert x == y, name


@settings(max_examples=60, deadline=None)
@given(_pages(), st.sampled_from([SHORT, FeatureConfig(history_len=2, recent_len=5, decay=0.9)]))
def test_output_does_not_depend_on_batch_cuts(case, features: FeatureConfig) -> None:
    pages, liked, cuts = case
    table = _table(pages, liked)
    whole = _run(table, [], features)
    assert whole.num_rows == len(pages)
    _assert_same(whole, _run(table, cuts, features))
    _assert_same(whole, _run(table, list(range(1, table.num_rows)), features))


def test_long_user_matches_a_direct_computation() -> None:
    # More than H impressions, cut into many batches: the history and recent features equal
    # means over the explicit index ranges.
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 8, 60)
    liked = rng.integers(0, 2, int(sizes.sum()))
    pages = [("u", i, [2.0] * int(s)) for i, s in enumerate(sizes)]
    features = FeatureConfig(history_len=40, recent_len=6, decay=0.8)
    got = _run(_table(pages, list(liked)), list(range(0, liked.size, 11)), features)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    b = liked.astype(float)
    hist = _core(got, "hist_mean_liked", features)
    recent = _core(got, "recent_liked", features)
    for i, s in enumerate(starts[1:], start=1):
        assert hist[i] == pytest.approx(b[max(0, s - 40):s].mean())
        ages = [a for a in range(6) if s - 1 - a >= 0]
        assert recent[i] == pytest.approx(sum(0.8 ** a * b[s - 1 - a] for a in ages)
                                          / sum(0.8 ** a for a in ages))
