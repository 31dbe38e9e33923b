"""Policy sweep: train BCQ (or a baseline) variants on one transitions snapshot, score them on
simulator ground truth. The experiment behind docs/training.md "Does it learn to personalise?".

Two steps, so the training step can run where Spark and Delta are not installed (a GPU box):

1. ``export``: a pinned transitions table (train split, every exploration group) -> one ``.npz``
   (states/actions as float16 to keep it small, the feature layout as JSON)::

       .venv/bin/python benchmarks/policy_sweep.py export --table LAKE/transitions --out big.npz

2. ``run``: one process per variant (``--parallel`` at a time), each trains in memory for
   ``--steps`` steps, exports the deterministic policy and evaluates it against the logging
   baseline on ``--sessions`` simulated sessions with common random numbers (paired CI)::

       .venv/bin/python benchmarks/policy_sweep.py run --data big.npz --steps 15000 \\
           --run "twin_rho05: train.bcq.rho=0.5 train.common.hidden=[256,256]" \\
           --run "random_only: train.bcq.rho=0.5 train.explore_groups=[random]" \\
           -- serving.noise_share=0.3 serving.random_share=0.3

3. ``signal``: how much personalisation signal a table carries, without any learner: the
   discounted return-to-go of every step of one exploration group regressed (least squares) on
   the standardised state, the action and ``action x (profile_activity - 0.5)``; prints each
   task weight's coefficients with standard errors::

       .venv/bin/python benchmarks/policy_sweep.py signal --table LAKE/transitions --group random

4. ``smoke``: steps 1-3 in seconds on a lake it simulates itself (150 users x 2 days), with two
   tiny variants, so that a test can check the script still runs::

       .venv/bin/python benchmarks/policy_sweep.py smoke --json /tmp/sweep.json

Everything after ``--`` overrides the config of every variant and must match the config the
data were simulated with (seed, sim, fusion, features): the simulator that scores a policy is
rebuilt from it. ``TSEED=<n>`` in a variant's overrides (``"tag: TSEED=8 train.bcq.rho=0.5"``)
changes only the training seed, to measure seed-to-seed spread. Output: one line per variant
with the true return vs the baseline in % and its 95% CI, and the mean action of engaged
(profile_activity >= 0.6) and casual users, to see whether the policy personalises. ``run``,
``signal`` and ``smoke`` write a result JSON with ``--json PATH`` (benchmarks/result.py).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from result import write_result  # noqa: E402

from mtf.errors import UserError  # noqa: E402

GROUPS = ("exploit", "noise", "random")
COLUMNS = ("state", "action", "reward", "next_state", "is_terminal")


def export(table_path: str, out: str, version: int | None) -> dict[str, int]:
    from mtf.rl.loader import open_transitions, read_split

    table = open_transitions(table_path, version)
    parts = [read_split(table, "train", groups=(g,))[0] for g in GROUPS]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in COLUMNS}
    group = np.concatenate([np.full(len(p["reward"]), i, np.int8) for i, p in enumerate(parts)])
    np.savez_compressed(out, state=cat["state"].astype(np.float16),
                        next_state=cat["next_state"].astype(np.float16),
                        action=cat["action"].astype(np.float16),
                        reward=cat["reward"].astype(np.float32),
                        is_terminal=cat["is_terminal"].astype(np.int8), group=group,
                        layout=json.dumps(table.layout.to_dict()))
    counts = {g: int((group == i).sum()) for i, g in enumerate(GROUPS)}
    print(f"exported {len(group)} train rows {counts} of {table_path} "
          f"(version {table.layout.table_version}) to {out}")
    return counts


def signal(table_path: str, group: str, overrides: list[str]) -> dict[str, Any]:
    import pandas as pd
    import pyarrow.parquet as pq

    from mtf.config import load_config
    from mtf.delta import delta_snapshot

    cfg = load_config(None, overrides)
    gamma = cfg.mdp.gamma
    _, uris, _ = delta_snapshot(table_path)
    cols = ["session_id", "step", "state", "action", "reward", "explore_group", "split"]
    df = pd.concat(pq.read_table(u, columns=cols).to_pandas() for u in uris)
    df = df[df["split"] == "train"].sort_values(["session_id", "step"]).reset_index(drop=True)
    reward, sid = df["reward"].to_numpy(), df["session_id"].to_numpy()
    ret = np.zeros(len(df))                       # discounted return-to-go within the session
    for i in range(len(df) - 1, -1, -1):
        same = i + 1 < len(df) and sid[i + 1] == sid[i]
        ret[i] = reward[i] + (gamma * ret[i + 1] if same else 0.0)
    states, actions = np.stack(df["state"].to_numpy()), np.stack(df["action"].to_numpy())
    rows = (df["explore_group"] == group).to_numpy()
    activity = states[rows, cfg.features.feature_names.index("profile_activity")]
    z = (states - states.mean(0)) / (states.std(0) + 1e-9)
    x = np.column_stack([np.ones(rows.sum()), z[rows], actions[rows],
                         actions[rows] * (activity[:, None] - 0.5)])
    beta, *_ = np.linalg.lstsq(x, ret[rows], rcond=None)
    resid = ret[rows] - x @ beta
    se = np.sqrt(np.diag(resid.var() * np.linalg.pinv(x.T @ x)))
    k, off = actions.shape[1], 1 + states.shape[1]
    print(f"{rows.sum()} {group!r} train steps of {table_path}; return-to-go ~ state + action + "
          f"action x (profile_activity - 0.5), gamma {gamma}")
    coefficients = {}
    for j, task in enumerate(cfg.fusion.names):
        print(f"  {task:12s} action {beta[off + j]:+.3f} +- {se[off + j]:.3f}   "
              f"x activity {beta[off + k + j]:+.3f} +- {se[off + k + j]:.3f}")
        coefficients.update({f"{task}.action": beta[off + j], f"{task}.action_se": se[off + j],
                             f"{task}.x_activity": beta[off + k + j],
                             f"{task}.x_activity_se": se[off + k + j]})
    return {"steps": int(rows.sum()), "group": group, "gamma": gamma,
            "coefficients": {c: float(v) for c, v in coefficients.items()}}


def _variant(tag: str, data: str, overrides: list[str], steps: int, sessions: int,
             device: str, threads: int, out_dir: str) -> dict[str, Any]:
    """Train and score one variant (runs in its own process)."""
    import torch

    torch.set_num_threads(threads)
    from mtf.config import load_config
    from mtf.log import setup_logging
    from mtf.rl.batch import Normalizer, TransitionBatch
    from mtf.rl.checkpoint import load_checkpoint
    from mtf.rl.export import build_policy
    from mtf.rl.layout import ActionSpace, TableLayout
    from mtf.rl.loader import InMemorySource
    from mtf.rl.train import train
    from mtf.sim.evaluate import evaluate_many, paired_difference
    from mtf.serving.export import torch_policy
    from mtf.sim.policies import FixedPolicy
    from mtf.sim.world import World

    setup_logging("WARNING")
    tseed = [o for o in overrides if o.startswith("TSEED=")]
    overrides = [o for o in overrides if not o.startswith("TSEED=")]
    cfg = load_config(None, [f"train.max_steps={steps}", f"train.log_every={steps}",
                             f"train.checkpoint_every={steps}", *overrides])
    seed = int(tseed[-1].split("=", 1)[1]) if tseed else cfg.seed
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else "cpu" if device == "auto" else device)
    z = np.load(data)
    keep = np.ones(len(z["reward"]), dtype=bool)
    if cfg.train.explore_groups:
        keep = np.isin(z["group"], [GROUPS.index(g) for g in cfg.train.explore_groups])
    cols = {k: z[k][keep].astype(np.float32) for k in COLUMNS}
    cols["group"] = z["group"][keep].astype(np.float32)   # GROUPS order = GROUP_CODES
    layout = TableLayout.from_dict(json.loads(str(z["layout"])))
    batch = TransitionBatch.from_numpy(cols).to(dev)
    t0 = time.perf_counter()
    res = train(cfg.train, InMemorySource(batch, batch_size=cfg.train.batch_size, seed=seed),
                gamma=cfg.mdp.gamma, layout=layout,
                action_space=ActionSpace.from_fusion(cfg.fusion),
                run_dir=os.path.join(out_dir, tag), seed=seed,
                normalizer=Normalizer.fit(cols["state"]), device=dev)
    train_s = time.perf_counter() - t0
    policy = torch_policy(build_policy(load_checkpoint(res.checkpoint, map_location="cpu")))
    world = World.from_config(cfg)
    truth = evaluate_many(world, {"baseline": FixedPolicy(world.baseline_action),
                                  "learned": policy}, sessions, seed=cfg.pipeline.truth_seed)
    base = truth["baseline"]
    diff = paired_difference(truth["learned"], base)
    states = base.first_states
    engaged = states[:, cfg.features.feature_names.index("profile_activity")] >= 0.6
    actions = policy(states)
    scale = 100.0 / abs(base.mean_return)
    return {"tag": tag, "rows": len(batch), "train_s": train_s,
            "vs_baseline_pct": diff.diff_return * scale,
            "ci_pct": [diff.diff_ci[0] * scale, diff.diff_ci[1] * scale],
            "action_engaged": actions[engaged].mean(axis=0).round(2).tolist(),
            "action_casual": actions[~engaged].mean(axis=0).round(2).tolist()}


def _worker(args: tuple[Any, ...]) -> dict[str, Any]:
    try:
        return _variant(*args)
    except Exception as exc:  # one broken variant must not lose the others' results
        return {"tag": args[0], "error": f"{type(exc).__name__}: {exc}"}


def refuse_heldout(variants: list[tuple[Any, ...]]) -> None:
    """A sweep chooses settings, so it may only score on tuning worlds: stop (UserError, exit 2)
    when a variant's world seed, truth seed or training seed belongs to a held-out world of
    the config's ``protocol`` (mtf/loop/protocol.py)."""
    from mtf.config import load_config
    from mtf.loop.protocol import require_tuning

    for tag, _, overrides, *_ in variants:
        tseed = [int(o.split("=", 1)[1]) for o in overrides if o.startswith("TSEED=")]
        try:
            cfg = load_config(None, [o for o in overrides if not o.startswith("TSEED=")])
        except UserError:
            continue      # a broken variant fails alone in its worker, the others still run
        require_tuning(cfg, f"policy_sweep variant {tag!r}", seeds=tseed)


