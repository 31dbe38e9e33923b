"""Bootstrapped FQE ensembles: intervals that include the fit's own error, pessimism as a quantile.

The conservative FQE of docs/method.md section 7 fits one Q network per policy, and its
bootstrap resamples only the initial states with Q held fixed, so its intervals miss the error
of the fit itself (docs/ope.md section 8 measures it). Here every policy gets E members; member
e is fitted on its own Poisson(1) resample of the split's **sessions** (Kostrikov & Nachum 2020:
the spread of refitted values across resamples is the estimator's sampling distribution,
fit error included). The resample of member e is shared by all policies, so differences
between policies are paired member by member:

    V_e(pi)   = sum_i w_ei Q_e(s0_i, pi(s0_i)) / sum_i w_ei        (w_ei ~ Poisson(1))
    estimate  = mean_e V_e(pi)
    interval  = estimate -+ z_{(1+level)/2} * sd_e V_e(pi)          (normal bootstrap interval)
    lower     = estimate -  z_q * sd_e V_e(pi)                      (pessimism: one-sided quantile)
    D_e       = V_e(pi) - V_e(logging);  go iff mean D - z_q sd D > -margin |estimate(logging)|

All P x E networks train at once as one batched MLP (``torch.baddbmm``): on a CPU, G small
networks cost about as much as one wide one, which is what makes refitting affordable.

Convergence is a checked property. The number of Bellman backups (hard copies of the target
network) follows the data: a value needs one backup per step it propagates, so the fit runs
``min(ceil(log(tol) / log(gamma)), q99 session length) + extra`` backups (:func:`n_backups_for`),
and :func:`converged` reports whether the mean value still moved by more than ``tol`` of its
size over the last quarter of the backups.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mtf.ope.config import EnsembleConfig
from mtf.ope.rules import ensemble_go

_MAX_HORIZON = 100.0


def n_backups_for(session_lengths: np.ndarray, gamma: float, tol: float, extra: int) -> int:
    """Bellman backups a fit needs: the steps a value must travel, capped by the discount.

    ``min(ceil(log(tol) / log(gamma)), q99 of the session lengths) + extra``: after n backups
    Q holds the rewards of the next n steps; beyond ``log(tol) / log(gamma)`` steps less than
    ``tol`` of the discounted weight remains, and hardly any session runs past its 99th
    percentile length.
    """
    lengths = np.asarray(session_lengths)
    if lengths.size == 0:
        raise ValueError("n_backups_for needs at least one session")
    horizon = _MAX_HORIZON * 10 if gamma >= 1.0 else math.log(tol) / math.log(gamma)
    q99 = float(np.quantile(lengths, 0.99))
    return int(math.ceil(min(horizon, q99))) + int(extra)


class BatchedMLP(nn.Module):
    """G independent ReLU MLPs evaluated together: ``(G, B, in) -> (G, B)``, or
    ``(G, B, out_dim)`` when ``out_dim`` > 1.

    Hidden layers start like ``nn.Linear`` (uniform +-1/sqrt(fan_in)); the output layer starts
    at zero, so every Q starts at 0 (as :class:`mtf.ope.fqe.QNetwork`)."""

    def __init__(self, groups: int, in_dim: int, hidden: Sequence[int],
                 generator: torch.Generator, out_dim: int = 1) -> None:
        super().__init__()
        self.out_dim = out_dim
        dims = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            bound = 1.0 / math.sqrt(d_in)
            last = i == len(dims) - 2
            w = torch.zeros(groups, d_in, d_out) if last else \
                (torch.rand(groups, d_in, d_out, generator=generator) * 2 - 1) * bound
            b = torch.zeros(groups, 1, d_out) if last else \
                (torch.rand(groups, 1, d_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < n - 1:
                x = torch.relu(x)
        return x.squeeze(-1) if self.out_dim == 1 else x


@dataclass(frozen=True)
class EnsembleFit:
    """Member values ``values[p, e]`` and the fit's history (mean V per backup)."""

    policies: list[str]
    values: np.ndarray                 # (P, E) V_e(pi_p) on member e's resampled initial states
    history: np.ndarray                # (backups, P) mean over members of V after each backup
    backups: int
    steps: int
    seconds: float
    settings: EnsembleConfig = field(repr=False)
    support: np.ndarray | None = None   # (P,) share of pi's actions near logged ones, if measured
    components: dict[str, "EnsembleFit"] = field(default_factory=dict, repr=False)
    #                                    a hybrid fit's own fits per model ("mlp", "linear")
    solved: bool = False               # a closed-form fixed point (mwl): nothing to converge
    occupancy_ess: np.ndarray | None = None   # (P,) effective share of the logged rows the
    #                                    policy's discounted occupancy rests on (MWL weights,
    #                                    mtf.ope.linear_fqe.occupancy_ess), if measured

    def converged(self, tol: float | None = None) -> np.ndarray:
        """Per policy: did the mean value move by less than ``tol`` (default the settings'
        horizon_tol) of its size over the last quarter of the backups (every kind's own fit,
        for members of several kinds)?"""
        tol = self.settings.horizon_tol if tol is None else tol
        if self.solved:
            return np.ones(len(self.policies), dtype=bool)
        if len(self.components) > 1:      # a member of several kinds: each kind must settle
            return np.logical_and.reduce([c.converged(tol) for c in self.components.values()])
        h = self.history
        if h.shape[0] < 4:
            return np.zeros(h.shape[1], dtype=bool)
        start = h[-(h.shape[0] // 4) - 1]
        move = np.abs(h[-1] - start)
        return move <= tol * np.maximum(np.abs(h[-1]), 1e-9)

    def summary(self, reference: str, *, level: float = 0.95, margin: float = 0.01
                ) -> dict[str, dict[str, float | bool]]:
        """Per policy: estimate, interval, lower (pessimistic) value, paired difference to
        ``reference`` with its lower bound, and the go decision (reference excluded)."""
        z_ci = NormalDist().inv_cdf(0.5 + level / 2)
        z_q = NormalDist().inv_cdf(1.0 - self.settings.lower_quantile)
        ref = self.values[self.policies.index(reference)]
        ref_est = float(ref.mean())
        ok = self.converged()
        out: dict[str, dict[str, float | bool]] = {}
        for i, name in enumerate(self.policies):
            v = self.values[i]
            est, sd = float(v.mean()), float(v.std(ddof=1))
            d = v - ref
            d_mean, d_sd = float(d.mean()), float(d.std(ddof=1))
            row: dict[str, float | bool] = {
                "estimate": est, "sd": sd, "ci_low": est - z_ci * sd, "ci_high": est + z_ci * sd,
                "lower": est - z_q * sd, "diff": d_mean, "diff_sd": d_sd,
                "diff_lower": d_mean - z_q * d_sd, "converged": bool(ok[i]),
                "spread": d_sd / max(abs(ref_est), 1e-12)}
            if self.support is not None:
                row["support"] = float(self.support[i])
            if self.occupancy_ess is not None:
                row["occupancy_ess"] = float(self.occupancy_ess[i])
            if name != reference:
                row["go"] = ensemble_go(float(row["diff_lower"]), float(row["spread"]),
                                        margin * abs(ref_est), self.settings.max_spread,
                                        None if self.support is None else
                                        float(self.support[i]), self.settings.min_support)
            out[name] = row
        return out


def padded_histories(histories: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Value curves of different lengths (backups, rollout steps) made one length: a shorter
    curve keeps its last value (its fit has ended there)."""
    n = max(h.shape[0] for h in histories)
    return [np.concatenate([h, np.repeat(h[-1:], n - h.shape[0], axis=0)]) if h.shape[0] < n
            else h for h in histories]


def mean_of_kinds(fits: Mapping[str, EnsembleFit]) -> EnsembleFit:
    """One fit whose member e is the mean of every kind's member e (each kind fitted on the
    same session resample): the mean values and value curves, the longest horizon, the most
    gradient steps, the summed time; ``components`` keeps the kinds' own fits (the
    convergence check asks each of them)."""
    parts = list(fits.values())
    return replace(parts[0], values=np.mean([f.values for f in parts], axis=0),
                   history=np.mean(padded_histories([f.history for f in parts]), axis=0),
                   backups=max(f.backups for f in parts), steps=max(f.steps for f in parts),
                   seconds=sum(f.seconds for f in parts), components=dict(fits),
                   solved=all(f.solved for f in parts))


def session_index(session_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by session -> (session number per row (N,), first row of each session)."""
    sid = np.asarray(session_id)
    new = np.ones(sid.size, dtype=bool)
    new[1:] = sid[1:] != sid[:-1]
    return np.cumsum(new) - 1, np.flatnonzero(new)


def backups_and_weights(first_rows: np.ndarray, n_rows: int, gamma: float,
                        settings: EnsembleConfig, seed: int
                        ) -> tuple[int, np.ndarray, np.ndarray]:
    """What every member fit shares: the number of Bellman backups (``settings.backups`` or
    :func:`n_backups_for` the split's sessions), the members' Poisson(1) session weights
    ``(E, n)`` (all ones without ``settings.bootstrap``) and the sorted sessions whose first
    state enters the value (a seeded subsample above ``settings.max_initial_states``)."""
    rng = np.random.default_rng(seed)
    n_sess = first_rows.size
    e_n = settings.members
    w = rng.poisson(1.0, size=(e_n, n_sess)).astype(np.float64) if settings.bootstrap \
        else np.ones((e_n, n_sess))
    w[w.sum(axis=1) == 0] = 1.0      # an empty resample (tiny data) falls back to all sessions
    if settings.backups:
        backups = settings.backups
    else:
        lengths = np.diff(np.append(first_rows, n_rows))
        backups = n_backups_for(lengths, gamma, settings.horizon_tol, settings.extra_backups)
    if n_sess > settings.max_initial_states:
        keep = np.sort(rng.choice(n_sess, size=settings.max_initial_states, replace=False))
    else:
        keep = np.arange(n_sess)
    return backups, w, keep


def fit_ensemble(names: Sequence[str], state: np.ndarray, action: np.ndarray,
                 reward: np.ndarray, next_state: np.ndarray, is_terminal: np.ndarray,
                 pi_action: np.ndarray, pi_next_action: np.ndarray, session: np.ndarray,
                 first_rows: np.ndarray, *, gamma: float, settings: EnsembleConfig,
                 seed: int, device: str = "cpu", progress: bool = False) -> EnsembleFit:
    """Fit E FQE members for each of P policies at once (see the module docstring).

    Shapes: ``state``/``next_state`` (N, S), ``action`` (N, k), ``reward``/``is_terminal``
    (N,), ``pi_action``/``pi_next_action`` (P, N, k) (policy p's actions at s and s'),
    ``session`` (N,) session number 0..n-1 of each row, ``first_rows`` (n,) the row of each
    session's first step.
    """
    t0 = time.perf_counter()
    s = settings
    p_n, n_rows, k = pi_action.shape
    if len(names) != p_n or pi_next_action.shape != pi_action.shape:
        raise ValueError(f"fit_ensemble: {len(names)} names for pi_action {pi_action.shape} "
                         f"and pi_next_action {pi_next_action.shape}")
    e_n = s.members
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    backups, w, keep = backups_and_weights(first_rows, n_rows, gamma, s, seed)

    def f32(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=dev)

    st, nst = f32(state), f32(next_state)
    mean, std = st.mean(0), st.std(0, unbiased=False).clamp_min(1e-6)
    st, nst = (st - mean) / std, (nst - mean) / std
    act, pa, pna = f32(action), f32(pi_action), f32(pi_next_action)
    rew, not_done = f32(reward), 1.0 - f32(is_terminal)
    horizon = _MAX_HORIZON if gamma >= 1.0 else min(1.0 / (1.0 - gamma), _MAX_HORIZON)
    scale = max(float(rew.abs().mean()), 1e-6) * horizon
    row_w = torch.as_tensor(w[:, session], dtype=torch.float64)     # (E, N)
    cum = torch.cumsum(row_w, dim=1)
    init_rows = torch.as_tensor(first_rows[keep], device=dev)
    init_w = torch.as_tensor(w[:, keep], dtype=torch.float32, device=dev)   # (E, n0)
    init_w = init_w / init_w.sum(1, keepdim=True).clamp_min(1e-9)

    g_n = p_n * e_n
    q = BatchedMLP(g_n, st.shape[1] + k, s.hidden, gen).to(dev)
    q_t = BatchedMLP(g_n, st.shape[1] + k, s.hidden, gen).to(dev)
    q_t.load_state_dict(q.state_dict())
    q_t.requires_grad_(False)
    opt = torch.optim.Adam(q.parameters(), lr=s.lr)

    def qv(net: nn.Module, states: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        # states (E, m, S) shared by the policies, acts (P, E, m, k) -> Q (P, E, m)
        m = states.shape[1]
        x = torch.cat([states.unsqueeze(0).expand(p_n, -1, -1, -1), acts], dim=-1)
        return scale * net(x.reshape(g_n, m, -1)).reshape(p_n, e_n, m)

    @torch.no_grad()
    def values() -> torch.Tensor:
        s0 = st[init_rows].unsqueeze(0).expand(e_n, -1, -1)             # (E, n0, S)
        a0 = pa[:, init_rows].unsqueeze(1).expand(-1, e_n, -1, -1)       # (P, E, n0, k)
        return (qv(q, s0, a0) * init_w.unsqueeze(0)).sum(-1)             # (P, E)

    history = []
    steps = backups * s.steps_per_backup
    m = s.batch_size
    for step in range(1, steps + 1):
        u = torch.rand(e_n, m, generator=gen, dtype=torch.float64) * cum[:, -1:]
        idx = torch.searchsorted(cum, u).clamp_max(n_rows - 1).to(dev)   # (E, m) rows
        s_b, ns_b = st[idx], nst[idx]                                    # (E, m, S)
        with torch.no_grad():
            y = rew[idx] + gamma * not_done[idx] * qv(q_t, ns_b, pna[:, idx])   # (P, E, m)
        a_b = act[idx].unsqueeze(0).expand(p_n, -1, -1, -1)
        if s.alpha > 0:
            both = qv(q, torch.cat([s_b, s_b], 1), torch.cat([a_b, pa[:, idx]], 2))
            q_sa, q_pi = both[..., :m], both[..., m:]
            loss = (q_sa - y).pow(2).mean() * g_n + s.alpha * (q_pi - q_sa).mean() * g_n
        else:
            loss = (qv(q, s_b, a_b) - y).pow(2).mean() * g_n   # sum over networks
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % s.steps_per_backup == 0:
            q_t.load_state_dict(q.state_dict())
            history.append(values().mean(1).cpu().numpy())
            if progress and len(history) % 10 == 0:
                print(f"  ensemble FQE: backup {len(history)}/{backups} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    vals = values().double().cpu().numpy()
    return EnsembleFit(policies=list(names), values=vals, history=np.array(history),
                       backups=backups, steps=steps, seconds=time.perf_counter() - t0,
                       settings=s)
