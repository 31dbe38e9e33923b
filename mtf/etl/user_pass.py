"""The ordered per-user pass: validated impressions -> one row per request (= RL step).

Everything that follows one user's impressions in time order happens here, in one pass per
partition: impressions are partitioned by user and sorted by (user_id, ts, request_id, position,
event_id), and :func:`request_rows` (numpy over Arrow record batches, run by ``mapInArrow``)
emits per request:

* its first impression's values: user_id, ts, ds, is_sentinel, action_logp, explore_idx and
  ``a_<i>`` (the first in (ts, request_id, position, event_id) order);
* ``n_items``, ``dwell_s`` and the ``fb_*`` page sums (the reward's regressors);
* its session (:mod:`mtf.etl.sessionize`): session_id, step, ``session_start_ts``,
  ``prev_ts``;
* ``state_core``: the non-profile state from the sums over the user's earlier impressions
  (behaviours by the reference's :func:`mtf.features.impression_behaviours`, features by
  :func:`mtf.features.state_from_sums`): the last ``history_len`` (running sums with a lagged
  difference), the decayed last ``recent_len`` (the reference's loop over ages), the session's
  earlier requests;
* ``next_core``, ``next_ds``, ``is_terminal``, ``is_truncated`` from the user's next request
  (:mod:`mtf.etl.transitions` has the rules; ``next_ds``, that request's ds, is the day whose
  profile :func:`mtf.etl.state.add_profile_state` prepends to the next state).

Why not Spark window functions: they needed 48 running aggregates per impression, an
aggregation to requests, a second shuffle and three more window operators over the requests;
Spark evaluates window frames row by row without generated code. The sorted pass with numpy
costs a fraction of that (docs/etl.md, "Benchmark").

Memory stays bounded per user (the skew requirement): batches are processed as they arrive; a
user that continues into the next batch carries only its last ``max(history_len, recent_len)``
impressions, its last (possibly unfinished) request and the record of the request before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from mtf import contract as S
from mtf.etl.sessionize import PrevRequest, assign_sessions, session_id
from mtf.etl.state import NEXT_CORE, NEXT_DS, PREV_TS, STATE_CORE
from mtf.features import BEHAVIOURS, FeatureConfig, impression_behaviours, state_from_sums

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

IS_SENTINEL = "is_sentinel"      # end-of-data marker row (see mtf.etl.transitions)
IMPRESSION_ORDER = (S.TS, S.REQUEST_ID, S.POSITION, S.EVENT_ID)
APP_SID_HASH = "app_sid_hash"    # xxhash64 of app_session_id (null when absent)
N_ITEMS = "n_items"
DWELL_S = "dwell_s"              # sum of play_time_s over the page
SESSION_START_TS = "session_start_ts"
RAW_PLAY_TIME_NORM = "fb_play_time_norm"  # per impression: play time at the reward's cap
# Per-page feedback sums: the reward's regressors, in the order of the reward weights.
FEEDBACK = ("play_time_norm", "play_ratio", *S.INTERACTION_COLUMNS)
# Impression columns the pass reads besides the pass-through ones.
PASS_INPUT = (S.USER_ID, S.TS, S.DS, S.REQUEST_ID, IS_SENTINEL, APP_SID_HASH, S.PLAY_TIME_S,
              S.DURATION_S, *S.INTERACTION_COLUMNS, RAW_PLAY_TIME_NORM)


def fb_col(name: str) -> str:
    """Page sum of feedback ``name`` (request level)."""
    return f"fb_{name}"


@dataclass(frozen=True)
class _Carry:
    """The rows of the partition's last user that the next batch still needs."""

    rows: "pa.Table"            # context rows (the last impressions before), then the open request
    first_open: int             # row (in `rows`) where the unfinished request starts
    base_idx: int               # the user's impression index of rows[0]
    base_cum: np.ndarray        # (B,) the user's behaviour sums before rows[0]
    prev: PrevRequest | None    # the request before the open one (None: it is the user's first)