def run(ns: argparse.Namespace, common: list[str], smoke: bool = False,
        details: dict[str, Any] | None = None) -> int:
    variants = []
    for spec in ns.run:
        tag, _, rest = spec.partition(":")
        if not tag.strip() or not _:
            raise SystemExit(f"--run {spec!r}: expected 'tag: key=value ...'")
        variants.append((tag.strip(), ns.data, [*common, *rest.split()], ns.steps, ns.sessions,
                         ns.device, ns.threads, ns.out_dir))
    refuse_heldout(variants)
    print(f"{len(variants)} variants, {ns.parallel} at a time, {ns.steps} steps each, "
          f"{ns.sessions} evaluation sessions", flush=True)
    ctx = mp.get_context("spawn")   # CUDA and torch threads do not survive fork
    results = []
    with ctx.Pool(ns.parallel) as pool:
        for r in pool.imap_unordered(_worker, variants):
            results.append(r)
            if "error" in r:
                print(f"{r['tag']}: FAILED {r['error']}", flush=True)
            else:
                print(f"{r['tag']}: {r['vs_baseline_pct']:+.2f}% vs logging baseline "
                      f"[{r['ci_pct'][0]:+.2f}, {r['ci_pct'][1]:+.2f}]  engaged "
                      f"{r['action_engaged']}  casual {r['action_casual']}  "
                      f"({r['rows']} rows, train {r['train_s']:.0f} s)", flush=True)
    order = [v[0] for v in variants]
    results.sort(key=lambda r: order.index(r["tag"]))     # the order given, not of finishing
    figures = {}
    for r in results:
        if "error" not in r:
            figures.update({f"{r['tag']}.vs_baseline_pct": r["vs_baseline_pct"],
                            f"{r['tag']}.train_s": r["train_s"],
                            f"{r['tag']}.train_steps_per_s": ns.steps / r["train_s"]})
    write_result(ns.json, "policy_sweep", figures, {**vars(ns), "overrides": common}, smoke,
                 {**(details or {}), "variants": results})
    return 1 if any("error" in r for r in results) else 0


