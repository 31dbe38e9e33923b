"""OPE of several policies on one split: FQE fits, row scores, sums, estimates, decisions.

Two paths share everything but the data plumbing:

* single process, :func:`evaluate_arrays`: the split as numpy arrays
  (:class:`mtf.ope.data.TransitionArrays`), scored and aggregated in this process;
* Spark, :func:`mtf.ope.job.evaluate_table`: the split stays in Spark; FQE is fitted in the
  driver on (a session sample of) the split, then rows are scored with mapInArrow and
  aggregated in Spark, and only the bootstrap sums are collected.

Both call :func:`fit_policies` (driver-side FQE), :func:`mtf.ope.results.summarise` and
:func:`mtf.ope.results.decide`; tests hold their numbers equal.

Example:
    >>> policies = [fixed_policy("logging", np.zeros(k)), load_exported("lake/models/bcq-1/export")]
    >>> result = evaluate_arrays(arrays, policies, OpeConfig(), gamma=0.95, seed=7)
    >>> [(d.policy, d.go) for d in result.decisions]
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from mtf.ope.bootstrap import initial_state_mask, session_hashes, weighted_sums
from mtf.ope.config import LOGGING_POLICY, OpeConfig
from mtf.ope.ensemble import (EnsembleFit, fit_ensemble, mean_of_kinds, n_backups_for,
                              session_index)
from mtf.ope.data import TransitionArrays
from mtf.ope.estimators import session_statistics, derived_stats, pad_sessions
from mtf.ope.linear_fqe import fit_linear_ensemble, fit_mwl_ensemble, occupancy_shares
from mtf.ope.model_based import fit_model_ensemble
from mtf.ope.support import support_shares
from mtf.ope.fqe import FqeData, FqeFit, FqeSettings, fit_fqe
from mtf.ope.policies import TargetPolicy, ray_policies, script_bytes
from mtf.ope.results import Decision, PolicyEstimates, decide, summarise, with_ensemble
from mtf.ope.score import PolicyModels, ScoringBundle, load_bundle, score_rows

if TYPE_CHECKING:
    from mtf.fusion import FusionConfig

Rays = tuple[tuple[float, ...], tuple[float, ...]]   # the ray parametrisation's (lo, hi)

logger = logging.getLogger(__name__)

_SCORE_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class PolicyFits:
    """The two FQE fits of one policy and a sample of its actions (for the report)."""

    name: str
    conservative: FqeFit
    plain: FqeFit
    action_sample: np.ndarray = field(repr=False)   # (n, k) pi(s) on sampled split states
    action_distance: float = float("nan")           # RMS per task of pi(s) - logged action


@dataclass(frozen=True)
class OpeResult:
    """Everything a report shows."""

    policies: list[TargetPolicy]
    results: list[PolicyEstimates]
    decisions: list[Decision]
    fits: dict[str, PolicyFits]
    logged_action_sample: np.ndarray               # (n, k) logged actions
    meta: dict[str, Any]                           # table, version, counts, gamma, timings, config
    truth: dict[str, dict[str, Any]] | None = None  # simulator ground truth per policy
    validation: dict[str, Any] | None = None       # estimator vs truth comparison
    ensemble: EnsembleFit | None = None            # the bootstrapped FQE ensemble, if fitted

    def estimate(self, policy: str, estimator: str) -> float:
        return next(r for r in self.results if r.policy == policy).estimates[estimator].value

    def decision(self, policy: str) -> Decision:
        return next(d for d in self.decisions if d.policy == policy)


def fqe_settings(ope: OpeConfig, gamma: float, seed: int, alpha: float) -> FqeSettings:
    return FqeSettings(alpha=alpha, gamma=gamma, lr=ope.lr, batch_size=ope.batch_size,
                       n_iterations=ope.n_iterations, hidden=tuple(ope.hidden),
                       target_update_every=ope.target_update_every, log_every=ope.log_every,
                       seed=seed, device=ope.resolved_device())


def policy_actions(module: Any, states: np.ndarray, batch_rows: int = _SCORE_BATCH_ROWS,
                   name: str = "") -> np.ndarray:
    """``pi(states)`` as float32 ``(N, k)``, in batches, validated to lie in [-1, 1]."""
    import torch

    parts = []
    with torch.inference_mode():
        for lo in range(0, states.shape[0], batch_rows):
            parts.append(module(torch.from_numpy(np.ascontiguousarray(
                states[lo:lo + batch_rows], dtype=np.float32))).numpy())
    out = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
    if out.size and (not np.all(np.isfinite(out)) or np.abs(out).max() > 1.0 + 1e-6):
        who = f"policy {name!r}" if name else "a target policy"
        raise ValueError(f"{who} returned actions outside [-1, 1] or non-finite")
    return out


def fit_policies(data: TransitionArrays, policies: Sequence[TargetPolicy], ope: OpeConfig, *,
                 gamma: float, seed: int,
                 plain: Mapping[str, PolicyFits] | None = None) -> dict[str, PolicyFits]:
    """Conservative (alpha = ope.alpha) and plain (alpha = 0) FQE of every policy on ``data``.

    Both fits of all policies use the same seed (initialisation and minibatch order), so their
    differences come from the policy and alpha, not from sampling noise. ``plain``: reuse these
    plain fits (e.g. when only alpha changes).
    """
    is_initial = data.position() == 0
    sample = plot_sample(len(data), ope, seed)
    fits = {}
    for p in policies:
        module = p.module()
        pi_s = policy_actions(module, data.state)
        pi_next = policy_actions(module, data.next_state)
        fqe_data = FqeData.from_numpy(data.state, data.action, data.reward, data.next_state,
                                      data.is_terminal, pi_s, pi_next, is_initial)
        cons = fit_fqe(fqe_data, fqe_settings(ope, gamma, seed, ope.alpha), name=p.name)
        plain_fit = plain[p.name].plain if plain and p.name in plain else \
            fit_fqe(fqe_data, fqe_settings(ope, gamma, seed, 0.0), name=p.name)
        fits[p.name] = with_actions(p.name, cons, plain_fit, pi_s, data.action, sample)
    return fits


def plot_sample(n_rows: int, ope: OpeConfig, seed: int) -> np.ndarray:
    """Sorted row indices of the action-distribution plots (``ope.plot_sample_rows``)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=min(ope.plot_sample_rows, n_rows), replace=False))


