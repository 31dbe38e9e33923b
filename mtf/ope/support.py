"""Support of a target policy in the logged actions: how many of its actions the data reach.

An FQE value (linear or MLP) for actions the logs never took is extrapolation, and the
bootstrap cannot see it: every resample extrapolates the same way (docs/ope.md section 9).
The guard measures support from the logged actions alone, with no model of the logging
policy, so it works on real logs as on simulated ones:

    r        = the q-quantile (``support_quantile``, 0.9) of the logged actions' distances to
               their nearest other logged action (Euclidean, normalised action units), on a
               seeded sample of rows: how far apart the data are where they are densest and
               where they are sparse;
    share(pi) = the share of the sampled states s whose target action pi(s) has a logged
               action within r.

A policy with ``share < ope.ensemble.min_support`` gets no GO: most of its actions lie where
the logging policy (its exploration included) never went.
"""
from __future__ import annotations

import numpy as np
import torch

_BLOCK_FLOATS = 1 << 24   # distances held at once (64 MiB): query rows per block = this / N


def nearest_distance(query: np.ndarray, points: np.ndarray,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """Per query row, the Euclidean distance to the nearest row of ``points``; ``exclude``
    (one index per query row) removes that point (a row's distance to itself)."""
    pts = torch.as_tensor(np.ascontiguousarray(points, dtype=np.float32))
    q = torch.as_tensor(np.ascontiguousarray(query, dtype=np.float32))
    out = []
    chunk = max(1, _BLOCK_FLOATS // max(1, pts.shape[0]))
    for lo in range(0, q.shape[0], chunk):
        d = torch.cdist(q[lo:lo + chunk], pts)
        if exclude is not None:
            rows = torch.arange(d.shape[0])
            d[rows, torch.as_tensor(exclude[lo:lo + chunk])] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def support_shares(logged: np.ndarray, pi_action: np.ndarray, *, quantile: float,
                   sample_rows: int, seed: int) -> tuple[np.ndarray, float]:
    """``(share per policy (P,), radius r)`` for ``pi_action`` ``(P, N, k)`` against the
    ``logged`` actions ``(N, k)`` of the same rows (module docstring)."""
    n = logged.shape[0]
    if n < 2:
        raise ValueError("support_shares needs at least two logged actions")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(sample_rows, n), replace=False))
    radius = float(np.quantile(nearest_distance(logged[idx], logged, exclude=idx), quantile))
    shares = np.array([float(np.mean(nearest_distance(pa[idx], logged) <= radius))
                       for pa in pi_action])
    return shares, radius
