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


def _linear_inputs(state: np.ndarray, action: np.ndarray, reward: np.ndarray,
                   next_state: np.ndarray, is_terminal: np.ndarray, pi_action: np.ndarray,
                   pi_next_action: np.ndarray, session: np.ndarray, first_rows: np.ndarray,
                   w: np.ndarray, keep: np.ndarray, gamma: float, ridge: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor]:
    """What a linear fit of E members x P policies starts from: the row sums of
    :func:`row_sums` under session weights ``w`` ``(E, n_sessions)``, each member's ridge
    ``lambda_e`` (E,) and ``v0`` (P, E, D), the members' weighted mean features of the
    initial states under each policy."""
    st = f64(state)
    mean, std = st.mean(0), st.std(0, unbiased=False).clamp_min(1e-6)
    gram, xr, cross = row_sums(state, action, reward, next_state, is_terminal, pi_next_action,
                               w[:, session], mean, std, gamma)
    lam = ridge * f64(w[:, session].sum(1))                                     # (E,)
    init_w = f64(w[:, keep])
    init_w = init_w / init_w.sum(1, keepdim=True).clamp_min(1e-12)             # (E, n0)
    s0 = (st[torch.as_tensor(first_rows[keep])] - mean) / std
    v0 = torch.stack([init_w @ quadratic_features(s0, f64(pi_action[p][first_rows[keep]]))
                      for p in range(pi_action.shape[0])])                     # (P, E, D)
    return gram, xr, cross, lam, v0


def _check_shapes(fn: str, names: Sequence[str], pi_action: np.ndarray,
                  pi_next_action: np.ndarray) -> None:
    if len(names) != pi_action.shape[0] or pi_next_action.shape != pi_action.shape:
        raise ValueError(f"{fn}: {len(names)} names for pi_action {pi_action.shape} and "
                         f"pi_next_action {pi_next_action.shape}")


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
    _check_shapes("fit_linear_ensemble", names, pi_action, pi_next_action)
    p_n, n_rows, k = pi_action.shape
    backups, w, keep = backups_and_weights(first_rows, n_rows, gamma, settings, seed)
    e_n = settings.members
    gram, xr, cross, lam, v0s = _linear_inputs(
        state, action, reward, next_state, is_terminal, pi_action, pi_next_action, session,
        first_rows, w, keep, gamma, settings.ridge)
    d_n = gram.shape[1]
    chol = torch.linalg.cholesky(gram + lam[:, None, None]
                                 * torch.eye(d_n, dtype=torch.float64))         # (E, D, D)
    reg = torch.cholesky_solve(xr.unsqueeze(2), chol)                           # (E, D, 1)
    values = np.zeros((p_n, e_n))
    history = np.zeros((backups, p_n))
    for p in range(p_n):
        v0 = v0s[p]                                                             # (E, D)
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


