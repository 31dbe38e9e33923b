"""Impressions -> one row per request with the user's point-in-time history sums.

This is the only stage that works on impression rows after validation, so it is the one whose
cost decides the build's. Impressions are partitioned by user and sorted by (user_id, ts,
request_id, position, event_id); one ordered pass per partition (:func:`request_rows`, numpy
over Arrow record batches, run by ``mapInArrow``) then emits, per request:

* the request's identity and first-impression values: user_id, ts, request_id, ds,
  is_sentinel, action_logp, explore_idx, app_sid_hash, ``a_<i>`` (the first impression in
  (ts, request_id, position, event_id) order);
* ``imp_start`` (index of its first impression within the user), ``n_items``, ``dwell_s`` and
  the ``fb_*`` page sums (the reward's regressors);
* per behaviour b of :data:`mtf.features.BEHAVIOURS` (computed by the reference's own
  :func:`mtf.features.impression_behaviours`): ``cx_<b>`` = sum over all earlier impressions,
  ``cl_<b>`` = sum over impressions before the history window (index < imp_start - H), ``rc_<b>``
  = decayed sum over the last ``recent_len`` impressions (``decay**age``), the same loop over
  ages as :func:`mtf.features.compute_states`.

Why not Spark window functions: the sums need 24 running aggregates per impression (and more to
cut the decayed window), which Spark's window operator evaluates row by row without generated
code; a sorted pass with numpy cumulative sums costs a fraction of that, and requests are
aggregated in the same pass (docs/etl.md, "Benchmark").

Memory stays bounded per user (the skew requirement): batches are processed as they arrive; a
user that continues into the next batch carries only its last ``max(history_len, recent_len)``
impressions plus its last, possibly incomplete, request, with the sums before them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from mtf.etl import schema as S
from mtf.features import BEHAVIOURS, FeatureConfig, impression_behaviours

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

IMP_START = "imp_start"          # index of a request's first impression within the user
IS_SENTINEL = "is_sentinel"      # end-of-data marker row (see mtf.etl.transitions)
IMPRESSION_ORDER = (S.TS, S.REQUEST_ID, S.POSITION, S.EVENT_ID)
N_ITEMS = "n_items"
DWELL_S = "dwell_s"              # sum of play_time_s over the page
RAW_PLAY_TIME_NORM = "fb_play_time_norm"  # per impression: play time at the reward's cap


def hist_cum_col(b: str) -> str:      # sum of b over all earlier impressions
    return f"cx_{b}"


def hist_lag_col(b: str) -> str:      # sum of b over impressions before the history window
    return f"cl_{b}"


def recent_col(b: str) -> str:        # decayed sum of b over the recent window
    return f"rc_{b}"


def fb_col(name: str) -> str:
    """Page sum of feedback ``name`` (request level)."""
    return f"fb_{name}"


# Per-page feedback sums: the reward's regressors, in the order of the reward weights.
FEEDBACK = ("play_time_norm", "play_ratio", *S.INTERACTIONS)
# Impression columns the pass reads besides the pass-through ones.
_NUMERIC_INPUT = (S.PLAY_TIME_S, S.DURATION_S, *S.INTERACTIONS, RAW_PLAY_TIME_NORM)
_KEY_INPUT = (S.USER_ID, S.TS, S.REQUEST_ID)


def sum_columns() -> tuple[str, ...]:
    """The history-sum columns, behaviour-major: cx, cl, rc of each behaviour."""
    return tuple(f(b) for b in BEHAVIOURS for f in (hist_cum_col, hist_lag_col, recent_col))


@dataclass
class _Carry:
    """The rows of the partition's last user that the next batch still needs."""

    rows: "pa.Table"            # from `start` on: context rows, then the unfinished request
    first_open: int             # row (in `rows`) where the unfinished request starts
    base_idx: int               # the user's impression index of rows[0]
    base_cum: np.ndarray        # (B,) the user's behaviour sums before rows[0]


