"""Point-in-time user-state features: ONE specification, a reference numpy implementation.

The state at a request uses only impressions of the same user from *earlier requests* (strictly
before it; docs/contract.md section 3). Impressions of a user are ordered by ``(ts, request_id,
position)``. Per impression we derive the behaviours of :data:`BEHAVIOURS`:

=================  =====================================================================
liked ... followed  the 0/1 interaction flags
finished            play_ratio >= finish_ratio
skipped             play_time_s < skip_s
play_ratio          min(play_time_s / duration_s, 1)   (0 when duration <= 0)
play_time_norm      min(play_time_s / play_cap_s, 1)
=================  =====================================================================

State vector (``FEATURE_VERSION``), in this order:

1. ``profile_<c>`` for each configured profile column (already numeric; null -> 0). With a
   ``snapshot_ds`` column in the profiles: the user's newest snapshot dated strictly before the
   request's day (UTC date of its ts); none -> 0 (docs/contract.md section 4).
2. ``hist_count``: log1p(n) / log1p(history_len), n = impressions in the history window
   H = the last ``history_len`` impressions before the request.
3. ``hist_mean_<b>`` for each behaviour: mean over H (0 when H is empty).
4. ``recent_<b>`` for each behaviour: decayed mean over the last ``recent_len`` impressions,
   weight ``decay ** age`` (age 0 = most recent impression), divided by the sum of the weights
   present (0 when there is none).
5. ``sess_step``: min(step, sess_step_cap) / sess_step_cap, step = 0-based request index in the
   session.
6. ``sess_mean_play_ratio``, ``sess_mean_skipped``: mean over the impressions of earlier
   requests of the *same session* (0 at the first step).
7. ``gap_prev_request``: min(log1p(hours since the user's previous request) / log1p(168), 1);
   1 when there is no previous request.

The Spark implementation lives in ``mtf.etl``; the simulator keeps an incremental version. Both
are tested equal to :func:`compute_states` here, which is the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mtf.contract import SNAPSHOT_DS

FEATURE_VERSION = "v1"
BEHAVIOURS = ("liked", "shared", "commented", "followed", "finished", "skipped",
              "play_ratio", "play_time_norm")
SESSION_BEHAVIOURS = ("play_ratio", "skipped")
GAP_CAP_HOURS = 168.0


@dataclass(frozen=True)
class FeatureConfig:
    history_len: int = 500         # N: impressions in the long history window (paper: 500)
    recent_len: int = 32           # impressions in the decayed "recent" window
    decay: float = 0.9             # per-impression decay of the recent window
    finish_ratio: float = 0.9      # play_ratio at or above this counts as finished
    skip_s: float = 3.0            # play time below this counts as a skip
    play_cap_s: float = 60.0       # play_time_norm cap
    sess_step_cap: int = 20        # sess_step saturates here
    profile_columns: tuple[str, ...] = ("age", "activity", "tenure", "gender")

    def __post_init__(self) -> None:
        if self.history_len <= 0 or self.recent_len <= 0:
            raise ValueError("history_len and recent_len must be > 0")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if self.play_cap_s <= 0 or self.skip_s < 0 or self.sess_step_cap <= 0:
            raise ValueError("play_cap_s and sess_step_cap must be > 0, skip_s >= 0")

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(self)

    @property
    def state_dim(self) -> int:
        return len(self.feature_names)


def feature_names(cfg: FeatureConfig) -> tuple[str, ...]:
    return (tuple(f"profile_{c}" for c in cfg.profile_columns)
            + ("hist_count",)
            + tuple(f"hist_mean_{b}" for b in BEHAVIOURS)
            + tuple(f"recent_{b}" for b in BEHAVIOURS)
            + ("sess_step",)
            + tuple(f"sess_mean_{b}" for b in SESSION_BEHAVIOURS)
            + ("gap_prev_request",))


def impression_behaviours(cfg: FeatureConfig, play_time_s: np.ndarray, duration_s: np.ndarray,
                          liked: np.ndarray, shared: np.ndarray, commented: np.ndarray,
                          followed: np.ndarray) -> np.ndarray:
    """``(n, len(BEHAVIOURS))`` float64 behaviour matrix, columns in BEHAVIOURS order."""
    play = np.nan_to_num(np.asarray(play_time_s, dtype=np.float64))
    dur = np.nan_to_num(np.asarray(duration_s, dtype=np.float64))
    ratio = np.clip(np.divide(play, dur, out=np.zeros_like(dur), where=dur > 0), 0.0, 1.0)
    cols = [np.asarray(liked, dtype=np.float64), np.asarray(shared, dtype=np.float64),
            np.asarray(commented, dtype=np.float64), np.asarray(followed, dtype=np.float64),
            (ratio >= cfg.finish_ratio).astype(np.float64),
            (play < cfg.skip_s).astype(np.float64),
            ratio,
            np.clip(play / cfg.play_cap_s, 0.0, 1.0)]
    return np.stack(cols, axis=1)


def _user_states(cfg: FeatureConfig, beh: np.ndarray, req_start: np.ndarray,
                 sess_start_imp: np.ndarray, step: np.ndarray,
                 gap_hours: np.ndarray) -> np.ndarray:
    """History/recent/session features for one user's requests.

    Args:
        beh: ``(n_imp, B)`` behaviours of the user's impressions in order.
        req_start: ``(R,)`` index of each request's first impression (impressions before it
            are the request's past).
        sess_start_imp: ``(R,)`` index of the first impression of the request's session.
        step: ``(R,)`` 0-based request index within its session.
        gap_hours: ``(R,)`` hours since the previous request (NaN for the first one).
    Returns:
        ``(R, 1 + 2B + 1 + 2 + 1)`` features in spec order (profile excluded).
    """
    n_imp, n_b = beh.shape
    csum = np.vstack([np.zeros((1, n_b)), np.cumsum(beh, axis=0)])   # (n_imp + 1, B)
    hi = req_start
    lo = np.maximum(0, hi - cfg.history_len)

    # Decayed recent window: a short loop over ages, vectorised over requests.
    num = np.zeros((len(hi), n_b))
    for age in range(cfg.recent_len):
        idx = hi - 1 - age
        ok = idx >= 0
        num[ok] += cfg.decay ** age * beh[idx[ok]]
    return state_from_sums(cfg, n_past=hi, hist_sum=csum[hi] - csum[lo], recent_sum=num,
                           step=step, sess_n=hi - sess_start_imp,
                           sess_sum=csum[hi] - csum[sess_start_imp], gap_hours=gap_hours)


def state_from_sums(cfg: FeatureConfig, *, n_past: np.ndarray, hist_sum: np.ndarray,
                    recent_sum: np.ndarray, step: np.ndarray, sess_n: np.ndarray,
                    sess_sum: np.ndarray, gap_hours: np.ndarray) -> np.ndarray:
    """The non-profile state from per-request sums (shared by this reference and the ETL).

    Args (R requests, B behaviours):
        n_past: ``(R,)`` impressions of the user before the request.
        hist_sum: ``(R, B)`` behaviour sums over the last ``history_len`` of them.
        recent_sum: ``(R, B)`` ``decay**age``-weighted sums over the last ``recent_len``.
        step: ``(R,)`` 0-based request index within its session.
        sess_n, sess_sum: ``(R,)`` impressions and ``(R, B)`` sums of the session's earlier
            requests.
        gap_hours: ``(R,)`` hours since the previous request (NaN for the first one).
    Returns:
        ``(R, 1 + 2B + 1 + 2 + 1)`` float64 features in spec order (profile excluded).
    """
    n = np.minimum(n_past, cfg.history_len).astype(np.float64)
    hist_mean = np.divide(hist_sum, n[:, None], out=np.zeros_like(hist_sum),
                          where=n[:, None] > 0)
    hist_count = np.log1p(n) / np.log1p(cfg.history_len)
    # Weight of the impressions present: the same additions, in the same order, as a loop.
    weight = np.r_[0.0, np.cumsum(cfg.decay ** np.arange(cfg.recent_len))]
    den = weight[np.minimum(n_past, cfg.recent_len)]
    recent = np.divide(recent_sum, den[:, None], out=np.zeros_like(recent_sum),
                       where=den[:, None] > 0)
    sess_idx = [BEHAVIOURS.index(b) for b in SESSION_BEHAVIOURS]
    sess_n = np.asarray(sess_n, dtype=np.float64)
    sess_sum = sess_sum[:, sess_idx]
    sess_mean = np.divide(sess_sum, sess_n[:, None], out=np.zeros_like(sess_sum),
                          where=sess_n[:, None] > 0)
    sess_step = np.minimum(step, cfg.sess_step_cap) / cfg.sess_step_cap
    gap = np.where(np.isnan(gap_hours), 1.0,
                   np.minimum(np.log1p(np.maximum(np.nan_to_num(gap_hours), 0.0))
                              / np.log1p(GAP_CAP_HOURS), 1.0))
    return np.column_stack([hist_count, hist_mean, recent, sess_step, sess_mean, gap])


def compute_states(cfg: FeatureConfig, impressions: pd.DataFrame,
                   profiles: pd.DataFrame | None = None) -> pd.DataFrame:
    """Reference state vectors, one row per request.

    Args:
        impressions: columns user_id, request_id, session_id, step, ts (datetime64),
            position, play_time_s, duration_s, liked, shared, commented, followed.
        profiles: user_id + the configured profile columns (missing users/nulls -> 0); with a
            ``snapshot_ds`` column (dates, 'YYYY-MM-DD' text or timestamps): point-in-time, the
            newest snapshot strictly before the request's day; several rows of one
            (user_id, snapshot_ds) resolve to the per-column maximum (nulls ignored).
    Returns:
        DataFrame with user_id, request_id, session_id, step and ``state`` (float32 arrays),
        ordered by user then request order.
    """
    df = impressions.sort_values(["user_id", "ts", "request_id", "position"],
                                 kind="mergesort").reset_index(drop=True)
    beh = impression_behaviours(cfg, df["play_time_s"].to_numpy(), df["duration_s"].to_numpy(),
                                df["liked"].to_numpy(), df["shared"].to_numpy(),
                                df["commented"].to_numpy(), df["followed"].to_numpy())
    # Request table: first impression of each request, in order.
    first = ~df.duplicated(["user_id", "request_id"])
    req = df.loc[first, ["user_id", "request_id", "session_id", "step", "ts"]].copy()
    req["imp_start"] = np.flatnonzero(first.to_numpy())
    # Impression index range [u0, u1) of each user (df is sorted by user).
    uid = df["user_id"].to_numpy()
    bounds = np.r_[np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]]), len(df)]
    user_range = {uid[b0]: (b0, b1) for b0, b1 in zip(bounds[:-1], bounds[1:])}
    out_parts = []
    for user_id, ureq in req.groupby("user_id", sort=False):
        u0, u1 = user_range[user_id]
        starts = ureq["imp_start"].to_numpy() - u0
        sess = ureq["session_id"].to_numpy()
        new_sess = np.r_[True, sess[1:] != sess[:-1]]
        sess_start = np.maximum.accumulate(np.where(new_sess, starts, 0))
        ts = _epoch_us(ureq["ts"])
        gap_h = np.r_[np.nan, np.diff(ts) / 3.6e9]          # microseconds -> hours
        out_parts.append(_user_states(cfg, beh[u0:u1], starts, sess_start,
                                      ureq["step"].to_numpy(), gap_h))
    hist = np.vstack(out_parts) if out_parts else np.zeros((0, len(feature_names(cfg)) -
                                                                len(cfg.profile_columns)))
    prof = _profile_matrix(cfg, req["user_id"].to_numpy(), profiles,
                           _epoch_us(req["ts"]) // 86_400_000_000)
    states = np.hstack([prof, hist]).astype(np.float32)
    out = req[["user_id", "request_id", "session_id", "step"]].reset_index(drop=True)
    out["state"] = list(states)
    return out


def _epoch_us(ts: pd.Series) -> np.ndarray:
    """Timestamps (naive = UTC, or tz-aware) -> int64 microseconds since the epoch."""
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy().astype("datetime64[us]").astype(np.int64)


def _profile_matrix(cfg: FeatureConfig, user_ids: np.ndarray,
                    profiles: pd.DataFrame | None, days: np.ndarray) -> np.ndarray:
    """``(R, P)`` profile features of requests by ``user_ids`` on ``days`` (days since epoch)."""
    if not cfg.profile_columns:
        return np.zeros((len(user_ids), 0))
    if profiles is None:
        return np.zeros((len(user_ids), len(cfg.profile_columns)))
    missing = [c for c in ("user_id", *cfg.profile_columns) if c not in profiles.columns]
    if missing:
        raise ValueError(f"user profiles lack columns {missing}")
    if SNAPSHOT_DS in profiles.columns:
        got = _profiles_as_of(profiles, list(cfg.profile_columns), user_ids, days)
    else:
        table = profiles.drop_duplicates("user_id").set_index("user_id")[
            list(cfg.profile_columns)]
        got = table.reindex(user_ids).to_numpy(dtype=np.float64)
    return np.nan_to_num(got)


def _profiles_as_of(profiles: pd.DataFrame, cols: list[str], user_ids: np.ndarray,
                    days: np.ndarray) -> np.ndarray:
    """Each request's values from its user's newest snapshot dated strictly before its day."""
    snap_day = pd.to_datetime(profiles[SNAPSHOT_DS], utc=True)
    snaps = (profiles.assign(_day=_epoch_us(snap_day) // 86_400_000_000)
             .groupby(["user_id", "_day"], as_index=False)[cols].max()
             .sort_values("_day", kind="mergesort"))
    req = pd.DataFrame({"user_id": user_ids, "_day": np.asarray(days, dtype=np.int64),
                        "_row": np.arange(len(user_ids))}).sort_values("_day", kind="mergesort")
    got = pd.merge_asof(req, snaps, on="_day", by="user_id", allow_exact_matches=False,
                        direction="backward")
    return got.sort_values("_row")[cols].to_numpy(dtype=np.float64)