def with_actions(name: str, cons: FqeFit, plain: FqeFit, pi_s: np.ndarray,
                 logged: np.ndarray, sample: np.ndarray) -> PolicyFits:
    """A policy's two fits with its actions ``pi_s`` on the plot sample and their RMS
    distance from the ``logged`` actions of the same rows."""
    distance = float(np.sqrt(np.mean((pi_s - logged) ** 2)))
    return PolicyFits(name, cons, plain, pi_s[sample], distance)


def fit_ensemble_policies(data: TransitionArrays, policies: Sequence[TargetPolicy],
                          ope: OpeConfig, *, gamma: float, seed: int) -> EnsembleFit | None:
    """The bootstrapped FQE ensemble of every policy (``ope.ensemble``), all fitted together;
    None when ``ope.ensemble.members`` is 0. ``data`` must be sorted by session and step."""
    if not ope.ensemble.members:
        return None
    sess, first = session_index(data.session_id)
    pa, pna, modules = [], [], []
    for p in policies:
        module = p.module()
        modules.append(module)
        pa.append(policy_actions(module, data.state))
        pna.append(policy_actions(module, data.next_state))
    pa_all, pna_all = np.stack(pa), np.stack(pna)
    fits = {}
    kinds = ope.ensemble.components
    if "model_based" in kinds:
        fits["model_based"] = fit_model_ensemble(
            [p.name for p in policies], modules, data.state, data.action, data.reward,
            data.next_state, data.is_terminal, sess, first, gamma=gamma,
            settings=ope.ensemble, seed=seed, device=ope.resolved_device())
    args = ([p.name for p in policies], data.state, data.action, data.reward, data.next_state,
            data.is_terminal, pa_all, pna_all, sess, first)
    if "linear" in kinds:
        fits["linear"] = fit_linear_ensemble(*args, gamma=gamma, settings=ope.ensemble,
                                             seed=seed)
    if "mwl" in kinds:
        fits["mwl"] = fit_mwl_ensemble(*args, gamma=gamma, settings=ope.ensemble, seed=seed)
    if "mlp" in kinds:
        fits["mlp"] = fit_ensemble(*args, gamma=gamma, settings=ope.ensemble, seed=seed,
                                   device=ope.resolved_device())
    # a member of several kinds averages their fits on the same session resample (all draw
    # it from the same seed), so each kind's own extrapolation bias is diluted
    fit = mean_of_kinds(fits)
    shares, radius = support_shares(data.action, pa_all,
                                    quantile=ope.ensemble.support_quantile,
                                    sample_rows=ope.ensemble.support_sample_rows, seed=seed)
    # how many logged rows each policy's occupancy rests on (MWL weights on the whole split):
    # a trust note of the report, whatever the members' kind
    occupancy = occupancy_shares(data.state, data.action, data.next_state, data.is_terminal,
                                 pa_all, pna_all, sess, first, gamma=gamma,
                                 ridge=ope.ensemble.ridge)
    fit = replace(fit, support=shares, occupancy_ess=occupancy)
    logger.info("support radius %.3f; shares %s; occupancy ESS %s", radius,
                {p.name: round(float(x), 2) for p, x in zip(policies, shares)},
                {p.name: round(float(x), 3) for p, x in zip(policies, occupancy)})
    logger.info("FQE ensemble (%s): %d members x %d policies, %d backups, %.1fs",
                ope.ensemble.model, ope.ensemble.members, len(policies), fit.backups,
                fit.seconds)
    return fit


