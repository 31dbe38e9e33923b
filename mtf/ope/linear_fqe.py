"""Linear FQE members: the bootstrapped ensemble with a closed-form fit instead of gradient steps.

The MLP members of :mod:`mtf.ope.ensemble` are refitted by Adam with a few dozen steps per
Bellman backup; on the benchmark's worlds their spread is dominated by that optimisation noise
(docs/ope.md section 9), not by the data. Here Q is linear in a fixed feature map,

    Q(s, a) = theta . phi(s, a)
    phi(s, a) = [1, s~, a, a * a, a_i a_j (i < j), s~ (x) a]          (s~: standardised state)

i.e. quadratic in the fusion action, with every state feature allowed to tilt every action
weight's effect (the same shape as the learners' quadratic critic). Each Bellman backup is an
exact weighted ridge regression, so a member is a deterministic function of its session
resample and the spread across members is the data's sampling error alone:

    G_e   = Phi' W_e Phi + lambda_e I          (lambda_e = ridge * sum of member e's row weights)
    C_ep  = Phi' W_e (gamma (1 - done) Phi_pi')  (Phi_pi': phi(s', pi_p(s')))
    theta <- G_e^-1 (Phi' W_e r) + G_e^-1 C_ep theta        one backup, from theta = 0

after ``backups`` iterations theta holds the discounted rewards of the next ``backups`` steps;
``V_e(pi) = sum_i w_ei phi(s0_i, pi(s0_i)) . theta / sum_i w_ei``. The ridge keeps actions the
data do not reach from getting large coefficients (pessimism comes from the members' spread
there, which is wide). Everything the fit needs are sums over rows (``G``, ``C``, ``Phi' W r``),
so the cost is one pass over the split per member, then ``D x D`` algebra (D = 1 + S + k +
k(k+1)/2 + S k; 203 for the default 25 features and 6 tasks).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from mtf.ope.config import EnsembleConfig
from mtf.ope.ensemble import EnsembleFit, backups_and_weights

_CHUNK_ROWS = 4096     # rows per block of the sums (memory: members x rows x features)


def f64(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float64))


def feature_dim(state_dim: int, action_dim: int) -> int:
    """Length of :func:`quadratic_features`."""
    k = action_dim
    return 1 + state_dim + k + k * (k + 1) // 2 + state_dim * k


def quadratic_features(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``(N, S)`` standardised states and ``(N, k)`` actions -> ``(N, D)``:
    ``[1, s, a, a_i a_j (i <= j), s_i a_j]``."""
    n, k = action.shape
    iu = torch.triu_indices(k, k)
    pairs = (action.unsqueeze(2) * action.unsqueeze(1))[:, iu[0], iu[1]]
    cross = (state.unsqueeze(2) * action.unsqueeze(1)).reshape(n, -1)
    return torch.cat([torch.ones(n, 1, dtype=state.dtype), state, action, pairs, cross], dim=1)


