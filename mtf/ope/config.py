"""Off-policy evaluation configuration (section ``ope``). Owned by mtf.ope.

Paper values (docs/method.md section 7, Conservative-OPEstimator) are the defaults: alpha
0.5e-3, lr 1e-4, batch m = 512, K = 5000 iterations, n = 5000 initial states; the discount is
``mdp.gamma``. Every other field is a project decision [D],
documented in docs/ope.md. This module imports nothing heavy, so ``mtf.config`` can nest it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mtf.configtools import check_non_negative, check_positive
from mtf.errors import NoGpuError

# Estimators in report order. ``conservative_fqe`` is the paper's Conservative-OPEstimator, the
# one the go / no-go decision uses; the others are references fitted on the same data.
ESTIMATORS = ("conservative_fqe", "fqe", "pdis", "wpdis", "dr")
ENSEMBLE = "fqe_ensemble"    # the bootstrapped FQE ensemble (fitted in the driver, no row sums)
REPORTED_ESTIMATORS = (*ESTIMATORS, ENSEMBLE)
GATES = ("conservative_fqe", ENSEMBLE)   # estimators that can make the go / no-go decision
LOGGING_POLICY = "logging"   # name of the logging baseline among the evaluated policies
# The ensemble members' kinds; ``ope.ensemble.model`` names one or several joined by "+"
# (a member's value is then the mean of its kinds' fits on the same resample); "hybrid" is
# "mlp+linear".
MEMBER_KINDS = ("mlp", "linear", "mwl", "model_based")
ENSEMBLE_MODELS = ("hybrid", *MEMBER_KINDS)
MODEL_ALIASES = {"hybrid": ("mlp", "linear")}


def model_components(model: str) -> tuple[str, ...]:
    """The member kinds of ``ope.ensemble.model``, in MEMBER_KINDS order (ValueError names
    an unknown one)."""
    parts = [c for part in model.split("+") for c in MODEL_ALIASES.get(part.strip(),
                                                                       (part.strip(),))]
    unknown = [c for c in parts if c not in MEMBER_KINDS]
    if not parts or unknown:
        raise ValueError(f"ope.ensemble.model must be one of {list(ENSEMBLE_MODELS)} or "
                         f"several joined by '+' (e.g. linear+model_based), got {model!r}")
    return tuple(k for k in MEMBER_KINDS if k in parts)


@dataclass(frozen=True)
class EnsembleConfig:
    """Section ``ope.ensemble``: bootstrapped FQE ensembles (mtf.ope.ensemble; docs/ope.md
    section 1). ``members: 0`` turns the ensemble off."""

    members: int = 10                  # E fits per policy, each on its own session resample
    model: str = "mlp"                 # each member's Q: mlp (Adam steps per backup) | linear
    #                                    (closed-form ridge regressions on quadratic features,
    #                                    mtf.ope.linear_fqe) | hybrid (member e's value is the
    #                                    mean of both fits on resample e) | model_based (a
    #                                    learned session model rolled out under the policy,
    #                                    mtf.ope.model_based) | mwl (the linear fixed point,
    #                                    LSTDQ = minimax weight learning with linear classes,
    #                                    mtf.ope.linear_fqe.fixed_point) | kinds joined by "+", e.g.
    #                                    linear+model_based (their mean); docs/ope.md 1, 9
    ridge: float = 1e-3                # linear: ridge weight per unit of row weight
    hidden: tuple[int, ...] = (64, 64)  # widths of each member's MLP
    lr: float = 1e-3                   # Adam learning rate
    batch_size: int = 256              # transitions per member per step
    steps_per_backup: int = 50         # gradient steps between hard target copies
    backups: int = 0                   # Bellman backups; 0 = n_backups_for(the split, gamma)
    extra_backups: int = 10            # added to the automatic count (fit lag)
    horizon_tol: float = 0.01          # discounted weight left beyond the horizon; convergence
    #                                    tolerance (relative change over the last quarter)
    alpha: float = 0.0                 # CQL regulariser weight (0: pessimism from the quantile)
    lower_quantile: float = 0.1        # q of the pessimistic value and of the gate
    max_spread: float = 0.12           # spread guard: no go when the members' sd of
    #                                    V(pi) - V(logging) exceeds this fraction of
    #                                    |V(logging)| (the data do not pin the gain down);
    #                                    0 = off; chosen on the tuning world (docs/ope.md 9)
    min_support: float = 0.0           # support guard: no go when less than this share of
    #                                    pi's actions has a logged action within the logged
    #                                    actions' own support_quantile nearest-neighbour
    #                                    distance (mtf.ope.support); 0 = off (the default
    #                                    gate measured on held-out worlds, docs/ope.md 9)
    support_quantile: float = 0.9      # the radius: this quantile of the logged actions'
    #                                    distances to their nearest other logged action
    support_sample_rows: int = 2000    # states sampled for the support shares
    bootstrap: bool = True             # False: every member sees all sessions (seeds only)
    max_initial_states: int = 5000     # initial states averaged (seeded subsample above it)
    model_hidden: tuple[int, ...] = (128, 128)   # model_based: widths of each member's
    #                                    one-step session model
    model_steps: int = 8000            # model_based: Adam steps of the session models (8000
    #                                    over 3000: a third of the error on the tuning world)

    @property
    def components(self) -> tuple[str, ...]:
        """The member kinds ``model`` names (``model_components``)."""
        return model_components(self.model)

    def __post_init__(self) -> None:
        if self.members < 0 or self.members == 1:
            raise ValueError(f"ope.ensemble.members must be 0 (off) or >= 2, got "
                             f"{self.members!r}")
        if not 0.0 < self.lower_quantile < 0.5:
            raise ValueError(f"ope.ensemble.lower_quantile must be in (0, 0.5), got "
                             f"{self.lower_quantile!r}")
        model_components(self.model)
        if not 0.0 <= self.min_support <= 1.0:
            raise ValueError(f"ope.ensemble.min_support must be in [0, 1] (0 = no support "
                             f"guard), got {self.min_support!r}")
        if not 0.0 < self.support_quantile < 1.0 or self.support_sample_rows < 2:
            raise ValueError("ope.ensemble.support_quantile must be in (0, 1) and "
                             "support_sample_rows >= 2")
        if not self.ridge > 0.0:
            raise ValueError(f"ope.ensemble.ridge must be > 0, got {self.ridge!r}")
        if not self.max_spread >= 0.0:
            raise ValueError(f"ope.ensemble.max_spread must be >= 0 (0 = no spread guard), "
                             f"got {self.max_spread!r}")
        for name in ("lr", "batch_size", "steps_per_backup", "max_initial_states",
                     "model_steps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ope.ensemble.{name} must be > 0, got "
                                 f"{getattr(self, name)!r}")
        if self.backups < 0 or self.extra_backups < 0 or self.alpha < 0:
            raise ValueError("ope.ensemble.backups, extra_backups and alpha must be >= 0")
        if not 0.0 < self.horizon_tol < 1.0:
            raise ValueError(f"ope.ensemble.horizon_tol must be in (0, 1), got "
                             f"{self.horizon_tol!r}")
        for name in ("hidden", "model_hidden"):
            widths = getattr(self, name)
            if not widths or any(h <= 0 for h in widths):
                raise ValueError(f"ope.ensemble.{name} must list positive widths, got "
                                 f"{list(widths)!r}")


FQE_SOURCES = ("sample", "stream")


@dataclass(frozen=True)
class OpeConfig:
    """Conservative OPE + reference estimators, bootstrap intervals and the go / no-go rule."""

    # ---- data -------------------------------------------------------------------------------
    split: str = "test"                  # transitions rows evaluated (paper: the test split)
    table_version: int | None = None     # pinned Delta version of the transitions; None = latest

    # ---- Conservative FQE (docs/method.md 7) -------------------------------------------------
    alpha: float = 0.5e-3                # CQL regulariser weight alpha in alpha*R + T (paper)
    lr: float = 1e-4                     # Adam learning rate (paper)
    batch_size: int = 512                # m: transitions per gradient step (paper)
    n_iterations: int = 5000             # K: gradient steps; one step = one "iteration" (paper)
    n_initial_states: int = 5000         # n: initial states s0 averaged (paper); 0 = all sessions
    hidden: tuple[int, ...] = (256, 256)  # Q-network MLP widths, ReLU [D]
    target_update_every: int = 100       # steps between hard copies Q_k <- Q of the frozen TD
    #                                      target network [D] (K / this = Bellman backups)
    fqe_source: str = "sample"           # where the plain / conservative FQE fits read:
    #                                      sample (the driver's session sample below) | stream
    #                                      (the whole split through petastorm, mtf.ope.stream)
    fqe_max_rows: int = 2_000_000        # split rows collected to the driver (FQE with
    #                                      fqe_source=sample, the ensemble, the diagnostics);
    #                                      larger splits are subsampled by whole sessions [D]
    log_every: int = 100                 # steps between fit-curve points (TD error, Q means)

    # ---- importance sampling family (pdis, wpdis, dr) ----------------------------------------
    target_sigma: float = 0.1            # sigma_e: target density pi_e(a|s) = prod_i N(a_i;
    #                                      pi(s)_i, sigma_e^2) truncated to [-1, 1] (normalised
    #                                      action units; default = the logging noise sigma)
    max_weight: float = 1000.0           # clip of the cumulative weight rho_{0:t} (bias for
    #                                      variance); clipped rows are counted in the report
    wpdis_horizon: int = 100             # H: steps per session used by WPDIS (gamma^H ~ 0.006)

    # ---- uncertainty and decision -------------------------------------------------------------
    n_bootstrap: int = 1000              # B: Poisson(1) bootstrap replicates over sessions
    ci_level: float = 0.95               # two-sided level of every reported interval
    go_margin: float = 0.01              # non-inferiority margin, as a fraction of
    #                                      |V_cons(logging)|: go iff lower(V_cons(pi) -
    #                                      V_cons(logging)) > -go_margin * |V_cons(logging)|
    max_penalty: float = 0.1             # support guard: no go when FQE - conservative FQE of
    #                                      the candidate exceeds this fraction of
    #                                      |V_cons(logging)| (its value rests on extrapolation
    #                                      the regulariser had to cut); 0 = no guard

    # ---- bootstrapped FQE ensemble and the gate ------------------------------------------------
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    gate: str = "fqe_ensemble"          # the estimator whose paired lower bound decides:
    #                                      fqe_ensemble | conservative_fqe (the paper's); chosen
    #                                      on the tuning world of docs/ope.md section 9

    # ---- which policies ----------------------------------------------------------------------
    policies: tuple[str, ...] = ()       # exported policy dirs (policy.pt + policy.json) or run
    #                                      ids under the lake's models dir; () = discover all
    latest_per_algorithm: bool = True    # when discovering: keep only the newest per algorithm
    include_logging: bool = True         # evaluate the logging baseline (the decision reference)
    fixed_policies: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #                                      extra constant-action policies: name -> action

    # ---- execution and report ----------------------------------------------------------------
    device: str = "cpu"                  # FQE fitting device in the driver: cpu | cuda | auto
    threads: int = 0                     # torch threads of the driver's FQE fit; 0 = all cores
    udf_threads: int = 1                 # torch threads per Spark Python worker (cores / task)
    run_id: str = ""                     # report directory under the lake's reports; "" = UTC
    plot_sample_rows: int = 5000         # rows per policy in the action-distribution plots

    def __post_init__(self) -> None:
        if not self.split:
            raise ValueError("ope.split must name a split, e.g. 'test'")
        if self.table_version is not None and self.table_version < 0:
            raise ValueError(f"ope.table_version must be >= 0, got {self.table_version!r}")
        check_positive("ope", lr=self.lr, batch_size=self.batch_size,
                       n_iterations=self.n_iterations,
                       target_update_every=self.target_update_every,
                       fqe_max_rows=self.fqe_max_rows,
                       log_every=self.log_every, target_sigma=self.target_sigma,
                       wpdis_horizon=self.wpdis_horizon, n_bootstrap=self.n_bootstrap,
                       udf_threads=self.udf_threads, plot_sample_rows=self.plot_sample_rows)
        check_non_negative("ope", alpha=self.alpha, n_initial_states=self.n_initial_states,
                           go_margin=self.go_margin, max_penalty=self.max_penalty,
                           threads=self.threads)
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"ope.hidden must list one or more positive layer widths, "
                             f"got {list(self.hidden)!r}")
        if not self.max_weight > 1.0:
            raise ValueError(f"ope.max_weight must be > 1, got {self.max_weight!r}")
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"ope.ci_level must be in (0, 1), got {self.ci_level!r}")
        if self.n_bootstrap < 20:
            raise ValueError(f"ope.n_bootstrap must be >= 20 for a percentile interval, "
                             f"got {self.n_bootstrap!r}")
        for name, action in self.fixed_policies.items():
            if not name or not name.replace("-", "_").replace(".", "_").isidentifier():
                raise ValueError(f"ope.fixed_policies name {name!r} must be a plain name "
                                 f"(letters, digits, '_', '-', '.')")
            if name == LOGGING_POLICY:
                raise ValueError(f"ope.fixed_policies must not redefine {LOGGING_POLICY!r}; "
                                 f"set serving.baseline_action instead")
            if not action or any(not -1.0 <= a <= 1.0 for a in action):
                raise ValueError(f"ope.fixed_policies.{name} must be a non-empty action in "
                                 f"[-1, 1]^k, got {list(action)!r}")
        if self.gate not in GATES:
            raise ValueError(f"ope.gate must be one of {list(GATES)}, got {self.gate!r}")
        if self.gate == ENSEMBLE and not self.ensemble.members:
            raise ValueError("ope.gate=fqe_ensemble needs ope.ensemble.members >= 2")
        if self.fqe_source not in FQE_SOURCES:
            raise ValueError(f"ope.fqe_source must be one of {list(FQE_SOURCES)}, "
                             f"got {self.fqe_source!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"ope.device must be cpu, cuda or auto, got {self.device!r}")
        if "/" in self.run_id or self.run_id in (".", ".."):
            raise ValueError(f"ope.run_id must be a plain directory name, got {self.run_id!r}")

    def resolved_device(self) -> str:
        """``cuda`` for ``auto`` when torch sees a GPU, else ``cpu``; other values as set."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise NoGpuError("ope.device='cuda' but torch.cuda.is_available() is False (no GPU "
                             "or CUDA driver here): set ope.device=auto or cpu")
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"
