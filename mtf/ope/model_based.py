"""Model-based OPE members: learned session dynamics, rolled out under the target policy.

FQE learns a policy's value by bootstrapping its own estimates backwards through the data; where
a policy's actions change *how long* a session lasts (clickbait: more clicks now, a faster exit
later), that long-term cost must travel through every backup, and on the benchmark's
long-session worlds it did not arrive (docs/ope.md section 9: ``myopic_half``). A model-based
estimate (Paduraru 2013; Voloshin et al. 2021's "MBased") instead learns one step of the
session,

    m_e(s, a) -> (s' - s, r, P(done))       a batched MLP per member e, on its own resample

and computes the policy's value by rolling the model forward from the split's first states:

    s_0 = logged first state,  a_t = pi(s_t),  (d_t, r_t, p_t) = m_e(s_t, a_t)
    V_e(pi) = sum_t gamma^t alive_t r_t,   alive_0 = 1,  alive_{t+1} = alive_t (1 - p_t)
    s_{t+1} = clip(s_t + d_t, range of the logged states)

The exit probability is carried as an expectation (no sampled terminations, so no rollout
noise), the state as the model's mean prediction, clipped to the logged range so a long rollout
cannot walk off into states the data never had. Member e is fitted on the same Poisson(1)
session resample as the FQE members (:func:`mtf.ope.ensemble.backups_and_weights`), so the
returned :class:`~mtf.ope.ensemble.EnsembleFit` is read by the same gate, quantile and report.
The model does not depend on the policy: one fit per member serves every policy, and the
cost of a policy is its rollout (``horizon`` steps of the policy and the model).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mtf.ope.config import EnsembleConfig
from mtf.ope.ensemble import _MAX_HORIZON, BatchedMLP, EnsembleFit, backups_and_weights


def rollout_horizon(gamma: float, tol: float, backups: int = 0) -> int:
    """Steps rolled out: ``backups`` when set, else the steps after which less than ``tol``
    of the discounted weight is left (``log(tol) / log(gamma)``, 90 at gamma 0.95), at most
    100."""
    if backups:
        return int(backups)
    if gamma >= 1.0:
        return int(_MAX_HORIZON)
    return int(min(math.ceil(math.log(tol) / math.log(gamma)), _MAX_HORIZON))


class Dynamics(nn.Module):
    """E one-step session models on standardised states: ``(E, B, S) x (E, B, k)`` ->
    standardised state change ``(E, B, S)``, standardised reward ``(E, B)`` and exit logit
    ``(E, B)``. ``scales`` holds what turns them back into raw units."""

    def __init__(self, members: int, state_dim: int, action_dim: int, hidden: Sequence[int],
                 generator: torch.Generator) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.net = BatchedMLP(members, state_dim + action_dim, hidden, generator,
                              out_dim=state_dim + 2)

    def forward(self, state: torch.Tensor, action: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(torch.cat([state, action], dim=-1))
        s = self.state_dim
        return out[..., :s], out[..., s], out[..., s + 1]


def dynamics_loss(model: Dynamics, state: torch.Tensor, action: torch.Tensor,
                  delta: torch.Tensor, reward: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Sum over members of the mean per-row loss: squared error of the state change (rows
    that did not end the session; after an exit there is no next state), squared error of the
    reward and the exit's cross-entropy, all in standardised units."""
    d_hat, r_hat, logit = model(state, action)
    state_err = (d_hat - delta).pow(2).mean(-1) * (1.0 - done)
    per_row = state_err + (r_hat - reward).pow(2) + \
        F.binary_cross_entropy_with_logits(logit, done, reduction="none")
    return per_row.mean(-1).sum()


def _policy_action(module: Any, states: torch.Tensor) -> torch.Tensor:
    """``pi(states)`` for raw float32 states of any leading shape, clipped to the box (a
    policy meets model states it may never have seen). The policies are CPU modules (exported
    TorchScript): states on another device go to the CPU and the actions come back."""
    flat = states.reshape(-1, states.shape[-1]).float().cpu().contiguous()
    with torch.inference_mode():
        act = module(flat)
    return act.clamp(-1.0, 1.0).reshape(*states.shape[:-1], -1).to(states.device)


@dataclass(frozen=True)
class SessionScales:
    """What maps the model's standardised units to raw ones: state mean / sd, the sd of the
    standardised state change, reward mean / sd, and the logged (standardised) state range."""

    mean: torch.Tensor
    std: torch.Tensor
    delta_std: torch.Tensor
    reward_mean: torch.Tensor
    reward_std: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor


