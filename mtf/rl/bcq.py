"""BCQ, the batch-RL algorithm of BatchRL-MTF (docs/method.md section 5; Fujimoto et al. 2019).

Losses are free functions over tensors; :class:`BCQAgent` owns the networks and optimisers and
runs one update in the reference order: VAE, critic, actor (perturbation), then targets.
:class:`BCQPolicy` is the action-selection rule (n VAE candidates, perturbed, clipped, argmax
Q1) as a TorchScript-able module; exported with a fixed buffer of latents it is deterministic.

``bcq.candidates = "bounded"`` (beyond the paper, UnifiedRL's policy-bounded constraint)
replaces the VAE by :class:`~mtf.rl.networks.BoundedProposer`: the candidates are
``clip(b(s) + z)``, ``b`` a regression of the deployed (exploit-group) actions on the state and
``z`` uniform in the known exploration bound ``[-w, w]^k``; the perturbation and the critics are
the paper's. The proposer keeps the VAE's place (attribute ``vae``, step ``vae_step``; in
checkpoints ``behaviour``), so the rest of BCQ is unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mtf.rl.batch import GROUP_CODES, TransitionBatch
from mtf.rl.config import BCQConfig, LearnerConfig
from mtf.rl.distributed import ddp_wrap
from mtf.rl.networks import (ActionVAE, BoundedProposer, EnsembleQ, Perturbation,
                             bounded_offsets, prior_latents)
from mtf.rl.updates import (GreedyCriticAgent, bellman_target, ensemble_critic_loss, frozen,
                            max_over_candidates, mix_ensemble_q, optimizer_step, soft_update,
                            target_copy)


def vae_loss(recon: torch.Tensor, action: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             kl_weight: float) -> torch.Tensor:
    """``mean (a - D(s, z))^2 + kl_weight * mean KL(N(mu, sigma^2) || N(0, I))``.

    Both means are elementwise (over batch and dimensions), as in BCQ's reference code; the KL
    of one latent coordinate is ``-0.5 * (1 + log sigma^2 - mu^2 - sigma^2)``.
    """
    recon_loss = F.mse_loss(recon, action)
    kl = -0.5 * (1.0 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2)).mean()
    return recon_loss + kl_weight * kl


def candidate_latents(n: int, latent_dim: int, cfg: BCQConfig,
                      generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``(n, latent)`` latents of the candidate generator: clipped prior samples for the VAE,
    offsets uniform in ``[-bound, bound]`` for the bounded proposer."""
    if cfg.candidates == "bounded":
        return bounded_offsets(n, latent_dim, cfg.bound, generator=generator, device=device)
    return prior_latents(n, latent_dim, cfg.latent_clip, generator=generator, device=device)


def behaviour_loss(predicted: torch.Tensor, logged: torch.Tensor,
                   exploit: torch.Tensor) -> torch.Tensor:
    """``sum_i m_i ||b(s_i) - a_i||^2 / max(1, sum_i m_i)`` over the exploit rows ``m``."""
    per_row = (predicted - logged).pow(2).sum(dim=1, keepdim=True)
    return (exploit * per_row).sum() / exploit.sum().clamp(min=1.0)


