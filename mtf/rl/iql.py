"""IQL (Kostrikov et al. 2022): in-sample critics and an advantage-weighted actor.

Beyond the paper. BCQ's critic target takes a max over the actor's candidate actions, and its
actor climbs Q1 within +-rho of them: on noisy session returns both chase the critic's errors,
so which corner of the box a run lands in changes with the seed (docs/training.md, "Does it
learn to personalise?"). IQL never evaluates an action the logs do not hold:

* value:  ``V(s)`` is the ``expectile`` (tau > 0.5) of ``min_j Q'_j(s, a)`` over the logged
  actions, an in-sample stand-in for ``max_a Q``;
* critic: ``Q_j(s, a) -> r + gamma (1 - done) V(s')`` (no max over actions at all);
* actor:  a deterministic ``pi(s)`` regressed on the logged actions of the exploration groups in
  ``actor_groups``, each weighted by ``exp(beta * (min_j Q'_j(s, a) - V(s)))`` (capped):
  advantage-weighted regression, so the policy is a weighted mean of actions the users were
  actually shown. The random-exploration group spans the whole action box, so this is where
  the policy can move far from the logging baseline; the exploit group (every row the same
  action) would only anchor it (``actor_groups`` = all three reproduces that).

``iql.quadratic_critic`` replaces both the MLP critics and the actor: each critic is
``Q(s, a) = v(s) + g(s).a - 0.5 sum_j p_j(s) a_j^2`` with curvatures ``p_j >= min_curvature``
(:class:`QuadraticQ`, ``n_heads`` of them), fitted in-sample exactly as above (V is the
expectile of their minimum), and the policy is the critics' explicit maximiser
``clip(g / p, -1, 1)``, averaged over the heads. The structure is the prior
(each weight's effect is smooth, with one best value per state): the critic only has to
estimate a slope and a curvature per weight and state from the random group's wide actions,
which averages the return noise over many rows instead of letting an actor search the
critic's errors. ``min_curvature`` bounds how far a flat, uncertain slope can push the policy.
``iql.curvature = "full"`` gives each critic a full curvature matrix,
``Q = v + g.a - 0.5 a^T P a`` with ``P = L L^T + min_curvature I`` (NAF), and the policy is each
critic's maximiser in the box (:class:`FullQuadraticHead`): the fusion formula ranks alike for
``alpha`` and ``c * alpha``, so the true Q has strong interactions between the weights that a
diagonal curvature cannot represent.

With the ray parametrisation (``fusion.action_space = "ray"``, docs/method.md section 2a) the
critics are fitted on canonical actions, which all lie on the box's upper faces
(``max_j a_j = 1``), and the policy is the critics' maximiser over those faces
(:func:`diagonal_face_maximiser`, :func:`full_face_maximiser`): the best action among the ones
that rank differently, instead of a box point the fusion would rank like another.

``policy_ema``: the exported policy is made of an exponential moving average of the trained
networks (Polyak averaging over about ``1 / (1 - policy_ema)`` steps). On noisy session returns
the last few hundred minibatches move the critics' slopes enough to change the policy; the
average removes most of that seed-to-seed spread (docs/training.md, item 10).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mtf.rl.batch import GROUP_CODES, TransitionBatch
from mtf.rl.config import IQLConfig, LearnerConfig
from mtf.rl.distributed import ddp_wrap
from mtf.rl.networks import DeterministicActor, EnsembleQ, mlp
from mtf.rl.updates import (GreedyCriticAgent, bellman_target, ensemble_critic_loss,
                            optimizer_step, soft_update, target_copy)


def ema_decay(policy_ema: float, step: int) -> float:
    """``min(policy_ema, (1 + step) / (10 + step))``: early steps track the networks closely,
    so a short run's average is not dominated by the initial weights."""
    return min(policy_ema, (1.0 + step) / (10.0 + step))


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``mean |tau - 1(u < 0)| u^2`` of ``u = Q - V``: above 0.5 it weighs Q above V more, so V
    tends to an upper expectile of Q over the logged actions."""
    weight = torch.abs(expectile - (diff < 0).float())
    return (weight * diff.pow(2)).mean()


def awr_weights(advantage: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """``min(exp(beta * A), max_weight)``; the cap keeps one lucky row from owning a batch."""
    return torch.exp(beta * advantage).clamp(max=max_weight)


def weighted_regression_loss(predicted: torch.Tensor, logged: torch.Tensor,
                             weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_i m_i w_i ||pi(s_i) - a_i||^2 / max(1, sum_i m_i)`` over the masked rows."""
    per_row = (predicted - logged).pow(2).sum(dim=1, keepdim=True)     # (B, 1)
    return (mask * weight * per_row).sum() / mask.sum().clamp(min=1.0)


