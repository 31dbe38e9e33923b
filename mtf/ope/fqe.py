"""Fitted Q evaluation (FQE), plain and conservative (docs/method.md section 7).

For a deterministic target policy pi, Q is fitted on the evaluation split by K gradient steps
("iterations") on minibatches of m transitions (s, a, r, s', done):

    y   = r + gamma * (1 - done) * Q_k(s', pi(s'))                  (TD target, no gradient)
    T   = mean (Q(s, a) - y)^2                                       (FQE / TD loss)
    R   = mean [Q(s, pi(s)) - Q(s, a)]                               (CQL regulariser)
    loss = alpha * R + T

``Q_k`` is a frozen copy of Q, replaced by a hard copy every ``target_update_every`` steps
(so K / target_update_every Bellman backups; d3rlpy's FQE does the same). ``done`` is
``is_terminal`` only: truncated steps bootstrap (docs/contract.md section 2). alpha = 0 gives
plain FQE
(the direct method); alpha > 0 pushes Q down on the evaluated policy's actions and up on the
logged ones, so the value of a policy that leaves the data's support is under-, not
over-estimated: the Conservative-OPEstimator. The value estimate is

    V(pi) = mean_{s0} Q(s0, pi(s0))   over initial states of the split's sessions.

Parameterisation [D]: ``Q(s, a) = scale * f([(s - mean) / std, a])`` with ``f`` an MLP
(:func:`mtf.rl.networks.mlp`), state statistics from the fitted rows and
``scale = mean|r| * min(1 / (1 - gamma), 100)``, a rough size of a return, and the output layer
initialised to zero (Q = 0 at the start). ``f`` is then O(1),
so Adam's fixed step size (lr 1e-4) moves Q at a rate proportional to the reward scale, while
the loss stays in reward units and alpha keeps the paper's meaning.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mtf.rl.networks import mlp

logger = logging.getLogger(__name__)

_MAX_HORIZON = 100.0     # cap of 1 / (1 - gamma) in the Q scale (gamma may be 1)
CURVE_STATES = 4096     # initial states used for the V(s0) fit curve


class QNetwork(nn.Module):
    """``Q(s, a) = scale * f([(s - mean) / std, a])``, shape ``(B,)``; raw states in."""

    def __init__(self, state_dim: int, action_dim: int, hidden: Sequence[int],
                 state_mean: torch.Tensor, state_std: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.f = mlp(state_dim + action_dim, hidden, 1)
        # Q starts at exactly 0 (not at +-scale * O(0.1) noise); hidden layers keep their init.
        nn.init.zeros_(self.f[-1].weight)
        nn.init.zeros_(self.f[-1].bias)
        self.register_buffer("state_mean", state_mean.float().reshape(state_dim))  # (S,)
        self.register_buffer("state_std", state_std.float().reshape(state_dim))    # (S,)
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        s = (state - self.state_mean) / self.state_std
        return self.scale * self.f(torch.cat([s, action], dim=1)).squeeze(1)  # (B, 1) -> (B,)


@dataclass(frozen=True)
class FqeData:
    """Transitions of the evaluation split with the target policy's actions, float32 tensors."""

    state: torch.Tensor           # (N, S) raw states
    action: torch.Tensor          # (N, k) logged actions in [-1, 1]
    reward: torch.Tensor          # (N,)
    next_state: torch.Tensor      # (N, S)
    not_done: torch.Tensor        # (N,) 1 - is_terminal (truncated steps bootstrap)
    pi_action: torch.Tensor       # (N, k) pi(s)
    pi_next_action: torch.Tensor  # (N, k) pi(s')
    is_initial: torch.Tensor      # (N,) bool: first step of a session

    def __post_init__(self) -> None:
        n = self.state.shape[0]
        for name in ("action", "reward", "next_state", "not_done", "pi_action",
                     "pi_next_action", "is_initial"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"FqeData.{name} has {getattr(self, name).shape[0]} rows, "
                                 f"state has {n}")
        if n == 0:
            raise ValueError("FqeData needs at least one transition")

    def __len__(self) -> int:
        return int(self.state.shape[0])

    @staticmethod
    def from_numpy(state: np.ndarray, action: np.ndarray, reward: np.ndarray,
                   next_state: np.ndarray, is_terminal: np.ndarray, pi_action: np.ndarray,
                   pi_next_action: np.ndarray, is_initial: np.ndarray) -> "FqeData":
        def f32(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))

        return FqeData(state=f32(state), action=f32(action), reward=f32(reward),
                       next_state=f32(next_state),
                       not_done=f32(1.0 - np.asarray(is_terminal, dtype=np.float32)),
                       pi_action=f32(pi_action), pi_next_action=f32(pi_next_action),
                       is_initial=torch.as_tensor(np.asarray(is_initial, dtype=bool)))