def scoring_bundle(policies: Sequence[TargetPolicy], fits: Mapping[str, PolicyFits],
                   ope: OpeConfig, state_dim: int, action_dim: int,
                   rays: Rays | None = None) -> ScoringBundle:
    """TorchScript bytes of every policy and its two Q networks."""
    return ScoringBundle(
        policies=tuple(PolicyModels(p.name, p.payload, script_bytes(fits[p.name].plain.q),
                                    script_bytes(fits[p.name].conservative.q))
                       for p in policies),
        target_sigma=ope.target_sigma, state_dim=state_dim, action_dim=action_dim,
        rays=rays)


def rays_of(fusion: "FusionConfig") -> Rays | None:
    """``(lo, hi)`` when ``fusion.action_space`` is ``"ray"``, else None."""
    if fusion.action_space != "ray":
        return None
    return tuple(map(float, fusion.lo)), tuple(map(float, fusion.hi))


def on_rays(data: TransitionArrays, policies: Sequence[TargetPolicy],
            rays: Rays | None) -> tuple[TransitionArrays, list[TargetPolicy]]:
    """The data and policies as the ray parametrisation sees them (unchanged without rays):
    canonical logged actions (``TransitionArrays.on_rays``) and canonical policies."""
    if rays is None:
        return data, list(policies)
    lo, hi = np.asarray(rays[0]), np.asarray(rays[1])
    return data.on_rays(lo, hi), ray_policies(policies, lo, hi)


def initial_share(ope: OpeConfig, n_sessions: int) -> float:
    """Share of sessions whose first state enters the FQE average (about n_initial_states)."""
    if ope.n_initial_states == 0 or n_sessions <= ope.n_initial_states:
        return 1.0
    return ope.n_initial_states / n_sessions


def local_sums(data: TransitionArrays, bundle: ScoringBundle, ope: OpeConfig, *, gamma: float,
               seed: int) -> dict[str, np.ndarray]:
    """Single-process twin of the Spark scoring + aggregation: ``{policy: (1 + B, m)}``."""
    models = load_bundle(bundle)
    parts: list[dict[str, dict[str, np.ndarray]]] = []
    for lo in range(0, len(data), _SCORE_BATCH_ROWS):
        hi = min(lo + _SCORE_BATCH_ROWS, len(data))
        parts.append(score_rows(models, data.state[lo:hi], data.next_state[lo:hi],
                                data.action[lo:hi], data.action_logp[lo:hi],
                                bundle.target_sigma, bundle.rays))
    position = data.position()
    starts = data.session_starts()
    hashes = session_hashes(data.session_id[starts])
    in_initial = initial_state_mask(hashes, initial_share(ope, starts.size), seed)
    out = {}
    for name in bundle.names:
        cols = {c: np.concatenate([p[name][c] for p in parts]) for c in parts[0][name]}
        raw, lengths, rho, num = session_statistics(
            position, data.reward, data.is_terminal, data.is_truncated, data.is_exploit,
            cols["log_ratio"], cols["q_sa"], cols["v_s"], cols["v_next"], cols["cv_s"],
            gamma=gamma, max_weight=ope.max_weight)
        num_p, den_p = pad_sessions(rho, num, lengths, ope.wpdis_horizon)
        stats = derived_stats(raw, num_p, den_p, in_initial)
        out[name] = weighted_sums(hashes, stats, ope.n_bootstrap, seed)
    return out


