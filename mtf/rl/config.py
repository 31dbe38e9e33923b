"""Training configuration: ``TrainConfig`` (section ``train``) and one section per algorithm.

Paper values are the defaults (docs/method.md section 5). Settings shared by every algorithm
(target-network schedule, network widths, actor/critic learning rates) live in
``train.common`` (:class:`LearnerConfig`), so that a comparison changes the algorithm and
nothing else; each algorithm's section (``bcq``, ``td3``, ``cql``, ``bc``, ``iql``) holds only
what is specific to it. The discount gamma belongs to the problem, not the learner: ``mdp.gamma``
(:class:`mtf.mdp.MdpConfig`), passed to the agents by the trainer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from mtf.configtools import check_non_negative, check_positive
from mtf.contract import EXPLORE_GROUPS

ALGORITHMS = ("bcq", "td3", "cql", "bc", "iql")
DEVICES = ("auto", "cpu", "cuda")
READER_POOLS = ("thread", "process", "dummy")
CURVATURES = ("diagonal", "full")          # iql.curvature: the quadratic critic's Hessian


def _hidden(section: str, name: str, sizes: tuple[int, ...]) -> None:
    if not sizes or any(h <= 0 for h in sizes):
        raise ValueError(f"{section}.{name} must list one or more positive layer widths, "
                         f"got {list(sizes)!r}")


@dataclass(frozen=True)
class LearnerConfig:
    """Section ``train.common``: what every learner shares (paper values, docs/method.md 5)."""

    tau: float = 0.05                    # soft target update rate tau (paper)
    target_update_every: int = 10        # steps between soft target updates (paper)
    hidden: tuple[int, ...] = (400, 300)  # actor / perturbation / critic MLP widths (paper)
    actor_lr: float = 1e-4               # perturbation-network (actor) Adam lr (paper)
    critic_lr: float = 2e-4              # critic Adam lr (paper)

    def __post_init__(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"common.tau must be in (0, 1], got {self.tau!r}")
        check_positive("common", target_update_every=self.target_update_every,
                       actor_lr=self.actor_lr, critic_lr=self.critic_lr)
        _hidden("common", "hidden", self.hidden)


@dataclass(frozen=True)
class BCQConfig:
    """BCQ (Fujimoto et al. 2019) as used by BatchRL-MTF; docs/method.md section 5.

    Losses (per batch of transitions (s, a, r, s', done)):
      VAE:    mean ||a - D(s, z)||^2 + kl_weight * KL(N(mu, sigma^2) || N(0, I)),
              z = mu + sigma * eps
      critic: sum_j mean (Q_j(s, a) - y)^2,
              y = r + gamma (1 - done) max_i [lam min_j Q'_j + (1 - lam) max_j Q'_j](s', a'_i),
              a'_i = P'(s', D(s', z_i)), z_i ~ N(0, I) clipped to +-latent_clip,
              i = 1..n_candidates
      actor:  -mean Q_1(s, P(s, D(s, z)))  (P = perturbation network, output within +-rho);
              with actor_penalty > 0: -mean [mean_j Q_j - actor_penalty * std_j Q_j]
              over n_critics critics (min/max in y are then over all n_critics)
      targets: theta' <- tau theta + (1 - tau) theta' every target_update_every steps.
    gamma, tau, the target schedule, widths and actor / critic lr: ``mdp`` and ``train.common``.
    """

    rho: float = 0.15                    # perturbation bound rho, normalised action units (paper)
    lam: float = 1.0                     # clipped double-Q mix lambda (TD3: 1.0; BCQ paper 0.75)
    n_candidates: int = 10               # n actions sampled from the VAE per state, train + serve
    vae_lr: float = 1e-3                 # VAE Adam lr (paper)
    vae_hidden: tuple[int, ...] = (750, 750)  # VAE encoder and decoder widths (paper)
    latent_dim: int = 0                  # VAE latent size; 0 means 2 * k (paper: latent = 2k)
    kl_weight: float = 0.5               # weight of the KL term in the VAE loss (BCQ)
    log_std_min: float = -4.0            # clamp of the encoder's log sigma, for stability (BCQ)
    log_std_max: float = 15.0
    latent_clip: float = 0.5             # prior samples z ~ N(0, I) clipped to +-latent_clip (BCQ)
    # Beyond the paper (UnifiedRL, docs/method.md section 9): an ensemble of critics whose spread
    # penalises the actor. n_critics 2 + actor_penalty 0 is the paper's BCQ exactly.
    n_critics: int = 2                   # critics in the ensemble (2 = BCQ's twin critics)
    actor_penalty: float = 0.0           # actor/choice maximise mean Q - penalty * std Q; 0 = Q1
    # Beyond the paper (UnifiedRL's policy-bounded constraint): "bounded" draws the candidates
    # around a regression b(s) of the deployed (exploit-group) actions, clip(b(s) + U(-w, w)),
    # w = bound, instead of from the VAE; "vae" is the paper's BCQ.
    candidates: str = "vae"
    bound: float = 0.15                  # w: the exploration bound (UnifiedRL: 0.15)

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"bcq.lam must be in [0, 1], got {self.lam!r}")
        if not 0.0 <= self.rho <= 2.0:
            raise ValueError(f"bcq.rho must be in [0, 2] (action units), got {self.rho!r}")
        check_positive("bcq", vae_lr=self.vae_lr, n_candidates=self.n_candidates,
                       kl_weight=self.kl_weight, latent_clip=self.latent_clip)
        check_non_negative("bcq", latent_dim=self.latent_dim, actor_penalty=self.actor_penalty)
        if self.n_critics < 2:
            raise ValueError(f"bcq.n_critics must be >= 2 (BCQ's twin critics), got "
                             f"{self.n_critics!r}")
        if self.candidates not in ("vae", "bounded"):
            raise ValueError(f"bcq.candidates must be 'vae' or 'bounded', got "
                             f"{self.candidates!r}")
        if not 0.0 < self.bound <= 2.0:
            raise ValueError(f"bcq.bound must be in (0, 2] (action units), got {self.bound!r}")
        _hidden("bcq", "vae_hidden", self.vae_hidden)
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"bcq.log_std_min must be < bcq.log_std_max, got "
                             f"{self.log_std_min!r} >= {self.log_std_max!r}")

    def latent_size(self, action_dim: int) -> int:
        if self.candidates == "bounded":
            return action_dim           # the offsets
        return self.latent_dim or 2 * action_dim


@dataclass(frozen=True)
class TD3Config:
    """TD3 (Fujimoto et al. 2018), the unconstrained baseline; shared fields: ``train.common``.

    critic target y = r + gamma (1 - done) min_j Q'_j(s', clip(pi'(s') + clip(eps, -c, c), -1, 1)),
    eps ~ N(0, policy_noise^2); actor loss -mean Q_1(s, pi(s)) every policy_delay steps.
    """

    policy_noise: float = 0.2            # target policy smoothing noise std sigma (TD3)
    noise_clip: float = 0.5              # clip c of that noise (TD3)
    policy_delay: int = 2                # critic steps per actor step d (TD3)

    def __post_init__(self) -> None:
        check_non_negative("td3", policy_noise=self.policy_noise, noise_clip=self.noise_clip)
        check_positive("td3", policy_delay=self.policy_delay)


@dataclass(frozen=True)
class CQLConfig:
    """A CQL-style conservative actor-critic (Kumar et al. 2020, CQL(H)) on top of TD3.

    critic loss = TD3's TD loss + alpha * sum_j mean_s [ temperature * logsumexp_a (Q_j(s, a) /
    temperature) - Q_j(s, a_logged) ], a over n_action_samples uniform actions in [-1, 1]^k and
    n_action_samples noisy policy actions pi(s) + N(0, sample_noise^2).
    """

    alpha: float = 1.0                   # conservative penalty weight alpha (CQL)
    n_action_samples: int = 10           # uniform and policy actions per state in the logsumexp
    temperature: float = 1.0             # logsumexp temperature (CQL)
    sample_noise: float = 0.1            # std of the noise on the policy actions in the penalty

    def __post_init__(self) -> None:
        check_non_negative("cql", alpha=self.alpha, sample_noise=self.sample_noise)
        check_positive("cql", n_action_samples=self.n_action_samples, temperature=self.temperature)


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning: a deterministic actor fitted by mean ||pi(s) - a||^2 (a sanity floor)."""

    lr: float = 1e-3                     # actor Adam lr

    def __post_init__(self) -> None:
        check_positive("bc", lr=self.lr)