@dataclass(frozen=True)
class FqeSettings:
    """Hyper-parameters of one fit (paper defaults come from :class:`mtf.ope.config.OpeConfig`)."""

    alpha: float                  # CQL weight; 0 = plain FQE
    gamma: float
    lr: float = 1e-4
    batch_size: int = 512
    n_iterations: int = 5000
    hidden: tuple[int, ...] = (256, 256)
    target_update_every: int = 100
    log_every: int = 100
    seed: int = 0
    device: str = "cpu"           # where the fit runs; the returned network is on the CPU


@dataclass(frozen=True)
class FqeFit:
    """A fitted Q network (eval mode, CPU) and its fit curve."""

    q: QNetwork
    settings: FqeSettings
    curve: list[dict[str, float]] = field(default_factory=list)  # step, td, reg, q_data, q_pi, v0
    seconds: float = 0.0

    @property
    def conservative(self) -> bool:
        return self.settings.alpha > 0


# ---- the maths, as functions over tensors --------------------------------------------------------

@torch.no_grad()
def td_target(q_target: nn.Module, reward: torch.Tensor, not_done: torch.Tensor,
              next_state: torch.Tensor, pi_next_action: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """``y = r + gamma * (1 - done) * Q_k(s', pi(s'))``, shape ``(B,)``, no gradient."""
    return reward + gamma * not_done * q_target(next_state, pi_next_action)


def conservative_fqe_loss(q: nn.Module, state: torch.Tensor, action: torch.Tensor,
                          pi_action: torch.Tensor, y: torch.Tensor,
                          alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor, torch.Tensor]:
    """``alpha * R + T`` with ``T = mean (Q(s,a) - y)^2``, ``R = mean [Q(s,pi(s)) - Q(s,a)]``.

    Returns:
        (loss, T, R, mean Q(s, a), mean Q(s, pi(s))); R and the last are computed (without
        gradient) also when alpha == 0, as diagnostics.
    """
    b = state.shape[0]
    if alpha > 0:
        # One forward over both action sets: (2B, S), (2B, k) -> (2B,).
        both = q(torch.cat([state, state]), torch.cat([action, pi_action]))
        q_sa, q_pi = both[:b], both[b:]
    else:
        q_sa = q(state, action)
        with torch.no_grad():
            q_pi = q(state, pi_action)
    td = (q_sa - y).pow(2).mean()
    reg = (q_pi - q_sa).mean()
    loss = alpha * reg + td if alpha > 0 else td
    return loss, td, reg, q_sa.mean(), q_pi.mean()


def q_scale(reward: torch.Tensor, gamma: float) -> float:
    """``mean|r| * min(1 / (1 - gamma), 100)`` (>= 1e-6): the typical size of a return."""
    horizon = _MAX_HORIZON if gamma >= 1.0 else min(1.0 / (1.0 - gamma), _MAX_HORIZON)
    return max(float(reward.abs().mean()), 1e-6) * horizon


@dataclass(frozen=True)
class FqeStats:
    """What a Q network takes from the whole split: state statistics and the reward size.

    In memory they come from :class:`FqeData`; a streamed fit gets them from one aggregation
    over the table (:func:`mtf.ope.stream.split_stats`), so no row has to reach the driver.
    """

    state_mean: torch.Tensor      # (S,)
    state_std: torch.Tensor       # (S,) clamped >= 1e-6
    reward_abs_mean: float
    action_dim: int

    @staticmethod
    def of(data: FqeData) -> "FqeStats":
        return FqeStats(data.state.mean(dim=0),
                        data.state.std(dim=0, unbiased=False).clamp_min(1e-6),
                        float(data.reward.abs().mean()), int(data.action.shape[1]))


def make_q(stats: FqeStats, hidden: Sequence[int], gamma: float, seed: int) -> QNetwork:
    """A fresh Q network with state statistics and scale from ``stats``, seeded init."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        return QNetwork(stats.state_mean.shape[0], stats.action_dim, hidden, stats.state_mean,
                        stats.state_std, q_scale(torch.tensor([stats.reward_abs_mean]), gamma))


class FqeFitter:
    """One fit in progress: Q, its frozen copy, Adam and the fit curve.

    :func:`fit_fqe` drives one fitter over random minibatches of an in-memory split; a streamed
    fit (:func:`mtf.ope.stream.fit_fqe_stream`) drives several in lockstep over the same batches.
    """

    def __init__(self, stats: FqeStats, settings: FqeSettings, initial_state: torch.Tensor,
                 initial_pi: torch.Tensor, name: str = "") -> None:
        self.settings = s = settings
        self.device = torch.device(s.device)
        self.name = name
        self.q = make_q(stats, s.hidden, s.gamma, s.seed).to(self.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=s.lr)
        self.initial_state = initial_state.to(self.device)   # (n0, S) for the V(s0) curve
        self.initial_pi = initial_pi.to(self.device)         # (n0, k)
        self.curve: list[dict[str, float]] = []
        self.acc = torch.zeros(4, device=self.device)
        self.n_acc = 0
        self.steps = 0
        self.t0 = time.perf_counter()

    def step(self, state: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
             next_state: torch.Tensor, not_done: torch.Tensor, pi_action: torch.Tensor,
             pi_next_action: torch.Tensor) -> None:
        """One gradient step on a minibatch (already on ``self.device``)."""
        s = self.settings
        y = td_target(self.q_target, reward, not_done, next_state, pi_next_action, s.gamma)
        loss, td, reg, q_data, q_pi = conservative_fqe_loss(
            self.q, state, action, pi_action, y, s.alpha)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.acc += torch.stack([td.detach(), reg.detach(), q_data.detach(), q_pi.detach()])
        self.n_acc += 1
        self.steps = step = self.steps + 1
        if step % s.target_update_every == 0:
            self.q_target.load_state_dict(self.q.state_dict())
        if step % s.log_every == 0 or step == s.n_iterations:
            td_m, reg_m, qd_m, qp_m = (self.acc / self.n_acc).tolist()
            self.curve.append({"step": float(step), "td": td_m, "reg": reg_m, "q_data": qd_m,
                               "q_pi": qp_m, "v0": self.v0()})
            self.acc.zero_()
            self.n_acc = 0

    @torch.no_grad()
    def v0(self) -> float:
        if self.initial_state.shape[0] == 0:
            return float("nan")
        return float(self.q(self.initial_state, self.initial_pi).mean())

    def result(self) -> FqeFit:
        q = self.q.cpu().eval()
        seconds = time.perf_counter() - self.t0
        if self.curve:
            logger.info("FQE %s alpha=%g: %d steps in %.1fs, final TD %.4g, V(s0) %.4g",
                        self.name, self.settings.alpha, self.steps, seconds,
                        self.curve[-1]["td"], self.curve[-1]["v0"])
        return FqeFit(q=q, settings=self.settings, curve=self.curve, seconds=seconds)


def fit_fqe(data: FqeData, settings: FqeSettings, *, name: str = "") -> FqeFit:
    """Fit Q for the target policy whose actions are in ``data`` (see the module docstring)."""
    s = settings
    initial = torch.nonzero(data.is_initial).squeeze(1)[:CURVE_STATES]
    fitter = FqeFitter(FqeStats.of(data), s, data.state[initial], data.pi_action[initial], name)
    gen = torch.Generator().manual_seed(s.seed + 1)   # CPU: same minibatches on every device
    n = len(data)
    device = fitter.device
    if device.type != "cpu":
        data = FqeData(**{f: getattr(data, f).to(device) for f in data.__dataclass_fields__})
    for _ in range(s.n_iterations):
        idx = torch.randint(n, (s.batch_size,), generator=gen).to(device)
        fitter.step(data.state[idx], data.action[idx], data.reward[idx], data.next_state[idx],
                    data.not_done[idx], data.pi_action[idx], data.pi_next_action[idx])
    return fitter.result()


@torch.no_grad()
def q_values(q: nn.Module, state: np.ndarray, action: np.ndarray,
             batch_rows: int = 65_536) -> np.ndarray:
    """``Q(s, a)`` for numpy arrays, in batches; float64 ``(N,)``."""
    out = np.empty(state.shape[0], dtype=np.float64)
    for lo in range(0, state.shape[0], batch_rows):
        hi = min(lo + batch_rows, state.shape[0])
        out[lo:hi] = q(torch.as_tensor(state[lo:hi], dtype=torch.float32),
                       torch.as_tensor(action[lo:hi], dtype=torch.float32)).double().numpy()
    return out