@torch.no_grad()
def rollout_values(model: Dynamics, module: Any, start: torch.Tensor, init_w: torch.Tensor,
                   scales: SessionScales, gamma: float, horizon: int
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """Each member's expected discounted return of ``module`` from the standardised first
    states ``start`` (E, n0, S), averaged with the members' initial-state weights ``init_w``
    (E, n0) (rows summing to 1): ``(E,)`` values and the members' mean value accumulated after
    each step ``(horizon,)``."""
    x = start.clone()
    e_n, n0 = x.shape[0], x.shape[1]
    alive = torch.ones(e_n, n0, device=x.device)
    total = torch.zeros(e_n, device=x.device)
    curve = np.zeros(horizon)
    for t in range(horizon):
        a = _policy_action(module, x * scales.std + scales.mean)
        d_hat, r_hat, logit = model(x, a)
        reward = r_hat * scales.reward_std + scales.reward_mean
        total += (gamma ** t) * (alive * reward * init_w).sum(1)
        alive = alive * (1.0 - torch.sigmoid(logit))
        x = torch.maximum(torch.minimum(x + d_hat * scales.delta_std, scales.high), scales.low)
        curve[t] = float(total.mean())
    return total, curve


def fit_model_ensemble(names: Sequence[str], modules: Sequence[Any], state: np.ndarray,
                       action: np.ndarray, reward: np.ndarray, next_state: np.ndarray,
                       is_terminal: np.ndarray, session: np.ndarray, first_rows: np.ndarray, *,
                       gamma: float, settings: EnsembleConfig, seed: int,
                       device: str = "cpu", progress: bool = False) -> EnsembleFit:
    """E model-based members (module docstring) for each of P policies.

    ``modules``: each policy as a module mapping raw float32 states ``(B, S)`` to actions
    ``(B, k)``; the other arrays are those of :func:`mtf.ope.ensemble.fit_ensemble`.
    ``history[t, p]`` is the mean over members of the value accumulated up to rollout step
    ``t``, so :meth:`EnsembleFit.converged` says whether the tail of the rollout still moved
    the value (it stops moving when the sessions have ended in expectation or the discount has
    used up the horizon). ``backups`` of the result is the rollout horizon, ``steps`` the
    model's gradient steps. The models train and roll out on ``device`` (``ope.device``);
    the minibatch draws stay on the CPU, so every device sees the same rows.
    """
    t0 = time.perf_counter()
    if len(names) != len(modules):
        raise ValueError(f"fit_model_ensemble: {len(names)} names for {len(modules)} modules")
    s = settings
    e_n, n_rows = s.members, state.shape[0]
    gen = torch.Generator().manual_seed(seed)
    _, w, keep = backups_and_weights(first_rows, n_rows, gamma, s, seed)
    horizon = rollout_horizon(gamma, s.horizon_tol, s.backups)

    def f32(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))

    raw = f32(state)
    mean, std = raw.mean(0), raw.std(0, unbiased=False).clamp_min(1e-6)
    st = (raw - mean) / std
    done = f32(is_terminal)
    delta = (f32(next_state) - mean) / std - st
    moving = done < 0.5
    d_std = delta[moving].std(0, unbiased=False).clamp_min(1e-3) if bool(moving.any()) \
        else torch.ones(st.shape[1])
    delta = torch.where(moving.unsqueeze(1), delta / d_std, torch.zeros_like(delta))
    rew = f32(reward)
    r_mean, r_std = rew.mean(), rew.std(unbiased=False).clamp_min(1e-6)
    rew = (rew - r_mean) / r_std
    act = f32(action)
    dev = torch.device(device)
    st_d, act_d, delta_d, rew_d, done_d = (x.to(dev) for x in (st, act, delta, rew, done))

    model = Dynamics(e_n, st.shape[1], act.shape[1], s.model_hidden, gen).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    # the rate decays to 0: a value is a long product of exit probabilities, so the jitter
    # of a constant-rate final iterate (a few hundredths in a logit) would move it by percents
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / s.model_steps)
    cum = torch.cumsum(torch.as_tensor(w[:, session], dtype=torch.float64), dim=1)   # (E, N)
    for step in range(1, s.model_steps + 1):
        u = torch.rand(e_n, s.batch_size, generator=gen, dtype=torch.float64) * cum[:, -1:]
        idx = torch.searchsorted(cum, u).clamp_max(n_rows - 1).to(dev)              # (E, m)
        loss = dynamics_loss(model, st_d[idx], act_d[idx], delta_d[idx], rew_d[idx],
                             done_d[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and step % 1000 == 0:
            print(f"  dynamics model: step {step}/{s.model_steps}, loss "
                  f"{float(loss) / e_n:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.requires_grad_(False)

    init_w = torch.as_tensor(w[:, keep], dtype=torch.float32)
    init_w = (init_w / init_w.sum(1, keepdim=True).clamp_min(1e-9)).to(dev)         # (E, n0)
    start = st[torch.as_tensor(first_rows[keep])].unsqueeze(0).expand(e_n, -1, -1)  # (E, n0, S)
    scales = SessionScales(*(x.to(dev) for x in (mean, std, d_std, r_mean, r_std,
                                                 st.min(0).values, st.max(0).values)))
    values = np.zeros((len(names), e_n))
    history = np.zeros((horizon, len(names)))
    for p, module in enumerate(modules):
        total, history[:, p] = rollout_values(model, module, start.to(dev), init_w, scales,
                                              gamma, horizon)
        values[p] = total.double().cpu().numpy()
        if progress:
            print(f"  model-based rollouts: policy {p + 1}/{len(names)} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return EnsembleFit(policies=list(names), values=values, history=history, backups=horizon,
                       steps=s.model_steps, seconds=time.perf_counter() - t0, settings=s)