class QuadraticHead(nn.Module):
    """One critic ``v(s) + g(s).a - 0.5 sum p(s) a^2``; ``p = softplus(.) + min_curvature``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...],
                 min_curvature: float) -> None:
        super().__init__()
        self.k = action_dim
        self.min_curvature = min_curvature
        self.net = mlp(state_dim, hidden, 1 + 2 * action_dim)

    def parts(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(state)                                               # (B, 1 + 2k)
        k = self.k
        return out[:, :1], out[:, 1:1 + k], F.softplus(out[:, 1 + k:]) + self.min_curvature

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        v, g, p = self.parts(state)
        return v + (g * action).sum(1, keepdim=True) - 0.5 * (p * action * action).sum(
            1, keepdim=True)

    def best(self, state: torch.Tensor) -> torch.Tensor:
        """``clip(g / p, -1, 1)``: the quadratic is separable per weight."""
        _, g, p = self.parts(state)
        return (g / p).clamp(-1.0, 1.0)

    def best_on_faces(self, state: torch.Tensor) -> torch.Tensor:
        """The maximiser over the canonical actions (:func:`diagonal_face_maximiser`)."""
        _, g, p = self.parts(state)
        return diagonal_face_maximiser(g, p)


def diagonal_face_maximiser(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``argmax g.a - 0.5 sum p a^2`` over the upper faces of the box (``max_j a_j = 1``), exact.

    Separable: with ``a_j = 1`` pinned the others keep their box optimum ``b_i = clip(g_i / p_i)``,
    and pinning ``j`` costs ``q_j(b_j) - q_j(1)`` with ``q_j(x) = g_j x - 0.5 p_j x^2``; the
    cheapest face wins (cost 0 when the box optimum already touches a face: then it is the
    answer).
    """
    best = (g / p).clamp(-1.0, 1.0)
    cost = g * (best - 1.0) - 0.5 * p * (best.pow(2) - 1.0)
    face = cost.argmin(dim=1, keepdim=True)
    return best.scatter(1, face, torch.ones_like(best[:, :1]))


# FullQuadraticHead.best solves max_{a in [-1, 1]^k} g.a - 0.5 a^T P a in three fixed stages
# (no data-dependent loop, so it scripts and runs in the same time for every state):
# BOX_ACTIVE_SET_STEPS primal-dual active-set steps (guess which weights sit on which face from
# the gradient, solve exactly for the rest; keep the best point in the box), BOX_SWEEPS projected
# coordinate-ascent sweeps (a_j <- the best a_j with the others held, clipped; never lower Q),
# then one exact solve for the weights the sweeps left off the faces. Measured for k = 6 in
# float32 against enumerating all 3^6 face patterns in float64, on P = L L^T + 0.1 I with L's
# entries N(0, s^2) (s = 0.3, 1, 3, 10) and on P flat along a ray (the fusion's scale
# invariance), about 1000 cases: all within 1e-4 (worst 5e-5). Without the active-set steps
# (sweeps from clip(P^-1 g), then the solve) actions were off by up to 1.5 (0.6 with 40 sweeps)
# for s >= 3, where P is badly conditioned.
BOX_ACTIVE_SET_STEPS = 8
BOX_SWEEPS = 20


