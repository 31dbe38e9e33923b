"""OPE accuracy: every estimator against simulator truth, over tuning and held-out worlds.

Run with:
  .venv/bin/python benchmarks/ope_accuracy.py --json benchmarks/results/ope_accuracy.json
  .venv/bin/python benchmarks/ope_accuracy.py --worlds tune-101      # the tuning world only
  .venv/bin/python benchmarks/ope_accuracy.py --smoke                # tiny: does it still run?
  .venv/bin/python benchmarks/ope_accuracy.py --worlds held-404-long --no-paper \
      --compare 'mb:model=linear+model_based,lower_quantile=0.2'      # ensembles only

Per world (mtf.loop.ope_benchmark.WORLDS; docs/ope.md section 9): simulate 4 days of logs
(matched start distribution), train six learners on days 1-3, evaluate 15 candidates on day 4
with the paper's estimators and the bootstrapped FQE ensemble, simulate the truth with common
random numbers, and score each estimator (Spearman, regret@1, pairwise order accuracy,
relative MAE, share of pessimistic estimates at or below the truth, interval coverage, gate
confusion, model-selection regret). The printed table pools the held-out worlds only; tuning
worlds are printed apart and never enter it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from typing import Any, Sequence

from result import add_result_arguments, parse_with_smoke, write_result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf-file", type=str, default="conf/local.yaml",
                   help="base config (default conf/local.yaml: the demo's learners)")
    p.add_argument("--worlds", type=str, default="",
                   help="comma-separated world names (default: DEFAULT_WORLDS, the tuning world "
                        "tune-101 and the held-out worlds)")
    p.add_argument("--users", type=int, default=4000, help="simulated users per world (4000)")
    p.add_argument("--days", type=int, default=4, help="simulated days; the last is the test "
                   "split (4)")
    p.add_argument("--truth-sessions", type=int, default=20_000,
                   help="simulated sessions per policy for the truth (20000)")
    p.add_argument("--learner-steps", type=int, default=3000,
                   help="training steps of each learner (3000)")
    p.add_argument("--learners", type=str, default="",
                   help="comma-separated subset of the learners (default: all)")
    p.add_argument("--members", type=int, default=0,
                   help="ensemble members per policy (default: ope.ensemble.members)")
    p.add_argument("--ope", type=str, action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for the paper estimators, e.g. "
                        "ope.n_iterations=2000")
    p.add_argument("--rescore", type=str, default="", metavar="RESULT_JSON",
                   help="no simulation or fitting: apply the current ensemble gate (and "
                        "--ensemble overrides of its lower_quantile / max_spread) to the "
                        "members stored in an earlier result JSON and print its tables")
    p.add_argument("--ensemble", type=str, action="append", default=[], metavar="KEY=VALUE",
                   help="ensemble settings, e.g. lower_quantile=0.05")
    p.add_argument("--compare", type=str, action="append", default=None,
                   metavar="LABEL:KEY=VALUE,...",
                   help="another ensemble scored beside the default one: the default's "
                        "settings with these changed, e.g. "
                        "'mlp:model=mlp' (default: mtf.loop.ope_benchmark."
                        "DEFAULT_COMPARISONS); 'none' for none")
    p.add_argument("--no-paper", action="store_true",
                   help="skip the paper's conservative and plain FQE fits (most of a world's "
                        "time) and the rows that use them (conservative_fqe, fqe, dr): for "
                        "comparing ensembles on tuning worlds")
    add_result_arguments(p)
    return parse_with_smoke(p, argv, SMOKE)


SMOKE = {"worlds": "tune-101", "users": 120, "days": 3, "truth_sessions": 300,
         "learner_steps": 20, "learners": "iql,td3", "members": 2,
         "ope": ["ope.n_iterations=20", "ope.target_update_every=10", "ope.n_bootstrap=20",
                 "ope.hidden=[16,16]"],
         "ensemble": ["backups=3", "steps_per_backup=5", "hidden=[8,8]"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    import yaml

    from mtf.configtools import from_dict
    from mtf.log import setup_logging
    from mtf.loop import ope_benchmark as ob
    from mtf.ope.config import EnsembleConfig

    setup_logging("WARNING")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = [w for w in args.worlds.split(",") if w] or list(ob.DEFAULT_WORLDS)
    known = {w.name: w for w in ob.WORLDS}
    unknown = [w for w in names if w not in known]
    if unknown:
        print(f"unknown world(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2

    def key_values(items: Sequence[str]) -> dict[str, Any]:
        return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in items if o)}

    ens = from_dict(EnsembleConfig, {**({"members": args.members} if args.members else {}),
                                     **key_values(args.ensemble)}, prefix="ope.ensemble")
    comparisons = []
    for spec in (ob.DEFAULT_COMPARISONS if args.compare is None else args.compare):
        if spec == "none":
            continue
        label, _, body = spec.partition(":")
        # the default ensemble's settings with the given ones changed
        # (commas inside [...] belong to a list value)
        comparisons.append((label, from_dict(
            EnsembleConfig, {**vars(ens), **key_values(re.split(r",(?![^\[]*\])", body))},
            prefix=f"--compare {label}")))
    settings = ob.BenchSettings(
        n_users=args.users, n_days=args.days, truth_sessions=args.truth_sessions,
        learner_steps=args.learner_steps,
        learners=tuple(x for x in args.learners.split(",") if x)
        or ob.BenchSettings().learners,
        ope_overrides=(*ob.BenchSettings().ope_overrides, *args.ope), ensemble=ens,
        comparisons=tuple(comparisons), paper=not args.no_paper)
    t0 = time.perf_counter()
    worlds: list[dict[str, Any]] = []
    source: dict[str, Any] = {}
    if args.rescore:
        with open(args.rescore) as fh:
            stored = json.load(fh)
        source = {"rescored_from": args.rescore, "git": stored.get("git"),
                  "utc": stored.get("utc"), "sizes": stored.get("sizes")}
        for rec in stored["details"]["worlds"]:
            rec = {**rec, **ob.rescore_world(rec, ens)}
            worlds.append(rec)
            print(f"[{rec['world']}] ({rec['role']}) re-scored:")
            print(ob.format_table(rec["metrics"]), flush=True)
            check = ob.occupancy_check(rec)
            if check is not None:
                print(ob.format_occupancy_check(check), flush=True)
    for name in names if not args.rescore else []:
        rec = ob.run_world(known[name], settings, conf_file=args.conf_file)
        worlds.append(rec)
        print(f"[{name}] ({rec['role']}) per-world metrics:")
        print(ob.format_table(rec["metrics"]), flush=True)
        check = ob.occupancy_check(rec)
        if check is not None:
            print(ob.format_occupancy_check(check), flush=True)
    held = [w for w in worlds if w["role"] == ob.HELDOUT]
    tuning = [w for w in worlds if w["role"] == ob.TUNING]
    figures: dict[str, float] = {"seconds": time.perf_counter() - t0}
    summary: dict[str, Any] = {}
    for label, group in (("heldout", held), ("tuning", tuning)):
        if not group:
            continue
        rows = ob.pooled(group)
        summary[label] = {"worlds": [w["world"] for w in group], "rows": rows,
                          "goals": {e: ob.goal_check(r) for e, r in rows.items()}}
        print(f"\n{label} worlds {summary[label]['worlds']}, pooled:")
        print(ob.format_table(rows))
        occupancy = ob.pooled_occupancy_check(group)
        if occupancy is not None:
            summary[label]["occupancy"] = occupancy
            print(ob.format_occupancy_check(
                {**occupancy, "spearman": float(np.mean(occupancy["spearman_per_world"]))})
                + " (Spearman: mean over worlds)")
        for est, r in rows.items():
            for key in ("spearman", "regret_at_1", "pairwise_accuracy", "relative_mae",
                        "share_at_or_below_truth", "coverage", "selection_regret"):
                if r.get(key) is not None:
                    figures[f"{label}.{est}.{key}"] = float(r[key])
    if held:
        print("\ngoals on held-out worlds:")
        for est in ob.GATES:  # the two gates: conservative_fqe (paper), fqe_ensemble
            print(f"  {est}: {summary['heldout']['goals'].get(est)}")
    print(f"\n{len(worlds)} worlds in {figures['seconds']:.0f} s", flush=True)
    write_result(args.json, "ope_accuracy", figures,
                 {**{k: v for k, v in vars(args).items() if k not in ("json", "smoke")},
                  "ensemble_settings": replace(ens).__dict__},
                 args.smoke, {"summary": summary, "worlds": worlds, **source})
    return 0


if __name__ == "__main__":
    sys.exit(main())