def with_fit_checks(results: Sequence[PolicyEstimates], fits: Mapping[str, PolicyFits],
                    fit_data: TransitionArrays, ope: OpeConfig,
                    gamma: float) -> list[PolicyEstimates]:
    """Diagnostics that say how far to trust a policy's numbers: the FQE fits' Bellman backups
    against the backups the split's sessions need (:func:`mtf.ope.ensemble.n_backups_for`),
    and the RMS distance of the policy's actions from the logged ones."""
    lengths = np.diff(np.append(fit_data.session_starts(), len(fit_data)))
    needed = n_backups_for(lengths, gamma, ope.ensemble.horizon_tol, 0)
    made = ope.n_iterations // ope.target_update_every
    out = []
    for r in results:
        diag = dict(r.diagnostics)
        diag.update({"fqe_backups": float(made), "backups_needed": float(needed)})
        f = fits.get(r.policy)
        if f is not None:
            diag["action_distance"] = f.action_distance
        out.append(replace(r, diagnostics=diag))
    return out


def evaluate_arrays(data: TransitionArrays, policies: Sequence[TargetPolicy], ope: OpeConfig, *,
                    gamma: float, seed: int, fits: Mapping[str, PolicyFits] | None = None,
                    logging_name: str = LOGGING_POLICY,
                    meta: Mapping[str, Any] | None = None,
                    rays: Rays | None = None) -> OpeResult:
    """The single-process path: fit (unless ``fits`` is given), score, aggregate, decide.

    ``data`` is the evaluation split. With no policy named ``logging_name`` there are
    estimates but no decisions. ``rays``: the ray parametrisation's (lo, hi)
    (:func:`rays_of`): data and policies are seen canonical (:func:`on_rays`).
    """
    if len(data) == 0:
        raise ValueError("evaluate_arrays: the evaluation split has no rows")
    data, policies = on_rays(data, policies, rays)
    t0 = time.perf_counter()
    fits = dict(fits) if fits is not None else fit_policies(data, policies, ope, gamma=gamma,
                                                            seed=seed)
    ensemble = fit_ensemble_policies(data, policies, ope, gamma=gamma, seed=seed)
    t_fit = time.perf_counter() - t0
    bundle = scoring_bundle(policies, fits, ope, data.state_dim, data.action_dim, rays)
    sums = local_sums(data, bundle, ope, gamma=gamma, seed=seed)
    info = {"path": "single-process", "gamma": gamma, "seed": seed, "n_rows": len(data),
            "fit_seconds": t_fit, "total_seconds": time.perf_counter() - t0, **(meta or {})}
    return assemble(policies, fits, sums, data, ope, logging_name=logging_name,
                    ensemble=ensemble, meta=info)


def assemble(policies: Sequence[TargetPolicy], fits: Mapping[str, PolicyFits],
             sums: Mapping[str, np.ndarray], fit_data: TransitionArrays, ope: OpeConfig, *,
             logging_name: str, meta: Mapping[str, Any],
             ensemble: EnsembleFit | None = None) -> OpeResult:
    """Summaries and decisions from the sums of either path (and the ensemble, if fitted)."""
    ordered = {p.name: sums[p.name] for p in policies}
    results = summarise(ordered, ope, logging_name)
    if ensemble is not None:
        results = with_ensemble(results, ensemble, ope, logging_name)
    results = with_fit_checks(results, fits, fit_data, ope, float(meta.get("gamma", 1.0)))
    has_ref = any(p.name == logging_name for p in policies)
    decisions = decide(results, ope, logging_name) if has_ref else []
    rng = np.random.default_rng(0)
    sample = rng.choice(len(fit_data), size=min(ope.plot_sample_rows, len(fit_data)),
                        replace=False)
    for d in decisions:
        logger.info("policy %s: %s (%s)", d.policy, "GO" if d.go else "NO-GO", d.reason)
    return OpeResult(policies=list(policies), results=results, decisions=decisions,
                     fits=dict(fits), logged_action_sample=fit_data.action[np.sort(sample)],
                     meta=dict(meta), ensemble=ensemble)