def fixed_point(gram: torch.Tensor, xr: torch.Tensor, cross: torch.Tensor, v0: torch.Tensor,
                lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The linear fixed point of one policy, from both sides (E members at once).

    With ``A_e = G_e + lambda_e I - C_e`` (the sums of :func:`row_sums`):

    * LSTDQ (FQE run to convergence): ``theta_e = A_e^-1 (Phi' W_e r)``, ``V_e = v0_e . theta_e``;
    * MWL (minimax weight learning with linear weights and linear test functions): the
      weights ``w(s, a) = phi(s, a) . beta_e`` that make
      ``sum_t W_t w_t (phi_t - gamma (1 - done_t) phi(s'_t, pi(s'_t))) = v0_e`` for every
      feature, i.e. ``beta_e = A_e^-T v0_e``: the ratio of the policy's discounted
      state-action occupancy to the logged rows (per unit of v0's session weight), and
      ``V_e = sum_t W_t w_t r_t = beta_e . (Phi' W_e r)``.

    The two values are equal (``v0' A^-1 b = (A^-T v0)' b``): with linear classes the
    marginalised-ratio estimator and FQE agree, so the ratio's use is as a diagnostic
    (:func:`occupancy_ess`). Returns ``(values (E,), theta (E, D), beta (E, D))``."""
    d_n = gram.shape[1]
    a = gram + lam[:, None, None] * torch.eye(d_n, dtype=gram.dtype) - cross
    # one matrix at a time: torch's batched LU (MKL getrf) on 203 x 203 matrices hangs once
    # torch.set_num_threads has been called (torch 2.15 / MKL 2024.2; the benchmark calls it)
    theta = torch.stack([torch.linalg.solve(a[e], xr[e]) for e in range(a.shape[0])])
    beta = torch.stack([torch.linalg.solve(a[e].T, v0[e]) for e in range(a.shape[0])])
    return (v0 * theta).sum(1), theta, beta


def occupancy_ess(gram: torch.Tensor, beta: torch.Tensor, feature_sum: torch.Tensor,
                  weight_sum: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample of the MWL weights ``w_t = phi_t . beta`` as a share of the
    (weighted) rows, ``(sum W w)^2 / (sum W w^2) / sum W``, from sums alone:
    ``sum W w = beta . feature_sum`` (``feature_sum = sum W phi``: ``G[:, :, 0]`` for
    :func:`quadratic_features`, whose first feature is 1) and ``sum W w^2 = beta' G beta``.
    1 when the weights are constant; small when the policy's occupancy rests on few logged
    rows. Negative weights (a linear ratio can dip below 0) count against it."""
    first = (beta * feature_sum).sum(1)
    square = (beta.unsqueeze(1) @ gram @ beta.unsqueeze(2)).reshape(-1)
    return first ** 2 / square.clamp_min(1e-300) / weight_sum


def fit_mwl_ensemble(names: Sequence[str], state: np.ndarray, action: np.ndarray,
                     reward: np.ndarray, next_state: np.ndarray, is_terminal: np.ndarray,
                     pi_action: np.ndarray, pi_next_action: np.ndarray, session: np.ndarray,
                     first_rows: np.ndarray, *, gamma: float, settings: EnsembleConfig,
                     seed: int) -> EnsembleFit:
    """E members of the linear fixed point (:func:`fixed_point`: LSTDQ = linear MWL) for each
    of P policies, on the same session resamples as the other kinds; solved exactly, so
    there is no backup curve (``solved``). ``occupancy_ess`` is the members' median
    :func:`occupancy_ess` per policy."""
    t0 = time.perf_counter()
    _check_shapes("fit_mwl_ensemble", names, pi_action, pi_next_action)
    p_n, n_rows, _ = pi_action.shape
    _, w, keep = backups_and_weights(first_rows, n_rows, gamma, settings, seed)
    gram, xr, cross, lam, v0s = _linear_inputs(
        state, action, reward, next_state, is_terminal, pi_action, pi_next_action, session,
        first_rows, w, keep, gamma, settings.ridge)
    weight_sum = f64(w[:, session].sum(1))
    values = np.zeros((p_n, settings.members))
    ess = np.zeros(p_n)
    for p in range(p_n):
        v, _, beta = fixed_point(gram, xr, cross[p], v0s[p], lam)
        values[p] = v.numpy()
        ess[p] = float(occupancy_ess(gram, beta, gram[:, :, 0], weight_sum).median())
    return EnsembleFit(policies=list(names), values=values, history=values.mean(1)[None, :],
                       backups=0, steps=0, seconds=time.perf_counter() - t0,
                       settings=settings, solved=True, occupancy_ess=ess)


def occupancy_shares(state: np.ndarray, action: np.ndarray, next_state: np.ndarray,
                     is_terminal: np.ndarray, pi_action: np.ndarray,
                     pi_next_action: np.ndarray, session: np.ndarray, first_rows: np.ndarray,
                     *, gamma: float, ridge: float) -> np.ndarray:
    """Per policy, :func:`occupancy_ess` of its MWL weights on the whole split (no resample):
    how many of the logged rows its discounted occupancy effectively rests on (the report's
    trust notes; :func:`fit_mwl_ensemble` gives the members' version). ``session`` and
    ``first_rows`` are :func:`mtf.ope.ensemble.session_index` of the rows."""
    n_rows = state.shape[0]
    w = np.ones((1, first_rows.size))
    keep = np.arange(first_rows.size)
    gram, _, cross, lam, v0s = _linear_inputs(
        state, action, np.zeros(n_rows), next_state, is_terminal, pi_action, pi_next_action,
        session, first_rows, w, keep, gamma, ridge)
    out = np.zeros(pi_action.shape[0])
    for p in range(pi_action.shape[0]):
        _, _, beta = fixed_point(gram, torch.zeros(1, gram.shape[1], dtype=gram.dtype),
                                 cross[p], v0s[p], lam)
        out[p] = float(occupancy_ess(gram, beta, gram[:, :, 0],
                                    f64(np.array([n_rows])))[0])
    return out