@dataclass(frozen=True)
class IQLConfig:
    """IQL (Kostrikov et al. 2022) with an advantage-weighted actor; beyond the paper.

    value:  mean |expectile - 1(u < 0)| u^2, u = min_j Q'_j(s, a) - V(s)
    critic: sum_j mean (Q_j(s, a) - (r + gamma (1 - done) V(s')))^2
    actor:  mean over rows of actor_groups of w ||pi(s) - a||^2,
            w = min(exp(beta (min_j Q'_j(s, a) - V(s))), max_weight)
    quadratic_critic: Q_j = v_j(s) + g_j(s).a - 0.5 sum_i p_ji(s) a_i^2, p >= min_curvature;
            no actor, the policy is mean_j clip(g_j / p_j, -1, 1)
    curvature: diagonal (above) or full: Q_j = v_j + g_j.a - 0.5 a^T P_j a,
            P_j = L_j L_j^T + min_curvature I (L_j lower-triangular, NAF), the policy is the mean
            of each critic's maximiser in the box [-1, 1]^k (mtf.rl.iql.box_maximiser)
    policy_ema: the exported policy uses an exponential moving average of the networks it is
            made of (the actor, or the quadratic critics), decay min(policy_ema, (1+t)/(10+t))
    Shared fields (tau, target schedule, widths) come from ``train.common``, gamma from ``mdp``.
    """

    expectile: float = 0.8               # tau of the value expectile (> 0.5: optimistic in-sample)
    beta: float = 30.0                   # inverse temperature of the advantage weights
    max_weight: float = 100.0            # cap of exp(beta * A)
    actor_lr: float = 1e-3               # actor Adam lr
    critic_lr: float = 2e-4              # critics' and value net's Adam lr (the paper's critic lr)
    actor_groups: tuple[str, ...] = ("random",)  # exploration groups the actor regresses on
    quadratic_critic: bool = False       # critics quadratic in a; policy = their maximiser
    min_curvature: float = 0.1           # lower bound of the quadratic critic's curvatures
    curvature: str = "diagonal"          # diagonal | full (interactions between the weights)
    n_heads: int = 2                     # quadratic critics; the policy averages their maximisers
    policy_ema: float = 0.999            # exported policy = this EMA of the trained nets; 0 = off

    def __post_init__(self) -> None:
        check_positive("iql", min_curvature=self.min_curvature)
        if self.curvature not in CURVATURES:
            raise ValueError(f"iql.curvature must be one of {list(CURVATURES)}, "
                             f"got {self.curvature!r}")
        if self.curvature != "diagonal" and not self.quadratic_critic:
            raise ValueError(f"iql.curvature={self.curvature} shapes the quadratic critic; set "
                             f"iql.quadratic_critic=true or iql.curvature=diagonal")
        if self.n_heads < 2:
            raise ValueError(f"iql.n_heads must be >= 2, got {self.n_heads!r}")
        if not 0.0 <= self.policy_ema < 1.0:
            raise ValueError(f"iql.policy_ema must be in [0, 1), got {self.policy_ema!r}")
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"iql.expectile must be in (0, 1), got {self.expectile!r}")
        check_non_negative("iql", beta=self.beta)
        check_positive("iql", max_weight=self.max_weight, actor_lr=self.actor_lr,
                       critic_lr=self.critic_lr)
        bad = [g for g in self.actor_groups if g not in EXPLORE_GROUPS]
        if not self.actor_groups or bad:
            raise ValueError(f"iql.actor_groups must list one or more of {list(EXPLORE_GROUPS)}, "
                             f"got {list(self.actor_groups)!r}")


