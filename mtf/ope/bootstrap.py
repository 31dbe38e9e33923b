"""Poisson bootstrap over sessions: replicate weights that need no global index.

Replicate b gives session i the weight ``W_ib ~ Poisson(1)`` (independent over i and b), a
deterministic function of ``(seed, session_id, b)``. This is the scalable form of the
multinomial bootstrap (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating uncertainty
for massive data streams"): every partition of a Spark job computes its sessions' weights
locally and adds ``sum_i W_ib * x_i`` for each b, so only ``B x (columns)`` sums leave the
executors, and the single-process path reproduces the Spark numbers exactly.

Every estimator is a ratio (or sum of ratios) of session sums, so its replicate b is that
ratio over the weighted sums of replicate b; row 0 of :func:`weighted_sums` is the full-data
(all weights 1) point estimate. Intervals are percentile intervals of the B replicates.
Weights are shared by all policies, so differences between policies are paired.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_INITIAL_STREAM = 0x5EED5  # stream tag of the initial-state sample
# Poisson(1) CDF for k = 0..19; P(W >= 20) < 1e-19.
_POISSON1_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])
_CHUNK_SESSIONS = 4096


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _C1
        z = (z ^ (z >> np.uint64(27))) * _C2
        return z ^ (z >> np.uint64(31))


def session_hashes(session_ids: Sequence[str]) -> np.ndarray:
    """``(n,)`` uint64: the first 8 bytes of blake2b(session_id), little endian."""
    out = np.empty(len(session_ids), dtype=np.uint64)
    for i, s in enumerate(session_ids):
        out[i] = int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(),
                                "little")
    return out


def _keyed(hashes: np.ndarray, seed: int, stream: int) -> np.ndarray:
    key = _splitmix64(np.array([(seed * 0x100000001B3 + stream) & 0xFFFFFFFFFFFFFFFF],
                               dtype=np.uint64))[0]
    return _splitmix64(hashes ^ key)


def _uniform(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def poisson_weights(hashes: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(n, B)`` float64 Poisson(1) weights, deterministic in (hash, b, seed)."""
    base = _keyed(hashes, seed, 1)                                      # (n,)
    b = np.arange(n_bootstrap, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _splitmix64(base[:, None] + b[None, :] * _GOLDEN)        # (n, B)
    return np.searchsorted(_POISSON1_CDF, _uniform(bits), side="right").astype(np.float64)


def initial_state_mask(hashes: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Sessions in the initial-state sample: ``u(hash, seed) < share`` (about share * n)."""
    if share >= 1.0:
        return np.ones(hashes.shape[0], dtype=bool)
    return _uniform(_keyed(hashes, seed, _INITIAL_STREAM)) < share


def weighted_sums(hashes: np.ndarray, values: np.ndarray, n_bootstrap: int,
                  seed: int) -> np.ndarray:
    """``(1 + B, m)``: row 0 = ``sum_i values_i``, row 1 + b = ``sum_i W_ib values_i``.

    Args:
        hashes: ``(n,)`` session hashes; values: ``(n, m)`` per-session statistics.
    """
    n, m = values.shape
    out = np.zeros((1 + n_bootstrap, m), dtype=np.float64)
    out[0] = values.sum(axis=0)
    for lo in range(0, n, _CHUNK_SESSIONS):
        hi = min(lo + _CHUNK_SESSIONS, n)
        w = poisson_weights(hashes[lo:hi], n_bootstrap, seed)           # (c, B)
        out[1:] += w.T @ values[lo:hi]                                   # (B, c) @ (c, m)
    return out


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    """Two-sided percentile interval of the finite replicates; (nan, nan) if fewer than 2."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(r, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)