def row_sums(state: np.ndarray, action: np.ndarray, reward: np.ndarray,
             next_state: np.ndarray, is_terminal: np.ndarray, pi_next_action: np.ndarray,
             row_weight: np.ndarray, mean: torch.Tensor, std: torch.Tensor, gamma: float,
             chunk_rows: int = _CHUNK_ROWS
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sums a linear fit needs, over row blocks (memory does not grow with the split):
    ``G_e = Phi' W_e Phi`` (E, D, D), ``Phi' W_e r`` (E, D) and
    ``C_pe = Phi' W_e (gamma (1 - done) Phi_p')`` (P, E, D, D), for row weights ``(E, N)``."""
    n_rows = state.shape[0]
    p_n, e_n = pi_next_action.shape[0], row_weight.shape[0]
    d_n = feature_dim(state.shape[1], action.shape[1])
    gram = torch.zeros(e_n, d_n, d_n, dtype=torch.float64)
    xr = torch.zeros(e_n, d_n, dtype=torch.float64)
    cross = torch.zeros(p_n, e_n, d_n, d_n, dtype=torch.float64)
    for lo in range(0, n_rows, chunk_rows):
        hi = min(lo + chunk_rows, n_rows)
        phi = quadratic_features((f64(state[lo:hi]) - mean) / std, f64(action[lo:hi]))
        wphi_t = (f64(row_weight[:, lo:hi]).unsqueeze(2) * phi).transpose(1, 2)  # (E, D, n)
        gram += wphi_t @ phi
        xr += wphi_t @ f64(reward[lo:hi])
        nst = (f64(next_state[lo:hi]) - mean) / std
        disc = gamma * (1.0 - f64(is_terminal[lo:hi]))
        for p in range(p_n):
            cross[p] += wphi_t @ (quadratic_features(nst, f64(pi_next_action[p, lo:hi]))
                                  * disc.unsqueeze(1))
    return gram, xr, cross


def fit_linear_ensemble(names: Sequence[str], state: np.ndarray, action: np.ndarray,
                        reward: np.ndarray, next_state: np.ndarray, is_terminal: np.ndarray,
                        pi_action: np.ndarray, pi_next_action: np.ndarray, session: np.ndarray,
                        first_rows: np.ndarray, *, gamma: float, settings: EnsembleConfig,
                        seed: int, progress: bool = False) -> EnsembleFit:
    """E linear FQE members for each of P policies (module docstring); the arguments and the
    returned :class:`~mtf.ope.ensemble.EnsembleFit` are those of
    :func:`mtf.ope.ensemble.fit_ensemble`, so the gate and the report treat both alike
    (``steps`` is 0: there are no gradient steps)."""
    t0 = time.perf_counter()
    p_n, n_rows, k = pi_action.shape
    if len(names) != p_n or pi_next_action.shape != pi_action.shape:
        raise ValueError(f"fit_linear_ensemble: {len(names)} names for pi_action "
                         f"{pi_action.shape} and pi_next_action {pi_next_action.shape}")
    backups, w, keep = backups_and_weights(first_rows, n_rows, gamma, settings, seed)
    e_n = settings.members

    st = f64(state)
    mean, std = st.mean(0), st.std(0, unbiased=False).clamp_min(1e-6)
    gram, xr, cross = row_sums(state, action, reward, next_state, is_terminal, pi_next_action,
                               w[:, session], mean, std, gamma)
    d_n = gram.shape[1]
    row_w_sum = f64(w[:, session].sum(1))                                       # (E,)
    chol = torch.linalg.cholesky(gram + settings.ridge * row_w_sum[:, None, None]
                                 * torch.eye(d_n, dtype=torch.float64))         # (E, D, D)
    reg = torch.cholesky_solve(xr.unsqueeze(2), chol)                           # (E, D, 1)
    init_w = f64(w[:, keep])
    init_w = init_w / init_w.sum(1, keepdim=True).clamp_min(1e-12)             # (E, n0)
    s0 = (st[torch.as_tensor(first_rows[keep])] - mean) / std
    values = np.zeros((p_n, e_n))
    history = np.zeros((backups, p_n))
    for p in range(p_n):
        v0 = init_w @ quadratic_features(s0, f64(pi_action[p][first_rows[keep]]))   # (E, D)
        step = torch.cholesky_solve(cross[p], chol)                             # (E, D, D)
        theta = torch.zeros(e_n, d_n, 1, dtype=torch.float64)
        for b in range(backups):
            theta = reg + step @ theta
            history[b, p] = float((v0 * theta.squeeze(2)).sum(1).mean())
        values[p] = (v0 * theta.squeeze(2)).sum(1).numpy()
        if progress:
            print(f"  linear FQE: policy {p + 1}/{p_n} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return EnsembleFit(policies=list(names), values=values, history=history, backups=backups,
                       steps=0, seconds=time.perf_counter() - t0, settings=settings)