class FullQuadraticHead(nn.Module):
    """One critic ``v(s) + g(s).a - 0.5 a^T P(s) a`` with ``P = L L^T + min_curvature I``, ``L``
    lower-triangular with a softplus diagonal (NAF, Gu et al. 2016): unlike
    :class:`QuadraticHead` it can represent interactions between the weights."""

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...],
                 min_curvature: float) -> None:
        super().__init__()
        k = action_dim
        self.k = k
        self.min_curvature = min_curvature
        # attributes, not globals: TorchScript compiles them as constants
        self.active_set_steps = BOX_ACTIVE_SET_STEPS
        self.sweeps = BOX_SWEEPS
        # outputs: v, g (k), L's diagonal (k, through softplus), L's strict lower part
        self.net = mlp(state_dim, hidden, 1 + 2 * k + k * (k - 1) // 2)
        lower = torch.tril_indices(k, k, offset=-1)
        diag = torch.arange(k) * (k + 1)
        # flat positions in the (k * k) matrix of the diagonal, then the strict lower entries
        self.register_buffer("l_index", torch.cat([diag, lower[0] * k + lower[1]]),
                             persistent=False)

    def parts(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``v (B, 1)``, ``g (B, k)``, ``L (B, k, k)``."""
        out = self.net(state)
        k = self.k
        entries = torch.cat([F.softplus(out[:, 1 + k:1 + 2 * k]), out[:, 1 + 2 * k:]], dim=1)
        flat = torch.zeros(out.shape[0], k * k, dtype=out.dtype, device=out.device)
        flat = flat.scatter(1, self.l_index.unsqueeze(0).expand(out.shape[0], -1), entries)
        return out[:, :1], out[:, 1:1 + k], flat.view(-1, k, k)

    def curvature(self, chol: torch.Tensor) -> torch.Tensor:
        """``P = L L^T + min_curvature I``, ``(B, k, k)``."""
        eye = torch.eye(self.k, dtype=chol.dtype, device=chol.device)
        return chol @ chol.transpose(1, 2) + self.min_curvature * eye

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        v, g, chol = self.parts(state)
        lt_a = (chol * action.unsqueeze(2)).sum(1)                         # L^T a, (B, k)
        quad = lt_a.pow(2).sum(1, keepdim=True) + self.min_curvature * action.pow(2).sum(
            1, keepdim=True)                                                # a^T P a
        return v + (g * action).sum(1, keepdim=True) - 0.5 * quad

    def best(self, state: torch.Tensor) -> torch.Tensor:
        """The maximiser of the concave quadratic in ``[-1, 1]^k`` (:func:`box_maximiser`)."""
        _, g, chol = self.parts(state)
        return box_maximiser(self.curvature(chol), g, self.active_set_steps, self.sweeps)

    def best_on_faces(self, state: torch.Tensor) -> torch.Tensor:
        """The maximiser over the canonical actions (:func:`full_face_maximiser`)."""
        _, g, chol = self.parts(state)
        return full_face_maximiser(self.curvature(chol), g, self.active_set_steps, self.sweeps)


def box_quadratic(p: torch.Tensor, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``g.a - 0.5 a^T P a`` per row, ``(B,)``."""
    return (g * a).sum(1) - 0.5 * (a * (p @ a.unsqueeze(2)).squeeze(2)).sum(1)


def solve_off_faces(p: torch.Tensor, g: torch.Tensor, a: torch.Tensor,
                    on_face: torch.Tensor) -> torch.Tensor:
    """Hold the weights where ``on_face`` at their values in ``a`` and maximise over the others
    exactly: ``P_FF a_F = g_F - P_FA a_A`` as one batched solve (may leave the box)."""
    free = (~on_face).to(p.dtype)
    held = on_face.to(p.dtype)
    # held rows: the identity (a_j = a_j); free rows: P restricted to the free columns
    system = p * free.unsqueeze(2) * free.unsqueeze(1) + torch.diag_embed(held)
    rhs = torch.where(on_face, a, g - (p @ (held * a).unsqueeze(2)).squeeze(2))
    return torch.linalg.solve(system, rhs.unsqueeze(2)).squeeze(2)


def keep_better(p: torch.Tensor, g: torch.Tensor, best: torch.Tensor,
                candidate: torch.Tensor) -> torch.Tensor:
    """Per row, ``candidate`` clipped to the box where that has the higher value, else ``best``."""
    candidate = candidate.clamp(-1.0, 1.0)
    better = box_quadratic(p, g, candidate) > box_quadratic(p, g, best)
    return torch.where(better.unsqueeze(1), candidate, best)


def box_maximiser(p: torch.Tensor, g: torch.Tensor, active_set_steps: int,
                  sweeps: int) -> torch.Tensor:
    """``argmax_{a in [-1, 1]^k} g.a - 0.5 a^T P a`` for SPD ``P (B, k, k)`` and ``g (B, k)``
    (see :data:`BOX_SWEEPS` for the method and how exact it is)."""
    a = torch.linalg.solve(p, g.unsqueeze(2)).squeeze(2)
    best = a.clamp(-1.0, 1.0)
    diag = torch.diagonal(p, dim1=1, dim2=2)
    ones = torch.ones_like(g)
    for step in range(active_set_steps):
        # primal-dual active set: a_j goes to the face its gradient pushes it past
        push = a + (g - (p @ a.unsqueeze(2)).squeeze(2)) / diag
        on_face = push.abs() > 1.0
        a = solve_off_faces(p, g, torch.where(push > 0, ones, -ones), on_face)
        best = keep_better(p, g, best, a)
    a = best
    for sweep in range(sweeps):
        for j in range(g.shape[1]):
            rest = (p[:, j, :] * a).sum(1) - diag[:, j] * a[:, j]
            a = a.clone()   # autograd-safe: no in-place write into a tensor it saved
            a[:, j] = ((g[:, j] - rest) / diag[:, j]).clamp(-1.0, 1.0)
    finished = solve_off_faces(p, g, a, a.abs() >= 1.0)
    inside = (finished.abs() <= 1.0 + 1e-5).all(dim=1, keepdim=True)
    return keep_better(p, g, a, torch.where(inside, finished, a))


def full_face_maximiser(p: torch.Tensor, g: torch.Tensor, active_set_steps: int,
                        sweeps: int) -> torch.Tensor:
    """``argmax g.a - 0.5 a^T P a`` over the upper faces of the box: per face ``j``, pin
    ``a_j = 1`` and maximise over the other weights in their box (:func:`box_maximiser` on
    ``P_{-j,-j}``, ``g_{-j} - P_{-j,j}``); the best face's point, ``(B, k)``."""
    k = g.shape[1]
    best = torch.ones_like(g)
    if k == 1:
        return best
    best_value = box_quadratic(p, g, best)
    for j in range(k):
        rest = torch.cat([torch.arange(0, j, device=g.device),
                          torch.arange(j + 1, k, device=g.device)])
        p_rest = p.index_select(1, rest).index_select(2, rest)
        g_rest = g.index_select(1, rest) - p.index_select(1, rest)[:, :, j]
        sub = box_maximiser(p_rest, g_rest, active_set_steps, sweeps)
        a = torch.ones_like(g).index_copy(1, rest, sub)
        value = box_quadratic(p, g, a)
        better = value > best_value
        best = torch.where(better.unsqueeze(1), a, best)
        best_value = torch.where(better, value, best_value)
    return best


class QuadraticQ(nn.Module):
    """``n`` quadratic critics (:class:`QuadraticHead`, or :class:`FullQuadraticHead` with
    ``curvature="full"``). Same interface as :class:`~mtf.rl.networks.EnsembleQ`
    (``forward -> (n, B, 1)``, ``q1_value``) plus :meth:`maximiser`."""

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...],
                 min_curvature: float, n: int = 2, curvature: str = "diagonal") -> None:
        super().__init__()
        heads = {"diagonal": QuadraticHead, "full": FullQuadraticHead}
        if curvature not in heads:
            raise ValueError(f"curvature must be one of {list(heads)}, got {curvature!r}")
        self.heads = nn.ModuleList(heads[curvature](state_dim, action_dim, hidden, min_curvature)
                                   for _ in range(n))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        values = []
        for head in self.heads:
            values.append(head(state, action))
        return torch.stack(values)                                          # (n, B, 1)

    def q1_value(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.heads[0](state, action)

    def maximiser(self, state: torch.Tensor, on_faces: bool = False) -> torch.Tensor:
        """``(B, k)``: each critic's best action in the box (``on_faces``: among the canonical
        actions), averaged over the critics (the average of face points is off the faces;
        the exported policy makes it canonical again, mtf.rl.export)."""
        best = []
        for head in self.heads:
            best.append(head.best_on_faces(state) if on_faces else head.best(state))
        return torch.stack(best).mean(dim=0)


class CriticMaximiser(nn.Module):
    """The exported policy of a quadratic-critic IQL: state -> the critics' maximiser."""

    def __init__(self, critic: QuadraticQ, on_faces: bool = False) -> None:
        super().__init__()
        self.critic = critic
        self.on_faces = on_faces

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.critic.maximiser(state, self.on_faces)


class IQLAgent(GreedyCriticAgent):
    """Twin critics + target copies, a state-value network and a deterministic actor (or, with
    ``quadratic_critic``, the critics' explicit maximiser and no actor)."""

    algo = "iql"

    def __init__(self, state_dim: int, action_dim: int, common: LearnerConfig, iql: IQLConfig,
                 device: torch.device, generator: torch.Generator, *, gamma: float,
                 rays: bool = False) -> None:
        super().__init__(common, device, generator, gamma)
        self.iql = iql
        self.rays = rays
        self.critic: nn.Module = (
            QuadraticQ(state_dim, action_dim, common.hidden, iql.min_curvature, iql.n_heads,
                       iql.curvature)
            if iql.quadratic_critic else EnsembleQ(state_dim, action_dim, common.hidden, 2)
        ).to(device)
        self.critic_target = target_copy(self.critic)
        self.value = mlp(state_dim, common.hidden, 1).to(device)
        self.actor = (None if iql.quadratic_critic
                      else DeterministicActor(state_dim, action_dim, common.hidden).to(device))
        # The policy's networks, averaged (None: the policy uses the trained ones directly).
        self.policy_average: nn.Module | None = (
            target_copy(self._policy_nets()) if iql.policy_ema > 0 else None)
        self.critic_train: nn.Module = self.critic
        self.value_train: nn.Module = self.value
        self.actor_train: nn.Module | None = self.actor
        self.actor_codes = torch.tensor([float(GROUP_CODES[g]) for g in iql.actor_groups],
                                        device=device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "critic": torch.optim.Adam(self.critic.parameters(), lr=iql.critic_lr),
            "value": torch.optim.Adam(self.value.parameters(), lr=iql.critic_lr),
        }
        if self.actor is not None:
            self.optimizers["actor"] = torch.optim.Adam(self.actor.parameters(), lr=iql.actor_lr)

    @property
    def nets(self) -> dict[str, nn.Module]:
        nets = {"critic": self.critic, "critic_target": self.critic_target, "value": self.value}
        if self.actor is not None:
            nets["actor"] = self.actor
        if self.policy_average is not None:
            nets["policy_average"] = self.policy_average
        return nets

    def wrap_ddp(self) -> None:
        self.critic_train = ddp_wrap(self.critic, self.device)
        self.value_train = ddp_wrap(self.value, self.device)
        if self.actor is not None:
            self.actor_train = ddp_wrap(self.actor, self.device)

    def update(self, batch: TransitionBatch, step: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            q_logged = self.critic_target(batch.state, batch.action).amin(dim=0)   # (B, 1)
        # V: upper expectile of the target critics' value of the logged actions.
        v = self.value_train(batch.state)
        value_loss = expectile_loss(q_logged - v, self.iql.expectile)
        optimizer_step(self.optimizers["value"], value_loss)
        # Q: one-step Bellman backup onto V(s'), no action is maximised over.
        with torch.no_grad():
            target = bellman_target(batch.reward, batch.is_terminal,
                                    self.value(batch.next_state), self.gamma)
        q = self.critic_train(batch.state, batch.action)                            # (2, B, 1)
        critic_loss = ensemble_critic_loss(q, target)
        optimizer_step(self.optimizers["critic"], critic_loss)
        if (step + 1) % self.common.target_update_every == 0:
            soft_update(self.critic_target, self.critic, self.common.tau)
        metrics = {"loss/value": value_loss.detach(), "loss/critic": critic_loss.detach(),
                   "q/data": q[0].detach().mean(), "q/target": target.mean()}
        if self.actor_train is None:         # quadratic critic: the policy is its maximiser
            self._average_policy(step)
            return metrics
        # Actor: advantage-weighted regression on the exploration rows.
        with torch.no_grad():
            advantage = q_logged - self.value(batch.state)
            weight = awr_weights(advantage, self.iql.beta, self.iql.max_weight)
            mask = torch.isin(batch.group, self.actor_codes).float()
        actor_loss = weighted_regression_loss(self.actor_train(batch.state), batch.action,
                                              weight, mask)
        optimizer_step(self.optimizers["actor"], actor_loss)
        self._average_policy(step)
        return {**metrics, "loss/actor": actor_loss.detach(), "iql/advantage": advantage.mean(),
                "iql/actor_rows": mask.mean(),
                "iql/weight": (weight * mask).sum() / mask.sum().clamp(min=1.0)}

    def _policy_nets(self) -> nn.Module:
        """What the policy is made of: the actor, or (no actor) the quadratic critics."""
        return self.actor if self.actor is not None else self.critic

    def _average_policy(self, step: int) -> None:
        if self.policy_average is not None:
            soft_update(self.policy_average, self._policy_nets(),
                        1.0 - ema_decay(self.iql.policy_ema, step))

    def policy(self) -> nn.Module:
        nets = self._policy_nets() if self.policy_average is None else self.policy_average
        if self.actor is not None:
            return nets
        return CriticMaximiser(nets, on_faces=self.rays)  # type: ignore[arg-type]
