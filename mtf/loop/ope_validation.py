"""The OPE estimators against the simulator's ground truth, in one process.

``python -m mtf.loop.ope_validation`` simulates logs, builds transitions, runs every estimator
and compares them with the true values (report included). Pieces:

* :func:`simulated_transitions`: simulator logs -> transition rows, in process. It follows the
  transition-table contract (docs/contract.md section 2) with the **reference** feature
  implementation (:func:`mtf.features.compute_states`) and reward
  (:func:`mtf.reward.impression_reward`), and takes sessions and steps from the simulator's
  truth columns. It stands in for the Spark ETL (``mtf build-transitions``) so validation does
  not depend on it; truncation is inferred from the end of the simulated window.
* :func:`validation_policies`: the logging baseline, fixed reference actions and a
  hand-written state-dependent rule, all as TorchScript target policies.
* :func:`ground_truth`: the true value of each policy (:class:`mtf.sim.truth.SimulatorTruth`).
* :func:`mtf.ope.truth.compare_with_truth`: errors, Spearman, interval coverage, discordant
  pairs and decisions against the truth.

Start distributions: the truth is the value of one session of an evaluation user (drawn from
the population, user-weighted) after ``sim.eval.warmup_sessions`` baseline sessions; OPE averages
over the initial states of the split's logged sessions, which are visit-weighted (engaged users
have more sessions). :func:`run_validation` therefore uses, by default, simulator settings
under which both are the same (:func:`matched_sim`); the logging policy's model-free logged
return next to its truth shows how well they agree.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from mtf.config import load_config
from mtf.configtools import from_dict
from mtf.features import compute_states
from mtf.fusion import weights_to_action
from mtf.log import setup_logging
from mtf.ope.config import LOGGING_POLICY, OpeConfig
from mtf.ope.data import TransitionArrays
from mtf.ope.evaluate import evaluate_arrays, fit_policies, on_rays, rays_of
from mtf.ope.policies import ThresholdModule, fixed_policy, module_policy
from mtf.ope.report import write_report
from mtf.ope.truth import compare_with_truth
from mtf.reward import impression_reward
from mtf.sim.generate import TRUE_SESSION_ID, TRUE_STEP, day_start_us, simulate_logs
from mtf.sim.policies import reference_actions
from mtf.sim.truth import SimulatorTruth
from mtf.sim.world import World

if TYPE_CHECKING:
    import pandas as pd

    from mtf.config import MtfConfig
    from mtf.ope.policies import TargetPolicy

logger = logging.getLogger(__name__)


# ---- simulated transitions --------------------------------------------------------------------

def simulated_transitions(world: "World", *, test_share: float = 1.0,
                          shards: Sequence[int] | None = None,
                          base_policy: Any = None) -> "pd.DataFrame":
    """Transition rows (docs/contract.md section 2) from in-process simulator logs.

    Sessions and steps come from the simulator's truth columns. The last step of a session is
    ``is_truncated`` when its page could still have been running at the end of the simulated
    window (last request later than ``window_end - page_size * (duration_max_s +
    browse_overhead_s)``; the simulator cuts rows at the window end), else ``is_terminal``. The
    next state of a truncated step is unknown; its own state stands in (FQE and DR bootstrap
    through it). ``split`` = "test" for the last ``test_share`` of sessions by start time.
    """
    if not 0.0 < test_share <= 1.0:
        raise ValueError(f"test_share must be in (0, 1], got {test_share!r}")
    logs = simulate_logs(world, base_policy, shards=shards, include_truth=True)
    imp = logs.impressions.to_pandas()
    imp["ts"] = imp["ts"].dt.tz_convert(None)
    imp["session_id"] = imp[TRUE_SESSION_ID]
    imp["step"] = imp[TRUE_STEP].astype(np.int64)
    states = compute_states(world.features, imp[["user_id", "request_id", "session_id", "step",
                                                  "ts", "position", "play_time_s", "duration_s",
                                                  "liked", "shared", "commented", "followed"]],
                            logs.profiles.to_pandas())
    stick, act = impression_reward(world.reward, imp["play_time_s"].to_numpy(),
                                   imp["duration_s"].to_numpy(), imp["liked"].to_numpy(),
                                   imp["shared"].to_numpy(), imp["commented"].to_numpy(),
                                   imp["followed"].to_numpy())
    imp["reward_stickiness"], imp["reward_activeness"] = stick, act
    req = imp.groupby("request_id", sort=False).agg(
        ts=("ts", "first"), fusion_weights=("fusion_weights", "first"),
        action_logp=("action_logp", "first"), explore_group=("explore_group", "first"),
        reward_stickiness=("reward_stickiness", "sum"),
        reward_activeness=("reward_activeness", "sum"))
    df = states.merge(req, left_on="request_id", right_index=True, validate="one_to_one")
    df = df.sort_values(["session_id", "step"], kind="mergesort").reset_index(drop=True)
    fusion = world.fusion
    weights = np.stack(df["fusion_weights"].to_numpy())
    df["action"] = list(np.clip(weights_to_action(weights, fusion.lo, fusion.hi), -1.0, 1.0)
                        .astype(np.float32))
    df["reward"] = df["reward_stickiness"] + df["reward_activeness"]
    last = df["session_id"].ne(df["session_id"].shift(-1)).to_numpy()
    sim = world.sim
    window_end_us = day_start_us(sim.start + dt.timedelta(days=sim.n_days))
    max_page_us = sim.session.page_size * (sim.catalog.duration_max_s
                                           + sim.response.browse_overhead_s) * 1e6
    ts_us = df["ts"].to_numpy().astype("datetime64[us]").astype(np.int64)
    truncated = last & (ts_us > window_end_us - max_page_us)
    state = np.stack(df["state"].to_numpy()).astype(np.float32)
    next_state = np.zeros_like(state)
    next_state[:-1] = state[1:]
    next_state[last] = 0.0
    next_state[truncated] = state[truncated]
    df["next_state"] = list(next_state)
    df["is_terminal"] = last & ~truncated
    df["is_truncated"] = truncated
    # Sessions ranked by start time (dense: equal starts share a rank); the last ones = test.
    start_rank = df.groupby("session_id", sort=False)["ts"].transform("min").rank(method="dense")
    df["split"] = np.where(start_rank > start_rank.max() * (1.0 - test_share), "test", "train")
    df["ds"] = df["ts"].dt.date
    df["ts"] = df["ts"].dt.tz_localize("UTC")
    return df[["session_id", "user_id", "step", "ts", "ds", "state", "next_state", "action",
               "action_logp", "reward", "reward_stickiness", "reward_activeness",
               "is_terminal", "is_truncated", "explore_group", "split"]]


def to_arrays(df: "pd.DataFrame", split: str | None = None) -> Any:
    """Transition rows (as from :func:`simulated_transitions`) -> TransitionArrays."""
    if split is not None:
        df = df[df["split"] == split]
    logp = df["action_logp"].to_numpy(dtype=np.float64, na_value=np.nan)
    return TransitionArrays.build(
        df["session_id"].to_numpy(), df["step"].to_numpy(), np.stack(df["state"].to_numpy()),
        np.stack(df["next_state"].to_numpy()), np.stack(df["action"].to_numpy()),
        [None if math.isnan(v) else v for v in logp], df["reward"].to_numpy(),
        df["is_terminal"].to_numpy(), df["is_truncated"].to_numpy(),
        df["explore_group"].to_numpy())


# ---- policies and ground truth ---------------------------------------------------------------

def validation_policies(world: "World") -> list["TargetPolicy"]:
    """Logging baseline; reference actions (mtf.sim.policies) at full, half and a fifth of the
    way from the baseline (the fifth stays inside the logged noise's reach); a state-dependent
    rule (click-leaning for engaged users, quality-leaning for casual ones)."""
    base = world.baseline_action
    ref = reference_actions(world.fusion)
    out = [fixed_policy(LOGGING_POLICY, base, "logging baseline")]
    out.append(fixed_policy("quality", ref["quality"], "quality-leaning weights"))
    out.append(fixed_policy("quality_half", 0.5 * ref["quality"] + 0.5 * base,
                            "halfway to quality"))
    out.append(fixed_policy("myopic", ref["myopic"], "clickbait-chasing weights"))
    out.append(fixed_policy("myopic_half", 0.5 * ref["myopic"] + 0.5 * base,
                            "halfway to myopic"))
    out.append(fixed_policy("quality_fifth", 0.2 * ref["quality"] + 0.8 * base,
                            "a fifth of the way to quality"))
    out.append(fixed_policy("myopic_fifth", 0.2 * ref["myopic"] + 0.8 * base,
                            "a fifth of the way to myopic"))
    names = world.features.feature_names
    feature = "profile_activity"
    if feature in names:
        rule = ThresholdModule(names.index(feature), 0.5,
                               torch.tensor(0.5 * ref["quality"] + 0.5 * base),
                               torch.tensor(0.5 * ref["myopic"] + 0.5 * base))
        out.append(module_policy("activity_rule", rule,
                                 f"halfway-myopic if {feature} >= 0.5 else halfway-quality"))
    return out


def ground_truth(world: "World", policies: Sequence["TargetPolicy"], n_sessions: int,
                 seed: int) -> dict[str, dict[str, Any]]:
    """True value of every policy (mean, CI, std err) from the simulator, paired."""
    return SimulatorTruth(world).values({p.name: p.numpy_policy() for p in policies},
                                        n_sessions=n_sessions, seed=seed)


# ---- the experiment ---------------------------------------------------------------------------

def matched_sim(sim: "Any", n_days: int) -> "Any":
    """Simulator settings under which the logged test sessions have the ground truth's start
    distribution: every user visits every day for exactly one session, so the last day's
    sessions are each user's ``n_days``-th session (user-weighted, as in mtf.sim.evaluate),
    and the evaluation episodes run after ``n_days - 1`` warm-up sessions."""
    pop = replace(sim.population, visit_prob_casual=1.0, visit_prob_engaged=1.0,
                  extra_sessions_mean=0.0)
    return replace(sim, n_days=n_days, population=pop,
                   eval=replace(sim.eval, warmup_sessions=n_days - 1))


def run_validation(cfg: "MtfConfig", *, n_users: int, n_days: int, truth_sessions: int,
                   matched: bool = True, out_dir: str | None = None,
                   ope: Any = None, extra_policies: Sequence["TargetPolicy"] = (),
                   alpha_sweep: Sequence[float] = (),
                   policy_names: Sequence[str] | None = None) -> Any:
    """Simulate -> transitions -> OPE (single process) -> ground truth -> report.

    With ``matched`` (default) the simulator runs under :func:`matched_sim` and the test split
    is the last day's sessions, so OPE and ground truth average over the same kind of session
    start; otherwise the configured simulator is used and every session is evaluated (the
    start distributions then differ: logged sessions are visit-weighted, the truth's are
    user-weighted). ``alpha_sweep``: also refit the conservative FQE with these alphas and
    record its values, rank correlation and decisions (``validation["alpha_sweep"]``).
    ``policy_names``: evaluate only these of :func:`validation_policies` (+ extra_policies).
    Returns (OpeResult, ReportPaths or None).
    """
    ope = ope or cfg.ope
    sim = replace(cfg.sim, n_users=n_users, n_days=n_days)
    sim = matched_sim(sim, n_days) if matched else sim
    test_share = 1.0 / n_days if matched else 1.0
    world = World.build(sim=sim, serving=cfg.serving, fusion=cfg.fusion, features=cfg.features,
                        reward=cfg.reward, gamma=cfg.mdp.gamma, seed=cfg.seed)
    df = simulated_transitions(world, test_share=test_share)
    data = to_arrays(df, ope.split)
    logger.info("validation data: %d rows, %d sessions in split %r", len(data),
                data.session_starts().size, ope.split)
    policies = [p for p in validation_policies(world)
                if policy_names is None or p.name in policy_names] + list(extra_policies)
    rays = rays_of(cfg.fusion)
    data, policies = on_rays(data, policies, rays)   # the alpha sweep's refits see them too
    result = evaluate_arrays(data, policies, ope, gamma=world.gamma, seed=cfg.seed,
                             rays=rays, meta={
        "table_path": f"simulator (n_users={n_users}, n_days={n_days}, seed={cfg.seed}, "
                      f"{'matched' if matched else 'configured'} start distribution)",
        "table_version": None, "split": ope.split, "n_sessions": int(data.session_starts().size),
        "fit_rows": len(data), "action_tasks": list(cfg.fusion.names)})
    truth = ground_truth(world, policies, n_sessions=truth_sessions, seed=cfg.seed + 1)
    validation = compare_with_truth(result.results, truth, result.decisions, SimulatorTruth.note)
    sweep = []
    for alpha in alpha_sweep:
        ope_a = replace(ope, alpha=float(alpha))
        fits = fit_policies(data, policies, ope_a, gamma=world.gamma, seed=cfg.seed,
                            plain=result.fits)
        res_a = evaluate_arrays(data, policies, ope_a, gamma=world.gamma, seed=cfg.seed,
                                fits=fits, rays=rays)
        v = compare_with_truth(res_a.results, truth, res_a.decisions, SimulatorTruth.note)
        cons = v["estimators"]["conservative_fqe"]
        sweep.append({"alpha": float(alpha),
                      "values": dict(zip(cons["policies"], cons["estimate"])),
                      "spearman": cons["spearman"], "same_order": cons["same_order"],
                      "mean_abs_error": cons["mean_abs_error"],
                      "diff_mean_abs_error": cons.get("diff_mean_abs_error"),
                      "decisions": v.get("decisions", [])})
        logger.info("alpha %g: conservative Spearman %.3f, values %s", alpha, cons["spearman"],
                    {k: round(x, 3) for k, x in sweep[-1]["values"].items()})
    if sweep:
        validation["alpha_sweep"] = sweep
    result = replace(result, truth=truth, validation=validation)
    paths = write_report(result, ope, out_dir, run_id=os.path.basename(out_dir)) \
        if out_dir else None
    return result, paths


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mtf.loop.ope_validation [--conf-file F] [--users N] ... [--ope K=V ...]``."""
    parser = argparse.ArgumentParser(prog="python -m mtf.loop.ope_validation",
                                     description="OPE estimators vs simulator ground truth")
    parser.add_argument("--conf-file", type=str, default=None)
    parser.add_argument("--users", type=int, default=4000, help="simulated users (default 4000)")
    parser.add_argument("--days", type=int, default=3, help="simulated days (default 3)")
    parser.add_argument("--truth-sessions", type=int, default=20000,
                        help="ground-truth sessions per policy (default 20000)")
    parser.add_argument("--unmatched", action="store_true",
                        help="use the configured simulator and all sessions (see run_validation)")
    parser.add_argument("--out", type=str, default="lake/reports/validation",
                        help="report directory (default lake/reports/validation)")
    parser.add_argument("--ope", type=str, action="append", default=[], metavar="KEY=VALUE",
                        help="ope config field override, e.g. --ope n_iterations=2000")
    parser.add_argument("--policies", type=str, default="",
                        help="comma-separated subset of the validation policies (default: all)")
    parser.add_argument("--alpha-sweep", type=str, default="",
                        help="comma-separated extra alphas for the conservative fit, e.g. "
                             "0.005,0.05")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    cfg = load_config(args.conf_file)
    import yaml

    fields = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.ope)}
    ope = from_dict(OpeConfig, fields, prefix="ope")
    if ope.threads:
        torch.set_num_threads(ope.threads)
    result, paths = run_validation(cfg, n_users=args.users, n_days=args.days,
                                   truth_sessions=args.truth_sessions, out_dir=args.out, ope=ope,
                                   matched=not args.unmatched,
                                   alpha_sweep=[float(a) for a in args.alpha_sweep.split(",")
                                                if a.strip()],
                                   policy_names=[p for p in args.policies.split(",") if p]
                                   or None)
    for est, v in result.validation["estimators"].items():
        logger.info("%-17s MAE %.4f  diff MAE %.4f  Spearman %.3f  coverage %.2f", est,
                    v["mean_abs_error"], v.get("diff_mean_abs_error", float("nan")),
                    v["spearman"], v["coverage"])
    logger.info("report: %s", paths.html if paths else "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
