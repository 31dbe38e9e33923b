"""Held-out learning: the learned fusion against the logging policy and the best fixed weights.

Per protocol world (conf/local.yaml ``protocol``; mtf/loop/protocol.py): simulate
``pipeline.days`` of logs under the logging policy with its exploration, train the learners in
memory on every transition (``default`` = ``train`` as configured, ``bcq``, and ``--learner``
variants of ``train.*``), search the best fixed weights by CEM with simulator access (world seed
+ 500), and measure every policy on ``--truth-sessions`` sessions of the world's truth seed with
common random numbers: return and dwell time per session, % vs logging with paired 95% CIs,
interaction rate, session length, paired difference to the CEM weights. No Spark, Delta,
petastorm or MLflow on its path (mtf/loop/learning_benchmark.py): it runs where only Python,
torch, numpy, pandas, pyarrow and pyyaml are installed.

Tuning run that chooses among BCQ variants (tuning worlds only; the winner, best mean % vs
logging over the tuning worlds, goes to ``details.chosen`` of the result JSON; a quoted variant
may go on over lines with a backslash)::

  .venv/bin/python benchmarks/heldout_learning.py --role tuning --choose --parallel 16 \\
      --learner "bcq_wide: train.algo=bcq train.common.hidden=[256,256] \\
                 train.max_steps=15000 train.bcq.lam=0.75" \\
      --learner "bcq_rho05: train.algo=bcq train.bcq.rho=0.5" \\
      --learner "bcq_rho05_wide: train.algo=bcq train.bcq.rho=0.5 \\
                 train.common.hidden=[256,256] train.max_steps=15000" \\
      --learner "bcq_ens5: train.algo=bcq train.bcq.rho=0.5 train.common.hidden=[256,256] \\
                 train.max_steps=15000 train.bcq.n_critics=5 train.bcq.actor_penalty=1" \\
      --workdir /tmp/mtf-heldout --json benchmarks/results/heldout_learning_tuning.json

Held-out report with the chosen variant (held-out worlds only report; nothing is chosen)::

  .venv/bin/python benchmarks/heldout_learning.py --role heldout --parallel 16 \\
      --learners-from benchmarks/results/heldout_learning_tuning.json \\
      --workdir /tmp/mtf-heldout --json benchmarks/results/heldout_learning_heldout.json

Smoke (tiny: tune-7, 150 users x 2 days, 20 training steps, CEM 2 x 4 x 20 sessions, 200 truth
sessions, 2 processes, choosing among default, bcq and two variants, one of them with the ray
action parametrisation; the OPE gate's selection on 100 fresh users with a cheap OPE)::

  .venv/bin/python benchmarks/heldout_learning.py --smoke --json /tmp/heldout_smoke.json

Output: one table per world, a pooled summary (mean % vs logging of return and dwell; on how
many worlds each goal holds: return >= +5% and dwell >= +2% vs logging with the paired CI above
0, above the CEM weights with the paired CI above 0), progress lines with elapsed seconds on
stderr. ``--set KEY=VALUE`` overrides the config of every world (after the world's own).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from result import add_result_arguments, parse_with_smoke, write_result  # noqa: E402

from mtf.errors import UserError  # noqa: E402

SMOKE = {"role": "tuning", "worlds": "tune-7", "users": 150, "days": 2, "train_steps": 20,
         "cem_generations": 2, "cem_population": 4, "cem_sessions": 20, "truth_sessions": 200,
         "parallel": 2, "choose": True, "ope_select": True, "ope_users": 100,
         # a cheap OPE (few FQE steps, 2 ensemble members): the same code path
         "set": ["ope.n_iterations=40", "ope.target_update_every=10", "ope.n_bootstrap=20",
                 "ope.ensemble.members=2", "ope.ensemble.backups=3",
                 "ope.ensemble.steps_per_backup=5"],
         "learner": ["bcq_small: train.algo=bcq train.common.hidden=[16,16]",
                     "ray_small: fusion.action_space=ray"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf-file", type=str, default=None,
                   help="base config (default: the embedded conf/local.yaml, the product's "
                        "train defaults and the protocol worlds)")
    p.add_argument("--role", choices=("tuning", "heldout"), default="heldout",
                   help="run the config's tuning or held-out worlds (default heldout)")
    p.add_argument("--worlds", type=str, default="",
                   help="comma-separated protocol world names instead of the role's worlds")
    p.add_argument("--learner", action="append", default=[], metavar="'NAME: OVERRIDES'",
                   help="a learner variant besides default and bcq, e.g. \"bcq_wide: "
                        "train.algo=bcq train.common.hidden=[256,256]\" (train.* keys only)")
    p.add_argument("--learners", type=str, default="",
                   help="comma-separated subset of the learners to train (default: all of "
                        "default, bcq and the variants)")
    p.add_argument("--learners-from", type=str, default="", metavar="RESULT_JSON",
                   help="run the variant a --choose run chose (its result JSON)")
    p.add_argument("--choose", action="store_true",
                   help="tuning worlds only: write the learner with the best mean %% vs "
                        "logging to details.chosen")
    p.add_argument("--family", action="append", default=[], metavar="'NAME: L1,L2,...'",
                   help="with --choose: one choice per family among its learners (e.g. "
                        "\"bcq: bcq,bcq_rho05\"); details.choices holds each, --learners-from "
                        "runs every chosen variant (default: one family of all learners)")
    p.add_argument("--users", type=int, default=None,
                   help="simulated users per day (default sim.n_users of the config)")
    p.add_argument("--days", type=int, default=None,
                   help="simulated days (default pipeline.days of the config)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="every learner's train.max_steps (default: each learner's config)")
    p.add_argument("--truth-sessions", type=int, default=20_000,
                   help="ground-truth sessions per policy (20000)")
    p.add_argument("--cem-generations", type=int, default=10, help="CEM generations (10)")
    p.add_argument("--cem-population", type=int, default=16, help="CEM population (16)")
    p.add_argument("--cem-sessions", type=int, default=1000,
                   help="sessions per CEM candidate and generation (1000)")
    p.add_argument("--ope-select", action="store_true",
                   help="also let the configured OPE gate choose among the learners on fresh "
                        "users' logs (what a user without a simulator does) and report its "
                        "regret against the truth-best")
    p.add_argument("--ope-users", type=int, default=None,
                   help="with --ope-select: fresh users in the OPE's logs (default --users)")
    p.add_argument("--ope-days", type=int, default=1,
                   help="with --ope-select: days of their logs (1)")
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                   help="worker processes, one torch thread each (default: every core)")
    p.add_argument("--workdir", type=str, default="",
                   help="keep the simulated transitions (.npz, reused by later runs) and the "
                        "training runs here (default: a temporary directory, removed)")
    p.add_argument("--set", type=str, action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every world, after the world's own")
    add_result_arguments(p)
    return parse_with_smoke(p, argv, SMOKE)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as exc:      # a held-out world to choose on, a bad override: one line
        print(f"heldout_learning: error: {exc}", file=sys.stderr)
        return 2


def plan(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """The worlds and learners of a run, every config checked before any job starts; with
    ``--choose`` every world must be a tuning world (:func:`mtf.loop.protocol.require_tuning`)."""
    from mtf.config import load_config
    from mtf.loop import learning_benchmark as lb
    from mtf.loop.protocol import require_tuning

    if args.parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {args.parallel}")
    if args.family and not args.choose:
        raise UserError("--family only applies with --choose")
    if (args.ope_users is not None or args.ope_days != 1) and not args.ope_select:
        raise UserError("--ope-users and --ope-days only apply with --ope-select")
    if args.ope_days < 1 or (args.ope_users is not None and args.ope_users < 1):
        raise UserError("--ope-days and --ope-users must be >= 1")
    if args.learners_from and (args.learner or args.choose):
        raise UserError("--learners-from runs exactly the chosen variant: drop --learner and "
                        "--choose")
    base = load_config(args.conf_file, args.set)
    if args.learners_from:
        with open(args.learners_from) as fh:
            extra = lb.chosen_learners(json.load(fh), base.protocol)
    else:
        extra = [lb.parse_learner(t) for t in args.learner]
    learners = lb.learner_set(extra)
    only = [n for n in args.learners.split(",") if n]
    unknown = sorted(set(only) - {s.name for s in learners})
    if unknown:
        raise UserError(f"--learners {unknown} are not among {[s.name for s in learners]}")
    learners = [s for s in learners if not only or s.name in only]
    if args.choose:
        lb.parse_families(args.family, learners)       # unknown members: before any job
    sizes = lb.Sizes(users=args.users, days=args.days, train_steps=args.train_steps,
                     truth_sessions=args.truth_sessions, cem_generations=args.cem_generations,
                     cem_population=args.cem_population, cem_sessions=args.cem_sessions,
                     ope_select=args.ope_select, ope_users=args.ope_users,
                     ope_days=args.ope_days)
    runs = lb.world_runs(base.protocol, [w for w in args.worlds.split(",") if w], args.role,
                         args.conf_file, args.set, sizes)
    for r in runs:
        cfg = r.config()
        if args.choose:
            require_tuning(cfg, f"heldout_learning --choose on world {r.spec.name}")
        for spec in learners:
            r.config(spec)
    return runs, learners


def run(args: argparse.Namespace) -> int:
    from mtf.loop import learning_benchmark as lb

    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    runs, learners = plan(args)
    log(f"{len(runs)} worlds {[r.spec.name for r in runs]} x learners "
        f"{[s.name for s in learners]} + CEM, {args.parallel} processes")
    workdir = args.workdir or tempfile.mkdtemp(prefix="mtf-heldout-learning-")
    try:
        worlds = lb.run_jobs(runs, learners, parallel=args.parallel, workdir=workdir, log=log)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    for rec in worlds:
        print(lb.format_world(rec) + "\n", flush=True)
    reported = [w for w in worlds if w["rows"]]
    pool = lb.pooled(reported)
    print(f"pooled over {[w['world'] for w in reported]}:")
    print(lb.format_pooled(pool, len(reported)), flush=True)
    details: dict[str, Any] = {"worlds": worlds, "pooled": pool,
                               "learners": {s.name: list(s.overrides) for s in learners}}
    failed = any(w["failed"] for w in worlds)
    if args.choose:
        if failed:
            print("some jobs failed: nothing chosen", file=sys.stderr)
        else:
            families = lb.parse_families(args.family, learners)
            details["choices"] = {f: lb.choose(reported, members)
                                  for f, members in families.items()}
            if len(families) == 1:
                details["chosen"] = next(iter(details["choices"].values()))
            for f, c in details["choices"].items():
                print(f"\n{f}: chosen on {c['worlds']}: {c['name']} {c['overrides']} "
                      f"({c['mean_return_pct']:+.2f}% vs logging on average)", flush=True)
    figures = {"seconds": time.perf_counter() - t0, **lb.figures_of(pool, reported)}
    write_result(args.json, "heldout_learning", figures,
                 {k: v for k, v in vars(args).items() if k not in ("json", "smoke")},
                 args.smoke, details)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