@dataclass(frozen=True)
class RequestPass:
    """The per-partition function given to ``mapInArrow`` (picklable: config only)."""

    features: FeatureConfig
    gap_s: float
    passthrough: tuple[str, ...]          # first-impression columns copied to the request

    def __call__(self, batches: Iterable["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        return request_rows(batches, features=self.features, gap_s=self.gap_s,
                            passthrough=self.passthrough)


def request_rows(batches: Iterable["pa.RecordBatch"], *, features: FeatureConfig, gap_s: float,
                 passthrough: tuple[str, ...]) -> Iterator["pa.RecordBatch"]:
    """Sorted impression batches of one partition -> request batches (see module doc).

    The batches must hold :data:`PASS_INPUT` and the ``passthrough`` columns, sorted by
    (user_id, ts, request_id, position, event_id) across the whole partition, every user's rows
    in one partition. The output does not depend on where the batches are cut.
    """
    import pyarrow as pa

    carry: _Carry | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        if carry is not None:
            table = pa.concat_tables([carry.rows, table])
        out, carry = _process(table.combine_chunks(), carry, features=features, gap_s=gap_s,
                              passthrough=passthrough, final=False)
        if out is not None:
            yield out
    if carry is not None:
        out, _ = _process(carry.rows, carry, features=features, gap_s=gap_s,
                          passthrough=passthrough, final=True)
        if out is not None:
            yield out


def _changed(col: "pa.ChunkedArray") -> np.ndarray:
    """Per row: differs from the row before (row 0: True); null equals null only."""
    import pyarrow.compute as pc

    n = len(col)
    out = np.ones(n, dtype=bool)
    if n > 1:
        a, b = col.slice(1), col.slice(0, n - 1)
        ne = pc.fill_null(pc.not_equal(a, b), True).to_numpy()
        both_null = pc.and_(a.is_null(), b.is_null()).to_numpy()
        out[1:] = ne & ~both_null
    return out


def _num(table: "pa.Table", name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(), dtype=np.float64)


def _process(table: "pa.Table", carry: _Carry | None, *, features: FeatureConfig, gap_s: float,
             passthrough: tuple[str, ...], final: bool
             ) -> tuple["pa.RecordBatch | None", _Carry | None]:
    """Emit the finished requests of ``table`` (carried rows + a batch) and the next carry.

    A request is finished when the next request's first row is in ``table`` (its page is
    complete and its next state is known) or at the end of the partition (``final``).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    H, W, d = features.history_len, features.recent_len, float(features.decay)
    rows = np.arange(n)
    new_user = _changed(table.column(S.USER_ID))
    ts_us = table.column(S.TS).cast(pa.int64()).to_numpy()
    new_req = new_user | np.r_[True, ts_us[1:] != ts_us[:-1]] \
        | _changed(table.column(S.REQUEST_ID))
    seg = np.maximum.accumulate(np.where(new_user, rows, 0))     # first row of the row's user
    first_seg = seg == 0
    skip, base_idx, base_cum, prev = 0, 0, np.zeros(len(BEHAVIOURS)), None
    if carry is not None:                  # the carried user continues at row 0
        skip, base_idx, base_cum, prev = (carry.first_open, carry.base_idx, carry.base_cum,
                                          carry.prev)
    idx = rows - seg + np.where(first_seg, base_idx, 0)           # index within the user

    play = _num(table, S.PLAY_TIME_S)
    beh = impression_behaviours(features, play, _num(table, S.DURATION_S),
                                *(_num(table, c) for c in S.INTERACTION_COLUMNS))
    csum = np.vstack([np.zeros((1, beh.shape[1])), np.cumsum(beh, axis=0)])

    def cum_before(r: np.ndarray) -> np.ndarray:          # user's sums over index < idx[r]
        return csum[r] - csum[seg[r]] + np.where(first_seg[r], 1.0, 0.0)[:, None] * base_cum

    # The requests from the open one on; all but the last are finished unless final.
    starts = np.flatnonzero(new_req)
    reqs = starts[starts >= skip]
    ends = np.r_[reqs[1:], n]
    n_done = len(reqs) if final else len(reqs) - 1

    # Sums before each request: all earlier, before the history window, decayed recent window.
    cx = cum_before(reqs)
    lag_row = reqs - H                     # row of impression idx - H (same user when idx > H)
    has_lag = idx[reqs] > H
    cl = np.zeros_like(cx)
    cl[has_lag] = cum_before(lag_row[has_lag])
    rc = np.zeros_like(cx)
    for age in range(W):                   # as compute_states: a loop over ages
        j = reqs - 1 - age
        ok = j >= seg[reqs]
        rc[ok] += d ** age * beh[j[ok]]

    # Sessions and state.
    same_user = np.r_[prev is not None and seg[reqs[0]] == 0, seg[reqs[1:]] == seg[reqs[:-1]]]
    app_sid_col = table.column(APP_SID_HASH)
    app_sid_valid = app_sid_col.is_valid().to_numpy()[reqs]
    app_sid = app_sid_col.fill_null(0).to_numpy()[reqs]
    users, req_ids = table.column(S.USER_ID), table.column(S.REQUEST_ID)

    def new_ids(at: np.ndarray) -> list[str]:
        r = pa.array(reqs[at])
        return [session_id(u, t, q) for u, t, q in
                zip(users.take(r).to_pylist(), ts_us[reqs[at]], req_ids.take(r).to_pylist())]

    imp_start = idx[reqs]
    sess = assign_sessions(same_user=same_user, ts_us=ts_us[reqs], app_sid=app_sid,
                           app_sid_valid=app_sid_valid, imp_start=imp_start, cx=cx,
                           gap_s=gap_s, prev=prev, new_ids=new_ids)
    gap_hours = np.where(sess.has_prev, (ts_us[reqs] - sess.prev_ts_us) / 3.6e9, np.nan)
    core = state_from_sums(features, n_past=imp_start, hist_sum=cx - cl, recent_sum=rc,
                           step=sess.step, sess_n=imp_start - sess.sess_imp_start,
                           sess_sum=cx - sess.sess_cx, gap_hours=gap_hours)

    out = None
    if n_done:
        done = slice(0, n_done)
        # Next state: the user's next request, when it is in the same session.
        nxt = np.r_[same_user[1:] & ~sess.new[1:], False][done]
        sentinel = table.column(IS_SENTINEL).to_numpy()[reqs]
        truncated = nxt & np.r_[sentinel[1:], False][done]
        next_core = np.r_[core[1:], np.zeros((1, core.shape[1]))][done]
        ds = table.column(S.DS).combine_chunks()
        next_ds = pc.if_else(pa.array(nxt), ds.take(pa.array(np.r_[reqs[1:], reqs[-1]][done])),
                             pa.scalar(None, ds.type))
        out = _request_batch(table, reqs[done], ends[done], play, beh, passthrough, {
            S.SESSION_ID: pa.array(sess.session_id[done], pa.string()),
            S.STEP: pa.array(sess.step[done].astype(np.int32)),
            SESSION_START_TS: _timestamps(sess.session_start_us[done], table, None),
            PREV_TS: _timestamps(sess.prev_ts_us[done], table, ~sess.has_prev[done]),
            STATE_CORE: _lists(core[done], None),
            NEXT_CORE: _lists(next_core, ~nxt),
            NEXT_DS: next_ds,
            S.IS_TERMINAL: pa.array(~nxt),
            S.IS_TRUNCATED: pa.array(truncated),
        })
    new_carry = None
    if not final:
        o = int(reqs[-1])                  # the open request
        start = max(int(seg[o]), o - max(H, W))
        last = len(reqs) - 1
        prev_rec = prev if last == 0 else None
        if last > 0 and same_user[last]:
            p = last - 1
            prev_rec = PrevRequest(
                ts_us=int(ts_us[reqs[p]]),
                app_sid=int(app_sid[p]) if app_sid_valid[p] else None,
                session_id=str(sess.session_id[p]),
                session_start_us=int(sess.session_start_us[p]),
                sess_imp_start=int(sess.sess_imp_start[p]), sess_cx=sess.sess_cx[p].copy(),
                req_no=int(sess.req_no[p]), step=int(sess.step[p]))
        new_carry = _Carry(rows=table.slice(start), first_open=o - start,
                           base_idx=int(idx[start]), base_cum=cum_before(np.array([start]))[0],
                           prev=prev_rec)
    return out, new_carry


def _timestamps(us: np.ndarray, table: "pa.Table", null: np.ndarray | None) -> "pa.Array":
    import pyarrow as pa
    return pa.array(us.astype(np.int64), mask=null).cast(table.schema.field(S.TS).type)


def _lists(values: np.ndarray, null: np.ndarray | None) -> "pa.Array":
    """(R, D) float64 -> list<double> array, null where ``null``."""
    import pyarrow as pa

    r, dim = values.shape
    offsets = pa.array(np.arange(0, (r + 1) * dim, dim, dtype=np.int32))
    out = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))
    if null is None or not null.any():
        return out
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)),
                                    mask=pa.array(null))


def _request_batch(table: "pa.Table", emit: np.ndarray, ends: np.ndarray, play: np.ndarray,
                   beh: np.ndarray, passthrough: tuple[str, ...], extra: dict
                   ) -> "pa.RecordBatch":
    import pyarrow as pa

    def page_sum(values: np.ndarray) -> np.ndarray:
        # The emitted requests are consecutive: emit[i + 1] == ends[i].
        return np.add.reduceat(values[emit[0]:ends[-1]], emit - emit[0])

    firsts = table.take(pa.array(emit))
    cols: dict[str, pa.Array] = {c: firsts.column(c).combine_chunks() for c in passthrough}
    cols[N_ITEMS] = pa.array((ends - emit).astype(np.int64))
    cols[DWELL_S] = pa.array(page_sum(play))
    b_index = {b: i for i, b in enumerate(BEHAVIOURS)}
    for f in FEEDBACK:
        values = _num(table, RAW_PLAY_TIME_NORM) if f == "play_time_norm" \
            else beh[:, b_index[f]]
        cols[fb_col(f)] = pa.array(page_sum(values))
    cols.update(extra)
    return pa.RecordBatch.from_pydict(cols)


def impressions_to_requests(imps: "DataFrame", *, features: FeatureConfig, gap_s: float,
                            passthrough: tuple[str, ...]) -> "DataFrame":
    """Impression rows -> one row per request (user_id, ts, request_id); see the module doc.

    Requires position, event_id, :data:`PASS_INPUT` and the ``passthrough`` columns (validated
    rows: no null feedback; sentinel rows from :func:`mtf.etl.transitions.add_sentinels`).
    Returns the ``passthrough`` columns (values of the request's first impression),
    ``n_items``, ``dwell_s``, the ``fb_*`` page sums, session_id, step, ``session_start_ts``,
    ``prev_ts``, ``state_core``, ``next_core`` (array<double>, null when terminal),
    ``next_ds`` (the next request's ds, null when terminal), is_terminal and is_truncated.
    One shuffle by user and a sort, then the ordered pass.
    """
    from pyspark.sql.types import (ArrayType, BooleanType, DoubleType, IntegerType, LongType,
                                   StringType, StructField, StructType)

    needed = list(dict.fromkeys([*passthrough, *PASS_INPUT]))
    ordered = (imps.repartition(S.USER_ID)
               .sortWithinPartitions(S.USER_ID, *IMPRESSION_ORDER)
               .select(*needed))
    ts_type = ordered.schema[S.TS].dataType
    core = ArrayType(DoubleType(), containsNull=False)
    schema = StructType(
        [ordered.schema[c] for c in passthrough]
        + [StructField(N_ITEMS, LongType(), False)]
        + [StructField(c, DoubleType(), False)
           for c in (DWELL_S, *(fb_col(f) for f in FEEDBACK))]
        + [StructField(S.SESSION_ID, StringType(), False),
           StructField(S.STEP, IntegerType(), False),
           StructField(SESSION_START_TS, ts_type, False), StructField(PREV_TS, ts_type, True),
           StructField(STATE_CORE, core, False), StructField(NEXT_CORE, core, True),
           StructField(NEXT_DS, ordered.schema[S.DS].dataType, True),
           StructField(S.IS_TERMINAL, BooleanType(), False),
           StructField(S.IS_TRUNCATED, BooleanType(), False)])
    return ordered.mapInArrow(RequestPass(features, float(gap_s), tuple(passthrough)), schema)
