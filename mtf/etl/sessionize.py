"""Sessions over a user's requests: app session id when present, else an inactivity gap.

A user's requests, in order, start a new session when

* it is the user's first request in the data read, or
* more than ``gap_s`` seconds passed since the previous request (a gap of exactly ``gap_s``
  continues the session), or
* both requests carry an app session id and the ids differ.

So the app session id splits sessions more finely than the gap, and the gap always ends a
session, with or without an id: a session is decidable as ended ``gap_s`` after its last request,
which is what makes ``is_terminal`` well defined at the end of a day (docs/etl.md).

``session_id`` = first 32 hex digits of sha256(user_id, ts and request_id of the session's first
request): stable across runs, so a session that continues over midnight keeps its id and its
step numbering in the next day's run.

Computed in numpy inside the ordered per-user pass (:mod:`mtf.etl.user_pass`), over the
requests of one chunk of a partition; a user continuing from the previous chunk brings the
record of its request before the chunk (:class:`PrevRequest`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

SESSION_ID_HEX = 32             # hex digits kept of the sha256 (128 bits)


def session_id(user_id: str, ts_us: int, request_id: str | None) -> str:
    """The id of a session whose first request is (user_id, ts in microseconds, request_id).

    sha256 of the three joined by U+001F (a null request_id, the end-of-data sentinel's, is
    left out); the first 32 hex digits.
    """
    parts = [user_id, str(int(ts_us))] + ([request_id] if request_id is not None else [])
    return hashlib.sha256("\u001f".join(parts).encode("utf-8")).hexdigest()[:SESSION_ID_HEX]


@dataclass(frozen=True)
class PrevRequest:
    """A user's last request before a chunk: what its next request needs to continue."""

    ts_us: int
    app_sid: int | None          # app_sid_hash of its first impression
    session_id: str
    session_start_us: int
    sess_imp_start: int          # imp_start of the session's first request
    sess_cx: np.ndarray          # (B,) sums over impressions before the session's first request
    req_no: int                  # 0-based request number within the user
    step: int


@dataclass
class Sessions:
    """Per request (R of them) of a chunk: the session columns."""

    new: np.ndarray              # bool: starts a session
    has_prev: np.ndarray         # bool: the user has an earlier request
    prev_ts_us: np.ndarray       # int64, ts of the previous request (0 where none)
    session_id: np.ndarray       # object (str)
    session_start_us: np.ndarray
    sess_imp_start: np.ndarray
    sess_cx: np.ndarray          # (R, B)
    req_no: np.ndarray
    step: np.ndarray


def assign_sessions(*, same_user: np.ndarray, ts_us: np.ndarray, app_sid: np.ndarray,
                    app_sid_valid: np.ndarray, imp_start: np.ndarray, cx: np.ndarray,
                    gap_s: float, prev: PrevRequest | None,
                    new_ids: Callable[[np.ndarray], list[str]]) -> Sessions:
    """Sessions of a chunk's requests, in user then time order.

    Args:
        same_user: ``(R,)`` request i has the user of request i-1; ``same_user[0]`` says
            whether request 0 continues ``prev``'s user.
        ts_us, app_sid, app_sid_valid: ``(R,)`` ts (microseconds), app session id hash and
            whether it is present (not null).
        imp_start, cx: ``(R,)`` first-impression index and ``(R, B)`` sums over all earlier
            impressions (kept at a session's first request for the session features).
        prev: the request before request 0 when ``same_user[0]``.
        new_ids: row positions (into the R requests) of session starts -> their session ids.
    """
    R = len(ts_us)
    ar = np.arange(R)
    has_prev = same_user.copy()
    prev_ts = np.r_[prev.ts_us if prev else 0, ts_us[:-1]].astype(np.int64)
    prev_sid = np.r_[(prev.app_sid or 0) if prev else 0, app_sid[:-1]]
    prev_sid_valid = np.r_[prev is not None and prev.app_sid is not None, app_sid_valid[:-1]]
    prev_ts = np.where(has_prev, prev_ts, 0)
    gap = (ts_us - prev_ts) / 1e6
    new = ~has_prev | (gap > float(gap_s)) \
        | (app_sid_valid & prev_sid_valid & has_prev & (app_sid != prev_sid))
    user_first = np.maximum.accumulate(np.where(same_user, 0, ar))
    req_no = ar - user_first
    if prev is not None and same_user[0]:
        req_no = req_no + np.where(user_first == 0, prev.req_no + 1, 0)
    anchor = np.maximum.accumulate(np.where(new, ar, -1))   # session's first request
    cont = anchor < 0                                       # continues prev's session
    a = np.maximum(anchor, 0)
    ids = np.empty(R, dtype=object)
    starts = np.flatnonzero(new)
    ids[starts] = new_ids(starts)
    ids = ids[a]
    start_us = ts_us[a].astype(np.int64)
    sess_imp = imp_start[a].astype(np.int64)
    sess_cx = cx[a]
    req_no0 = req_no[a]
    if cont.any():
        assert prev is not None  # cont only where request 0.. continue prev's session
        ids[cont] = prev.session_id
        start_us[cont] = prev.session_start_us
        sess_imp[cont] = prev.sess_imp_start
        sess_cx[cont] = prev.sess_cx
        req_no0[cont] = prev.req_no - prev.step
    return Sessions(new=new, has_prev=has_prev, prev_ts_us=prev_ts, session_id=ids,
                    session_start_us=start_us, sess_imp_start=sess_imp, sess_cx=sess_cx,
                    req_no=req_no, step=req_no - req_no0)
