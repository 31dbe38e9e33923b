"""Incremental, vectorised point-in-time state features for simulated users.

:class:`StateTracker` keeps, per user, a ring buffer of the behaviours of the last
``max(history_len, recent_len)`` impressions plus running sums, so the state of a request costs
O(recent_len) instead of a pass over the history. It implements exactly the specification of
:mod:`mtf.features` (names, windows, transforms; behaviours come from
:func:`mtf.features.impression_behaviours`), and the tests hold it equal to the reference
:func:`mtf.features.compute_states` on the logs the simulator writes.

Usage per request of a batch of users ``rows``::

    tracker.start_session(rows_starting)          # at a session's first request
    s = tracker.states(rows, step, ts_us)         # (n, S) float32, uses only earlier requests
    ... show items, sample responses ...
    tracker.push(rows, ts_us, behaviours)         # (n, l, B): the page, in position order
"""
from __future__ import annotations

import numpy as np

from mtf.features import BEHAVIOURS, GAP_CAP_HOURS, SESSION_BEHAVIOURS, FeatureConfig

_US_PER_HOUR = 3.6e9
_SESSION_COLS = [BEHAVIOURS.index(b) for b in SESSION_BEHAVIOURS]


class StateTracker:
    """Per-user history state for ``n_users`` users (rows ``0 .. n_users - 1``).

    Args:
        cfg: the feature definition.
        profile: ``(n_users, len(cfg.profile_columns))`` profile features (nulls already 0).
    """

    def __init__(self, cfg: FeatureConfig, profile: np.ndarray) -> None:
        profile = np.asarray(profile, dtype=np.float64)
        if profile.ndim != 2 or profile.shape[1] != len(cfg.profile_columns):
            raise ValueError(f"profile must be (n_users, {len(cfg.profile_columns)}) for "
                             f"profile_columns {list(cfg.profile_columns)}, got {profile.shape}")
        n = profile.shape[0]
        nb = len(BEHAVIOURS)
        self.cfg = cfg
        self._profile = profile
        self._cap = max(cfg.history_len, cfg.recent_len)
        self._buf = np.zeros((n, self._cap, nb))          # behaviours, ring buffer
        self._ptr = np.zeros(n, dtype=np.int64)             # next slot to write
        self._count = np.zeros(n, dtype=np.int64)           # impressions pushed so far
        self._hist_sum = np.zeros((n, nb))                  # sum over the last history_len
        self._sess_sum = np.zeros((n, len(_SESSION_COLS)))  # sum over this session so far
        self._sess_n = np.zeros(n, dtype=np.int64)
        self._last_ts = np.full(n, -1, dtype=np.int64)      # previous request ts (us), -1: none
        self._recent_w = cfg.decay ** np.arange(cfg.recent_len, dtype=np.float64)

    @property
    def n_users(self) -> int:
        return int(self._profile.shape[0])

    @property
    def state_dim(self) -> int:
        return self.cfg.state_dim

    def n_impressions(self, rows: np.ndarray) -> np.ndarray:
        """Impressions pushed so far for ``rows``."""
        return self._count[rows].copy()

    def last_request_ts(self, rows: np.ndarray) -> np.ndarray:
        """Timestamp (us) of the previous request of ``rows``; -1 where there is none."""
        return self._last_ts[rows].copy()

    def start_session(self, rows: np.ndarray) -> None:
        """Reset the within-session features of ``rows`` (call before their first request)."""
        self._sess_sum[rows] = 0.0
        self._sess_n[rows] = 0

    def states(self, rows: np.ndarray, step: np.ndarray | int, ts_us: np.ndarray) -> np.ndarray:
        """``(n, S)`` float32 states of a request by each of ``rows`` at ``ts_us``.

        Args:
            rows: ``(n,)`` distinct user rows.
            step: 0-based request index within the session (scalar or ``(n,)``).
            ts_us: ``(n,)`` int64 request time in microseconds since the epoch.
        """
        cfg = self.cfg
        rows = np.asarray(rows, dtype=np.int64)
        count = self._count[rows]
        n_hist = np.minimum(count, cfg.history_len).astype(np.float64)
        hist_count = np.log1p(n_hist) / np.log1p(cfg.history_len)
        hist_sum = self._hist_sum[rows]
        hist_mean = np.divide(hist_sum, n_hist[:, None], out=np.zeros_like(hist_sum),
                              where=n_hist[:, None] > 0)

        ages = np.arange(cfg.recent_len)
        slots = (self._ptr[rows, None] - 1 - ages) % self._cap          # (n, R)
        w = np.where(ages < count[:, None], self._recent_w, 0.0)        # (n, R)
        window = self._buf[rows[:, None], slots]                        # (n, R, B)
        num = np.einsum("nr,nrb->nb", w, window)
        den = w.sum(axis=1)
        recent = np.divide(num, den[:, None], out=np.zeros_like(num), where=den[:, None] > 0)

        step = np.broadcast_to(np.asarray(step, dtype=np.int64), rows.shape)
        sess_step = np.minimum(step, cfg.sess_step_cap) / cfg.sess_step_cap
        sess_n = self._sess_n[rows].astype(np.float64)
        sess_sum = self._sess_sum[rows]
        sess_mean = np.divide(sess_sum, sess_n[:, None], out=np.zeros_like(sess_sum),
                              where=sess_n[:, None] > 0)

        last = self._last_ts[rows]
        gap_h = (np.asarray(ts_us, dtype=np.int64) - last) / _US_PER_HOUR
        gap = np.where(last < 0, 1.0,
                       np.minimum(np.log1p(np.maximum(gap_h, 0.0)) / np.log1p(GAP_CAP_HOURS),
                                  1.0))
        out = np.column_stack([self._profile[rows], hist_count, hist_mean, recent, sess_step,
                               sess_mean, gap])
        return out.astype(np.float32)

    def push(self, rows: np.ndarray, ts_us: np.ndarray, behaviours: np.ndarray) -> None:
        """Append one request's page per row: ``behaviours`` is ``(n, l, len(BEHAVIOURS))``
        in position order, ``ts_us`` the request times."""
        rows = np.asarray(rows, dtype=np.int64)
        beh = np.asarray(behaviours, dtype=np.float64)
        if beh.ndim != 3 or beh.shape[0] != rows.shape[0] or beh.shape[2] != len(BEHAVIOURS):
            raise ValueError(f"behaviours must be (n_rows, page, {len(BEHAVIOURS)}), "
                             f"got {beh.shape} for {rows.shape[0]} rows")
        h = self.cfg.history_len
        for j in range(beh.shape[1]):
            ptr = self._ptr[rows]
            count = self._count[rows]
            # The impression that leaves the history window (age history_len after this push).
            full = count >= h
            if full.any():
                evict = (ptr[full] - h) % self._cap
                self._hist_sum[rows[full]] -= self._buf[rows[full], evict]
            self._buf[rows, ptr] = beh[:, j]
            self._hist_sum[rows] += beh[:, j]
            self._ptr[rows] = (ptr + 1) % self._cap
            self._count[rows] = count + 1
        self._sess_sum[rows] += beh[:, :, _SESSION_COLS].sum(axis=1)
        self._sess_n[rows] += beh.shape[1]
        self._last_ts[rows] = np.asarray(ts_us, dtype=np.int64)