SMOKE_SIM = ["sim.n_users=150", "sim.users_per_shard=150", "sim.n_days=2"]


def smoke(ns: argparse.Namespace, common: list[str]) -> int:
    """Simulate a tiny lake, build its transitions, then export, signal and run as above."""
    from mtf.config import load_config
    from mtf.etl.pipeline import run_build_transitions
    from mtf.sim.job import simulate_to_delta
    from mtf.spark import get_spark

    workdir = ns.workdir or tempfile.mkdtemp(prefix="mtf-sweep-smoke-")
    overrides = [*SMOKE_SIM, *common]
    try:
        cfg = load_config(None, [f"lake.root={os.path.join(workdir, 'lake')}",
                                 "spark.shuffle_partitions=2",
                                 'spark.conf={"spark.databricks.delta.snapshotPartitions": "2", '
                                 '"spark.ui.enabled": "false"}', *overrides])
        spark = get_spark("mtf-sweep-smoke", cfg.spark)
        try:
            simulate_to_delta(spark, cfg)
            summary = run_build_transitions(spark, cfg)
        finally:
            spark.stop()      # free the cores for the variants
        table, data = cfg.lake.path("transitions"), os.path.join(workdir, "transitions.npz")
        counts = export(table, data, None)
        coefficients = signal(table, "random", overrides)
        runs = argparse.Namespace(
            data=data, steps=15, sessions=60, parallel=2, threads=1, device="cpu",
            out_dir=os.path.join(workdir, "runs"), json=ns.json,
            run=["a: train.batch_size=64", "b: TSEED=3 train.explore_groups=[random]"])
        return run(runs, overrides, smoke=True,
                   details={"train_steps": summary.train_steps, "exported_rows": counts,
                            "signal": coefficients})
    finally:
        if not ns.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, common = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="transitions table -> .npz")
    e.add_argument("--table", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--version", type=int, default=None)
    g = sub.add_parser("signal", help="regression of return-to-go on action x activity")
    g.add_argument("--table", required=True)
    g.add_argument("--group", default="random", choices=GROUPS)
    g.add_argument("--json", default="", metavar="PATH", help="write the coefficients here")
    r = sub.add_parser("run", help="train and score variants")
    r.add_argument("--data", required=True)
    r.add_argument("--run", action="append", required=True, metavar="'TAG: OVERRIDES'")
    r.add_argument("--steps", type=int, default=15000)
    r.add_argument("--sessions", type=int, default=6000)
    r.add_argument("--parallel", type=int, default=1)
    r.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda")
    r.add_argument("--out-dir", default="/tmp/mtf-policy-sweep")
    r.add_argument("--json", default="", metavar="PATH",
                   help="write the result JSON to PATH (see benchmarks/result.py)")
    m = sub.add_parser("smoke", help="all of the above, tiny, on a lake it simulates")
    m.add_argument("--workdir", default="",
                   help="keep the lake, the .npz and the runs here (default: a temporary "
                        "directory, removed)")
    m.add_argument("--json", default="", metavar="PATH",
                   help="write the result JSON to PATH (see benchmarks/result.py)")
    ns = p.parse_args(argv)
    if ns.cmd == "export":
        export(ns.table, ns.out, ns.version)
        return 0
    if ns.cmd == "signal":
        result = signal(ns.table, ns.group, common)
        write_result(ns.json, "policy_sweep.signal", result.pop("coefficients"),
                     {**vars(ns), "overrides": common}, False, result)
        return 0
    if ns.cmd == "smoke":
        return smoke(ns, common)
    try:
        return run(ns, common)
    except UserError as exc:      # a held-out world, a bad override: one line, exit 2
        print(f"policy_sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