@dataclass
class RequestPass:
    """The per-partition function given to ``mapInArrow`` (picklable: config only)."""

    features: FeatureConfig
    passthrough: tuple[str, ...]          # first-impression columns copied to the request

    def __call__(self, batches: Iterable["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        return request_rows(batches, features=self.features, passthrough=self.passthrough)


def request_rows(batches: Iterable["pa.RecordBatch"], *, features: FeatureConfig,
                 passthrough: tuple[str, ...]) -> Iterator["pa.RecordBatch"]:
    """Sorted impression batches of one partition -> request batches (see module doc).

    The batches must hold user_id, ts, request_id, play_time_s, duration_s, the interactions,
    ``fb_play_time_norm`` and the ``passthrough`` columns, sorted by (user_id, ts, request_id,
    position, event_id) across the whole partition, every user's rows in one partition. The
    output does not depend on where the batches are cut.
    """
    import pyarrow as pa

    carry: _Carry | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        if carry is not None:
            table = pa.concat_tables([carry.rows, table])
        out, carry = _process(table.combine_chunks(), carry, features=features,
                              passthrough=passthrough, final=False)
        if out is not None:
            yield out
    if carry is not None:
        out, _ = _process(carry.rows, carry, features=features, passthrough=passthrough,
                          final=True)
        if out is not None:
            yield out


def _changed(col: "pa.ChunkedArray | pa.Array") -> np.ndarray:
    """Per row: differs from the row before (row 0: True); null-safe (null != value)."""
    import pyarrow.compute as pc

    n = len(col)
    out = np.ones(n, dtype=bool)
    if n > 1:
        ne = pc.not_equal(col.slice(1), col.slice(0, n - 1))
        out[1:] = pc.fill_null(ne, True).to_numpy(zero_copy_only=False)
        both_null = pc.and_(col.slice(1).is_null(), col.slice(0, n - 1).is_null())
        out[1:] &= ~both_null.to_numpy(zero_copy_only=False)
    return out


def _num(table: "pa.Table", name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(), dtype=np.float64)


def _process(table: "pa.Table", carry: _Carry | None, *, features: FeatureConfig,
             passthrough: tuple[str, ...], final: bool
             ) -> tuple["pa.RecordBatch | None", _Carry | None]:
    """Emit the finished requests of ``table`` (carry rows + a batch) and the next carry."""
    import pyarrow as pa

    n = table.num_rows
    H, W, d = features.history_len, features.recent_len, float(features.decay)
    rows = np.arange(n)
    new_user = _changed(table.column(S.USER_ID))
    ts_us = table.column(S.TS).cast(pa.int64()).to_numpy()
    new_req = new_user | np.r_[True, ts_us[1:] != ts_us[:-1]] \
        | _changed(table.column(S.REQUEST_ID))
    seg = np.maximum.accumulate(np.where(new_user, rows, 0))     # first row of the row's user
    first_seg = seg == 0
    skip = 0
    base_idx, base_cum = 0, np.zeros(len(BEHAVIOURS))
    if carry is not None:                  # the carried user continues at row 0
        skip, base_idx, base_cum = carry.first_open, carry.base_idx, carry.base_cum
    idx = rows - seg + np.where(first_seg, base_idx, 0)           # index within the user

    beh = impression_behaviours(features, _num(table, S.PLAY_TIME_S), _num(table, S.DURATION_S),
                                *(_num(table, c) for c in S.INTERACTIONS))
    csum = np.vstack([np.zeros((1, beh.shape[1])), np.cumsum(beh, axis=0)])

    def cum_before(r: np.ndarray) -> np.ndarray:          # user's sums over index < idx[r]
        return csum[r] - csum[seg[r]] + np.where(first_seg[r], 1.0, 0.0)[:, None] * base_cum

    starts = np.flatnonzero(new_req)
    last_open = not final                  # the last request may go on in the next batch
    emit = starts[(starts >= skip) & ((starts < starts[-1]) | (not last_open))]
    out = None
    if emit.size:
        ends = np.r_[starts[1:], n][np.searchsorted(starts, emit)]
        cx = cum_before(emit)
        lag_row = emit - H                 # row of impression idx - H (same user when idx > H)
        has_lag = idx[emit] > H
        cl = np.zeros_like(cx)
        cl[has_lag] = cum_before(lag_row[has_lag])
        rc = np.zeros_like(cx)
        for age in range(W):               # as compute_states: a loop over ages
            j = emit - 1 - age
            ok = j >= seg[emit]
            rc[ok] += d ** age * beh[j[ok]]
        out = _request_batch(table, emit, ends, idx, beh, cx, cl, rc, passthrough)
    new_carry = None
    if last_open:
        open_row = int(starts[-1])
        start = max(int(seg[open_row]), open_row - max(H, W))
        new_carry = _Carry(rows=table.slice(start), first_open=open_row - start,
                           base_idx=int(idx[start]), base_cum=cum_before(np.array([start]))[0])
    return out, new_carry


def _request_batch(table: "pa.Table", emit: np.ndarray, ends: np.ndarray, idx: np.ndarray,
                   beh: np.ndarray, cx: np.ndarray, cl: np.ndarray, rc: np.ndarray,
                   passthrough: tuple[str, ...]) -> "pa.RecordBatch":
    import pyarrow as pa

    def page_sum(values: np.ndarray) -> np.ndarray:
        # The emitted requests are consecutive: emit[i + 1] == ends[i].
        return np.add.reduceat(values[emit[0]:ends[-1]], emit - emit[0])

    firsts = table.take(pa.array(emit))
    cols: dict[str, pa.Array] = {c: firsts.column(c).combine_chunks() for c in passthrough}
    cols[IMP_START] = pa.array(idx[emit].astype(np.int64))
    cols[N_ITEMS] = pa.array((ends - emit).astype(np.int64))
    cols[DWELL_S] = pa.array(page_sum(_num(table, S.PLAY_TIME_S)))
    b_index = {b: i for i, b in enumerate(BEHAVIOURS)}
    for f in FEEDBACK:
        values = _num(table, RAW_PLAY_TIME_NORM) if f == "play_time_norm" \
            else beh[:, b_index[f]]
        cols[fb_col(f)] = pa.array(page_sum(values))
    for i, b in enumerate(BEHAVIOURS):
        cols[hist_cum_col(b)] = pa.array(cx[:, i])
        cols[hist_lag_col(b)] = pa.array(cl[:, i])
        cols[recent_col(b)] = pa.array(rc[:, i])
    return pa.RecordBatch.from_pydict(cols)


def impressions_to_requests(imps: "DataFrame", *, features: FeatureConfig,
                            passthrough: tuple[str, ...]) -> "DataFrame":
    """Impression rows -> one row per request (user_id, ts, request_id) with history sums.

    Requires user_id, ts, request_id, position, event_id, play_time_s, duration_s, the
    interactions, ``fb_play_time_norm`` and the ``passthrough`` columns (which must include
    user_id, ts and request_id; validated rows: no null feedback). Returns the ``passthrough``
    columns (values of the request's first impression), ``imp_start``, ``n_items``,
    ``dwell_s``, the ``fb_*`` page sums and :func:`sum_columns`. One shuffle by user and a sort,
    then one ordered pass per partition (:func:`request_rows`).
    """
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    missing = [c for c in _KEY_INPUT if c not in passthrough]
    if missing:
        raise ValueError(f"passthrough must include {list(_KEY_INPUT)}; missing {missing}")
    needed = list(dict.fromkeys([*passthrough, *_NUMERIC_INPUT]))
    ordered = (imps.repartition(S.USER_ID)
               .sortWithinPartitions(S.USER_ID, *IMPRESSION_ORDER)
               .select(*needed))
    schema = StructType(
        [ordered.schema[c] for c in passthrough]
        + [StructField(IMP_START, LongType(), False), StructField(N_ITEMS, LongType(), False)]
        + [StructField(c, DoubleType(), False)
           for c in (DWELL_S, *(fb_col(f) for f in FEEDBACK), *sum_columns())])
    return ordered.mapInArrow(RequestPass(features, tuple(passthrough)), schema)
