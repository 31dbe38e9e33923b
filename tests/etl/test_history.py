"""mtf.etl.history: the ordered per-partition pass from impressions to request rows.

No Spark here: :func:`request_rows` is numpy over Arrow batches. Exact sums on a hand-built
user, and (property) the output does not depend on where the batches are cut, which is what
carries a user across batches. The Spark path is covered by tests/etl/test_parity.py.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtf.etl import schema as S
from mtf.etl.history import (DWELL_S, IMP_START, IS_SENTINEL, N_ITEMS, RAW_PLAY_TIME_NORM,
                             fb_col, hist_cum_col, hist_lag_col, recent_col, request_rows,
                             sum_columns)
from mtf.features import BEHAVIOURS, FeatureConfig

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
PASSTHROUGH = (S.USER_ID, S.TS, S.REQUEST_ID, S.DS, IS_SENTINEL, S.ACTION_LOGP)
SHORT = FeatureConfig(history_len=3, recent_len=2, decay=0.5)


def _table(pages: list[tuple[str, list[float]]], liked: list[int] | None = None) -> pa.Table:
    """Sorted impressions: one (user, play times) per page, pages in order; duration 10 s."""
    rows = []
    for r, (user, plays) in enumerate(pages):
        for play in plays:
            rows.append((user, T0 + dt.timedelta(minutes=r), f"r{r:04d}", play))
    n = len(rows)
    liked = liked if liked is not None else [0] * n
    return pa.table({
        S.USER_ID: [u for u, *_ in rows],
        S.TS: pa.array([t for _, t, *_ in rows], pa.timestamp("us", tz="UTC")),
        S.REQUEST_ID: [q for _, _, q, _ in rows],
        S.DS: pa.array([T0.date()] * n, pa.date32()),
        IS_SENTINEL: [False] * n,
        S.ACTION_LOGP: pa.array([float(i) for i in range(n)]),
        S.PLAY_TIME_S: pa.array([p for *_, p in rows], pa.float64()),
        S.DURATION_S: pa.array([10.0] * n),
        S.LIKED: pa.array(liked, pa.int32()),
        **{c: pa.array([0] * n, pa.int32()) for c in S.INTERACTIONS if c != S.LIKED},
        RAW_PLAY_TIME_NORM: pa.array([min(p / 60.0, 1.0) for *_, p in rows]),
    })


def _run(table: pa.Table, cuts: list[int], features: FeatureConfig = SHORT) -> pa.Table:
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < table.num_rows), table.num_rows]
    batches = [b for lo, hi in zip(bounds[:-1], bounds[1:])
               for b in table.slice(lo, hi - lo).to_batches()]
    out = list(request_rows(batches, features=features, passthrough=PASSTHROUGH))
    return pa.Table.from_batches(out) if out else pa.table({})


def test_sums_of_a_hand_built_user() -> None:
    # One user, pages of 2, 3 and 1 items; liked = 1 on impressions 0, 2, 3.
    # H = 3, W = 2, decay 0.5.
    table = _table([("u", [1.0, 2.0]), ("u", [3.0, 4.0, 5.0]), ("u", [6.0])],
                   liked=[1, 0, 1, 1, 0, 0])
    got = _run(table, [])
    assert got[S.REQUEST_ID].to_pylist() == ["r0000", "r0001", "r0002"]
    assert got[IMP_START].to_pylist() == [0, 2, 5]
    assert got[N_ITEMS].to_pylist() == [2, 3, 1]
    assert got[DWELL_S].to_pylist() == [3.0, 12.0, 6.0]
    assert got[fb_col("liked")].to_pylist() == [1.0, 2.0, 0.0]
    assert got[S.ACTION_LOGP].to_pylist() == [0.0, 2.0, 5.0]      # first impression's value
    # liked before each request: all earlier (cx), before the last 3 (cl), decayed last 2 (rc)
    assert got[hist_cum_col("liked")].to_pylist() == [0.0, 1.0, 3.0]
    assert got[hist_lag_col("liked")].to_pylist() == [0.0, 0.0, 1.0]   # idx 5: before idx 2
    assert got[recent_col("liked")].to_pylist() == [0.0, 0.5, 0.5]     # idx 4: 0 + 0.5 * 1
    # play_ratio = play / 10: rc at idx 2 = 0.2 + 0.5 * 0.1, at idx 5 = 0.5 + 0.5 * 0.4
    assert got[recent_col("play_ratio")].to_pylist() == pytest.approx([0.0, 0.25, 0.7])


def test_a_new_user_starts_from_zero() -> None:
    table = _table([("a", [1.0] * 5), ("b", [2.0, 3.0])], liked=[1] * 7)
    got = _run(table, [])
    assert got[S.USER_ID].to_pylist() == ["a", "b"]
    assert got[IMP_START].to_pylist() == [0, 0]
    for c in sum_columns():
        assert got[c].to_pylist() == [0.0, 0.0], c


def test_the_sentinel_and_null_request_ids_split_requests() -> None:
    table = _table([("u", [1.0, 2.0])])
    sentinel = table.slice(0, 1).to_pylist()[0] | {
        S.TS: T0 + dt.timedelta(days=1), S.REQUEST_ID: None, IS_SENTINEL: True}
    table = pa.concat_tables([table, pa.Table.from_pylist([sentinel], schema=table.schema)])
    got = _run(table, [])
    assert got[IS_SENTINEL].to_pylist() == [False, True]
    assert got[IMP_START].to_pylist() == [0, 2]
    assert got[hist_cum_col("play_ratio")].to_pylist() == pytest.approx([0.0, 0.3])


@st.composite
def _pages(draw) -> tuple[list[tuple[str, list[float]]], list[int], list[int]]:
    n_users = draw(st.integers(1, 4))
    pages = []
    for u in range(n_users):
        for _ in range(draw(st.integers(1, 6))):
            size = draw(st.sampled_from([1, 2, 3, 9]))
            pages.append((f"u{u}", [draw(st.sampled_from([0.0, 1.0, 2.5, 9.0, 30.0]))
                                    for _ in range(size)]))
    n = sum(len(p) for _, p in pages)
    liked = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))
    return pages, liked, cuts


@settings(max_examples=60, deadline=None)
@given(_pages(), st.sampled_from([SHORT, FeatureConfig(history_len=2, recent_len=5, decay=0.9)]))
def test_output_does_not_depend_on_batch_cuts(case, features: FeatureConfig) -> None:
    pages, liked, cuts = case
    table = _table(pages, liked)
    whole = _run(table, [], features)
    cut = _run(table, cuts, features)
    every_row = _run(table, list(range(1, table.num_rows)), features)
    assert whole.num_rows == len(pages)
    for other in (cut, every_row):
        assert other.num_rows == whole.num_rows
        for name in whole.column_names:
            a, b = whole[name].to_pylist(), other[name].to_pylist()
            if isinstance(a[0], float):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
            else:
                assert a == b, name


def test_history_matches_a_direct_computation() -> None:
    # A long user (more than H impressions) cut into many batches: each request's sums equal
    # sums over the explicit index ranges.
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 8, 60)
    plays = rng.choice([0.0, 2.0, 5.0, 12.0], int(sizes.sum()))
    liked = rng.integers(0, 2, plays.size)
    pages, k = [], 0
    for s in sizes:
        pages.append(("u", list(plays[k:k + s])))
        k += s
    features = FeatureConfig(history_len=40, recent_len=6, decay=0.8)
    got = _run(_table(pages, list(liked)), list(range(0, plays.size, 11)), features)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    b = liked.astype(float)
    for i, s in enumerate(starts):
        assert got[hist_cum_col("liked")][i].as_py() == pytest.approx(b[:s].sum())
        assert got[hist_lag_col("liked")][i].as_py() == pytest.approx(b[:max(0, s - 40)].sum())
        recent = sum(0.8 ** a * b[s - 1 - a] for a in range(6) if s - 1 - a >= 0)
        assert got[recent_col("liked")][i].as_py() == pytest.approx(recent)
    assert set(BEHAVIOURS) <= {c[3:] for c in sum_columns()}