@dataclass(frozen=True)
class LoaderConfig:
    """petastorm reader over the pinned Delta files (docs/stack.md)."""

    workers_count: int = 2               # reader threads per rank
    reader_pool: str = "thread"          # petastorm reader_pool_type: thread | process | dummy
    shuffle_buffer_rows: int = 20_000    # BatchedDataLoader shuffling_queue_capacity (rows)
    results_queue_size: int = 8          # row groups read ahead per rank
    prefetch_batches: int = 4            # batches a background thread keeps ready; 0 = none

    def __post_init__(self) -> None:
        check_positive("loader", workers_count=self.workers_count,
                       results_queue_size=self.results_queue_size)
        check_non_negative("loader", shuffle_buffer_rows=self.shuffle_buffer_rows,
                           prefetch_batches=self.prefetch_batches)
        if self.reader_pool not in READER_POOLS:
            raise ValueError(f"loader.reader_pool must be one of {list(READER_POOLS)}, "
                             f"got {self.reader_pool!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Section ``train``: what to train on, for how long, where results go."""

    algo: str = "bcq"                    # bcq (BatchRL-MTF) | td3 | cql | bc | iql
    split: str = "train"                 # rows of the transitions table used for training
    table_version: int | None = None     # pinned Delta version of the transitions; None = latest
    feature_version: str = ""            # required mtf.feature_version; "" accepts the table's
    start_ds: str = ""                   # first ds (YYYY-MM-DD) trained on; "" = from the start
    end_ds: str = ""                     # last ds trained on, inclusive; "" = to the end
    explore_groups: tuple[str, ...] = () # only rows logged in these exploration groups; () = all
    batch_size: int = 256                # transitions per update step and rank (paper: 256)
    max_steps: int = 300_000             # update steps, every rank runs exactly this many (paper)
    log_every: int = 1000                # steps between progress lines / metrics records
    checkpoint_every: int = 10_000       # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3            # newest checkpoints kept per run
    run_id: str = ""                     # run directory under lake models; "" = generated
    resume_from: str = ""                # checkpoint file or run directory to continue from
    export_checkpoint: str = ""          # `mtf export`: checkpoint file or run directory
    device: str = "auto"                 # auto (cuda if available) | cpu | cuda
    num_threads: int = 0                 # torch CPU threads per rank; 0 = cores / local ranks
    nproc_per_node: int = 1              # `mtf train` starts this many local DDP ranks itself
    normalizer_rows: int = 100_000       # training rows sampled for the state mean / std
    tensorboard: bool = True             # also log to TensorBoard when it is installed
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    common: LearnerConfig = field(default_factory=LearnerConfig)
    bcq: BCQConfig = field(default_factory=BCQConfig)
    td3: TD3Config = field(default_factory=TD3Config)
    cql: CQLConfig = field(default_factory=CQLConfig)
    bc: BCConfig = field(default_factory=BCConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"train.algo must be one of {list(ALGORITHMS)}, got {self.algo!r}")
        if self.device not in DEVICES:
            raise ValueError(f"train.device must be one of {list(DEVICES)}, got {self.device!r}")
        if not self.split:
            raise ValueError("train.split must name a split, e.g. 'train'")
        for key in ("start_ds", "end_ds"):
            value = getattr(self, key)
            if value and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(f"train.{key} must be a date YYYY-MM-DD, got {value!r}")
        if self.start_ds and self.end_ds and self.start_ds > self.end_ds:
            raise ValueError(f"train.start_ds {self.start_ds} is after train.end_ds {self.end_ds}")
        if self.table_version is not None and self.table_version < 0:
            raise ValueError(f"train.table_version must be >= 0, got {self.table_version!r}")
        check_positive("train", batch_size=self.batch_size, max_steps=self.max_steps,
                       log_every=self.log_every, checkpoint_every=self.checkpoint_every,
                       keep_checkpoints=self.keep_checkpoints, normalizer_rows=self.normalizer_rows,
                       nproc_per_node=self.nproc_per_node)
        check_non_negative("train", num_threads=self.num_threads)
        if "/" in self.run_id or self.run_id in (".", ".."):
            raise ValueError(f"train.run_id must be a plain directory name, got {self.run_id!r}")