@torch.no_grad()
def bcq_critic_target(batch: TransitionBatch, vae: ActionVAE | BoundedProposer,
                      actor_target: Perturbation,
                      critic_target: EnsembleQ, cfg: BCQConfig, gamma: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Critic target ``(B, 1)`` of BCQ with soft clipped double Q (docs/method.md section 5).

    ``y = r + gamma (1 - done) max_i [lam min_j Q'_j(s', a'_i) + (1 - lam) max_j Q'_j(s', a'_i)]``
    with ``a'_i = P'(s', D(s', z_i))`` for n = ``cfg.n_candidates`` latents z_i
    (:func:`candidate_latents`; ``D`` the VAE's decoder or the bounded proposer), j over the
    ``cfg.n_critics`` target critics (2 in the paper).
    """
    n = cfg.n_candidates
    next_s = batch.next_state.repeat_interleave(n, dim=0)                # (B, S) -> (B*n, S)
    z = candidate_latents(next_s.shape[0], vae.latent_dim, cfg, generator,
                          next_s.device)                                  # (B*n, latent)
    next_a = actor_target(next_s, vae.decode(next_s, z))                 # (B*n, k)
    q = critic_target(next_s, next_a)                                    # (critics, B*n, 1)
    value = max_over_candidates(mix_ensemble_q(q, cfg.lam), n)           # (B, 1)
    return bellman_target(batch.reward, batch.is_terminal, value, gamma)


def bcq_actor_loss(critic: EnsembleQ, state: torch.Tensor, perturbed: torch.Tensor,
                   penalty: float = 0.0) -> torch.Tensor:
    """``-mean Q1(s, P(s, a_hat))``: the perturbation network climbs Q1 around VAE actions
    (with ``penalty > 0``: the ensemble's ``mean Q - penalty * std Q`` instead of Q1)."""
    return -critic.score(state, perturbed, penalty).mean()


class BCQPolicy(nn.Module):
    """pi(s) = argmax_{a_i} Q1(s, a_i), a_i = clip(P(s, D(s, z_i))), over n latents z_i.

    (With ``penalty > 0`` the argmax is over the ensemble score ``mean Q - penalty * std Q``.)

    ``forward`` uses the registered ``latents`` buffer (fixed, clipped samples of the prior), so
    one state always maps to one action; training-time metrics call
    :meth:`select` with fresh latents. Input states are normalised.
    """

    def __init__(self, vae: ActionVAE, actor: Perturbation, critic: EnsembleQ,
                 latents: torch.Tensor, penalty: float = 0.0) -> None:
        super().__init__()
        self.vae = vae
        self.actor = actor
        self.critic = critic
        self.penalty = float(penalty)
        self.register_buffer("latents", latents)  # (n, latent)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.select(state, self.latents)

    def select(self, state: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        b, n = state.shape[0], latents.shape[0]
        s = state.repeat_interleave(n, dim=0)                     # (B, S) -> (B*n, S)
        z = latents.repeat(b, 1)                                  # (n, latent) -> (B*n, latent)
        cand = self.actor(s, self.vae.decode(s, z))               # (B*n, k)
        q = self.critic.score(s, cand, self.penalty).view(b, n)   # (B*n, 1) -> (B, n)
        best = q.argmax(dim=1)                                    # (B,)
        return cand.view(b, n, -1)[torch.arange(b, device=state.device), best]  # (B, k)


class BCQAgent(GreedyCriticAgent):
    """Networks, optimisers and the update step of BCQ.

    ``vae``, ``actor`` and ``critic`` are the networks; ``*_train`` are the same networks as the
    losses that train them see them: wrapped in DistributedDataParallel under DDP (so their
    gradients are averaged over ranks), the bare network otherwise.
    """

    algo = "bcq"

    def __init__(self, state_dim: int, action_dim: int, common: LearnerConfig, cfg: BCQConfig,
                 device: torch.device, generator: torch.Generator, *, gamma: float) -> None:
        super().__init__(common, device, generator, gamma)
        self.cfg = cfg
        self.vae: ActionVAE | BoundedProposer = (
            BoundedProposer(state_dim, action_dim, cfg.vae_hidden, cfg.bound)
            if cfg.candidates == "bounded" else
            ActionVAE(state_dim, action_dim, cfg.latent_size(action_dim), cfg.vae_hidden,
                      cfg.log_std_min, cfg.log_std_max)).to(device)
        self.vae_name = "behaviour" if cfg.candidates == "bounded" else "vae"
        self.actor = Perturbation(state_dim, action_dim, common.hidden, cfg.rho).to(device)
        self.critic = EnsembleQ(state_dim, action_dim, common.hidden, cfg.n_critics).to(device)
        self.actor_target = target_copy(self.actor)
        self.critic_target = target_copy(self.critic)
        self.vae_train: nn.Module = self._vae_trained()
        self.actor_train: nn.Module = self.actor
        self.critic_train: nn.Module = self.critic
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            self.vae_name: torch.optim.Adam(self.vae.parameters(), lr=cfg.vae_lr),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=common.actor_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=common.critic_lr),
        }

    def _vae_trained(self) -> nn.Module:
        """What ``vae_step`` trains: the VAE, or the bounded proposer's behaviour network."""
        return self.vae.behaviour if isinstance(self.vae, BoundedProposer) else self.vae

    @property
    def nets(self) -> dict[str, nn.Module]:
        return {self.vae_name: self.vae, "actor": self.actor, "critic": self.critic,
                "actor_target": self.actor_target, "critic_target": self.critic_target}

    def wrap_ddp(self) -> None:
        """Train through DDP wrappers; targets stay local (every rank updates them alike)."""
        self.vae_train = ddp_wrap(self._vae_trained(), self.device)
        self.actor_train = ddp_wrap(self.actor, self.device)
        self.critic_train = ddp_wrap(self.critic, self.device)

    def update(self, batch: TransitionBatch, step: int) -> dict[str, torch.Tensor]:
        """One BCQ step on a normalised batch, in the reference order; detached metrics."""
        metrics = self.vae_step(batch)
        metrics.update(self.critic_step(batch))
        metrics.update(self.actor_step(batch))
        # Delayed soft target update (paper: tau = 0.05 every 10 steps).
        if (step + 1) % self.common.target_update_every == 0:
            self.update_targets()
        return metrics

    def vae_step(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        """Fit the VAE to the logged actions (updates the VAE only); the bounded proposer's
        behaviour regression to the exploit rows' actions instead."""
        if isinstance(self.vae, BoundedProposer):
            exploit = (batch.group == float(GROUP_CODES["exploit"])).float()
            loss = behaviour_loss(self.vae_train(batch.state), batch.action, exploit)
            optimizer_step(self.optimizers[self.vae_name], loss)
            return {"loss/behaviour": loss.detach()}
        noise = torch.randn(len(batch), self.vae.latent_dim, generator=self.generator,
                            device=self.device)
        recon, mean, std = self.vae_train(batch.state, batch.action, noise)
        loss = vae_loss(recon, batch.action, mean, std, self.cfg.kl_weight)
        optimizer_step(self.optimizers[self.vae_name], loss)
        return {"loss/vae": loss.detach()}

    def critic_step(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        """Regress both critics on the soft clipped double-Q target (updates the critic only)."""
        target = bcq_critic_target(batch, self.vae, self.actor_target, self.critic_target,
                                   self.cfg, self.gamma, self.generator)
        q = self.critic_train(batch.state, batch.action)          # (critics, B, 1)
        loss = ensemble_critic_loss(q, target)
        optimizer_step(self.optimizers["critic"], loss)
        return {"loss/critic": loss.detach(), "q/data": q[0].detach().mean(),
                "q/target": target.mean()}

    def actor_step(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        """Perturb VAE actions towards higher Q1 with the critic frozen (updates the actor only)."""
        with torch.no_grad():
            z = candidate_latents(len(batch), self.vae.latent_dim, self.cfg, self.generator,
                                  self.device)
            sampled = self.vae.decode(batch.state, z)
        perturbed = self.actor_train(batch.state, sampled)
        with frozen(self.critic):
            loss = bcq_actor_loss(self.critic, batch.state, perturbed, self.cfg.actor_penalty)
            optimizer_step(self.optimizers["actor"], loss)
        return {"loss/actor": loss.detach(), "q/policy": -loss.detach()}

    def update_targets(self) -> None:
        soft_update(self.critic_target, self.critic, self.common.tau)
        soft_update(self.actor_target, self.actor, self.common.tau)

    def policy(self, latents: torch.Tensor | None = None) -> BCQPolicy:
        """The greedy policy over this agent's live networks (shared, not copied)."""
        if latents is None:
            latents = self._latents(self.cfg.n_candidates)
        return BCQPolicy(self.vae, self.actor, self.critic, latents, self.cfg.actor_penalty)

    def _latents(self, n: int) -> torch.Tensor:
        return candidate_latents(n, self.vae.latent_dim, self.cfg, self.generator, self.device)
