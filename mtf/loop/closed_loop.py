"""The closed loop, day after day in the simulator, and the comparison with the paper's baselines.

``mtf pipeline`` (the README's main command) runs, for each simulated day D:

0. **profiles**: the simulated users' profile table lands in Delta (``lake.user_profiles``);
1. **logs**: the simulator serves day D with the deployed policy plus exploration (exploit /
   action-noise / random user groups, log-densities logged) and the day's impression logs land
   in Delta (partition ``ds = D``; sessions running past midnight land in D + 1 next day, as
   real daily partitions do);
2. **transitions**: ``build-transitions`` for ``ds = D`` (incremental, continuing yesterday's
   sessions);
3. **train**: ``train.algo`` (the embedded default: IQL with a quadratic critic; ``bcq`` for
   the paper's BatchRL-MTF) on the last ``train_window_days`` days (paper: 3);
4. **evaluate**: the conservative off-policy estimate of the new policy against the logging
   baseline on the held-out split, and the go / no-go decision;
5. **deploy**: on "go", the new policy (wrapped in the exploration policy) serves day D + 1.

The simulator is this module's only source of truth and data: production code (``mtf.etl``,
``mtf.rl``, ``mtf.ope``, ``mtf.serving``) never imports it; ground truth reaches the OPE
through :class:`mtf.ope.truth.GroundTruth`, which :class:`mtf.sim.truth.SimulatorTruth`
implements.

Each day prints the deployed policy's true value (simulator ground truth), the OPE estimate and
the logging baseline. After the last day, the baselines the paper compares against are trained
or searched on the same data and evaluated on ground truth in one table, with paired
confidence intervals (common random numbers): logging baseline weights, the best fixed weights
found by CEM with simulator access, ES over a small state -> weights network, TD3, CQL, BCQ
(BatchRL-MTF), BCQ trained on random-exploration data only, and IQL with a weighted actor and
with a quadratic critic (beyond the paper).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from mtf import contract as S
from mtf.configtools import to_dict
from mtf.delta import write_delta
from mtf.etl.pipeline import run_build_transitions
from mtf.fusion import FusionConfig
from mtf.loop.blackbox import cem_fixed_action, es_linear_policy
from mtf.loop.config import LEARNERS, PipelineConfig
from mtf.ope.gate import evaluate_policies
from mtf.rl.export import POLICY_FILE
from mtf.rl.job import EXPORT_DIR, train_job
from mtf.rl.loader import open_transitions, read_split
from mtf.serving.exploration import ServingConfig
from mtf.serving.export import export_exploration, torch_policy
from mtf.sim.evaluate import evaluate_many, paired_difference
from mtf.sim.generate import simulate_shard
from mtf.sim.job import write_profiles
from mtf.sim.policies import FixedPolicy
from mtf.sim.world import World
from mtf.spark import get_spark
from mtf.tracking import Tracker, check_available, start_run

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mtf.config import MtfConfig
    from mtf.rl.config import TrainConfig

logger = logging.getLogger(__name__)

Policy = Callable[[np.ndarray], np.ndarray]


class SwitchablePolicy:
    """The base policy the simulator serves; the loop swaps it when it deploys a new one."""

    def __init__(self, policy: Policy, name: str) -> None:
        self.policy, self.name = policy, name

    def __call__(self, states: np.ndarray) -> np.ndarray:
        return self.policy(states)


@dataclass
class DayRow:
    day: str
    impressions: int
    transitions: int
    deployed: str                     # policy that served this day
    true_deployed: float              # its true discounted session return
    true_baseline: float
    candidate: str = ""               # policy trained at the end of the day (the gate's choice
    #                                   among pipeline.candidates; the first when none is GO)
    candidates: dict = dataclasses.field(default_factory=dict)  # name -> {true, ope, go}
    selection_regret: float = float("nan")  # best candidate's true value - the chosen one's
    true_candidate: float = float("nan")
    ope_candidate: float = float("nan")   # the gate's OPE estimate of the candidate
    ope_baseline: float = float("nan")
    decision: str = ""
    seconds: float = 0.0


# ---- the simulator side ---------------------------------------------------------------------

class DailyLogs:
    """Serves the simulated users one day at a time with a switchable base policy.

    Every shard runs :func:`mtf.sim.generate.simulate_shard` as a generator; the base policy is
    read when a day is simulated, so swapping :attr:`serving` between days deploys a new policy.
    Rows of sessions that run past midnight are held back and written with the next day.
    """

    def __init__(self, world: Any, serving: SwitchablePolicy) -> None:
        self.world, self.serving = world, serving
        self._gens = [simulate_shard(world, s, serving) for s in range(world.sim.n_shards)]
        self._carry: Any = None

    def next_day(self) -> tuple[dt.date, Any]:
        """(day, Arrow table of impressions with ds == day)."""
        parts = [next(g) for g in self._gens]
        day = parts[0][0]
        table = pa.concat_tables([t for _, t in parts] + ([self._carry] if self._carry else []))
        ds = table[S.DS]
        today = pc.equal(ds, pa.scalar(day, ds.type))
        self._carry = table.filter(pc.invert(today))
        return day, table.filter(today)


def _truth(world: Any, policies: dict[str, Policy], cfg: PipelineConfig) -> dict[str, Any]:
    return evaluate_many(world, policies, cfg.truth_sessions, seed=cfg.truth_seed)


# ---- the data / training / evaluation side ------------------------------------------------------

def _write_logs(spark: "SparkSession", fusion: FusionConfig, path: str, day: dt.date, table: Any,
                first: bool) -> int:
    schema = S.impression_log_schema(fusion.names)
    df = spark.createDataFrame(table.to_pandas(), schema=schema)
    write_delta(df, path, mode="overwrite", partition_by=[S.DS],
                replace_where=None if first else f"{S.DS} = '{day.isoformat()}'")
    return table.num_rows


def _build_day(spark: "SparkSession", cfg: "MtfConfig", day: dt.date) -> int:
    day_cfg = dataclasses.replace(cfg, etl=dataclasses.replace(
        cfg.etl, start_ds=day.isoformat(), end_ds=day.isoformat()))
    summary = run_build_transitions(spark, day_cfg)
    return summary.steps


def _train(cfg: "MtfConfig", first: dt.date, last: dt.date, run_id: str,
           learner: Callable[["TrainConfig"], "TrainConfig"] = lambda t: t) -> str:
    """Train on ds in [first, last] with ``learner`` applied to ``train`` (every exploration
    group unless it selects some); returns the exported policy directory."""
    tcfg = dataclasses.replace(learner(dataclasses.replace(cfg.train, explore_groups=())),
                               start_ds=first.isoformat(), end_ds=last.isoformat(),
                               run_id=run_id, resume_from="")
    result = train_job(dataclasses.replace(cfg, train=tcfg))
    return os.path.join(result.run_dir, EXPORT_DIR)


def _as_trained(train: "TrainConfig", learner: Callable[["TrainConfig"], "TrainConfig"]
                = lambda t: t) -> "TrainConfig":
    """The train config :func:`_train` runs for ``learner``, less what it sets itself (the
    window, the run id, no resume): two learners with equal keys train the same policy."""
    return dataclasses.replace(learner(dataclasses.replace(train, explore_groups=())),
                               start_ds="", end_ds="", run_id="", resume_from="")


def _load_policy(export_dir: str) -> Policy:
    return torch_policy(torch.jit.load(os.path.join(export_dir, POLICY_FILE)))


# ---- the loop ---------------------------------------------------------------------------------

def run_pipeline(spark: "SparkSession", cfg: "MtfConfig",
                 offline_eval: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the closed loop and the final comparison; returns the summary written to disk.

    With ``tracking.mlflow`` on, one MLflow run holds the config, the values of each day (step
    = day index), the comparison and the summary; the trainings and OPE runs of the loop are
    its child runs (:mod:`mtf.tracking`).
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tracker = start_run(cfg.tracking, lake_root=cfg.lake.root, kind="pipeline",
                        name=f"pipeline-{stamp}", config=to_dict(cfg))
    with tracker:   # FAILED in MLflow when the loop raises
        summary = _closed_loop(spark, cfg, stamp, offline_eval, tracker)
        tracker.log_metrics(comparison_metrics(summary["comparison"]))
        for name in ("summary.json", "summary.md"):
            tracker.log_artifact(os.path.join(summary["report_dir"], name), "summary")
    return summary


def _closed_loop(spark: "SparkSession", cfg: "MtfConfig", stamp: str,
                 offline_eval: Callable[..., dict[str, Any]] | None,
                 tracker: Tracker) -> dict[str, Any]:
    """The days of the loop and the comparison (``run_pipeline``); each day goes to
    ``tracker``."""
    pcfg: PipelineConfig = cfg.pipeline
    cfg = dataclasses.replace(cfg, sim=dataclasses.replace(cfg.sim, n_days=pcfg.days))
    world = World.from_config(cfg)
    baseline = FixedPolicy(world.baseline_action)
    serving = SwitchablePolicy(baseline, "baseline")
    logs = DailyLogs(world, serving)
    out_dir = os.path.join(cfg.lake.path("reports"), f"pipeline-{stamp}")
    os.makedirs(out_dir, exist_ok=True)
    offline_eval = offline_eval or _offline_eval
    days: list[DayRow] = []
    write_profiles(spark, cfg)      # the states' profile features come from this table
    for d in range(pcfg.days):
        t0 = time.perf_counter()
        day, table = logs.next_day()
        n_imp = _write_logs(spark, cfg.fusion, cfg.lake.path("raw_logs"), day, table, first=d == 0)
        n_tr = _build_day(spark, cfg, day)
        truth = _truth(world, {"deployed": serving.policy, "baseline": baseline}, pcfg)
        row = DayRow(day=day.isoformat(), impressions=n_imp, transitions=n_tr,
                     deployed=serving.name, true_deployed=truth["deployed"].mean_return,
                     true_baseline=truth["baseline"].mean_return)
        if d >= pcfg.first_train_day:
            first = day - dt.timedelta(days=pcfg.train_window_days - 1)
            exports = {}
            for i in range(pcfg.candidates):
                name = f"{cfg.train.algo}-{day.isoformat()}" + (f"-s{i}" if i else "")
                exports[name] = _train(dataclasses.replace(cfg, seed=cfg.seed + i),
                                       max(first, cfg.sim.start), day, f"{stamp}-{name}")
            ope = offline_eval(spark, cfg, {"baseline": None, **exports}, day=day,
                               out_dir=os.path.join(out_dir, f"ope-{day.isoformat()}"))
            policies = {n: _load_policy(e) for n, e in exports.items()}
            true_values = {n: r.mean_return for n, r in _truth(world, policies, pcfg).items()}
            chosen = ope.get("chosen") or next(iter(exports))
            name, export, candidate = chosen, exports[chosen], policies[chosen]
            row.candidate = name
            row.candidates = {n: {"true": true_values[n], "ope": ope["estimates"].get(n),
                                  "go": bool(ope["decisions"].get(n, False))} for n in exports}
            row.selection_regret = max(true_values.values()) - true_values[name]
            row.true_candidate = true_values[name]
            row.ope_candidate = ope["estimates"].get(name, float("nan"))
            row.ope_baseline = ope["estimates"].get("baseline", float("nan"))
            go = bool(ope["decisions"].get(name, False)) or not pcfg.go_requires_ope
            row.decision = "go" if go else "no-go"
            if go and d < pcfg.days - 1:
                serving.policy, serving.name = candidate, name
                _export_serving(cfg.serving, cfg.fusion, export, out_dir, name)
        row.seconds = time.perf_counter() - t0
        days.append(row)
        logger.info("day %s: %s", day, _fmt_day(row))
        tracker.log_metrics(day_metrics(row), step=d)
    # The last day's first candidate was trained exactly as the final comparison would train
    # the configured learner (same config, seed and window): its row reuses that training.
    comparison = compare_baselines(cfg, world, baseline, out_dir, stamp,
                                   last_day=cfg.sim.start + dt.timedelta(days=pcfg.days - 1),
                                   trained={cfg.train: next(iter(exports.values()))}
                                   if pcfg.first_train_day < pcfg.days else {})
    summary = {"days": [dataclasses.asdict(r) for r in days], "comparison": comparison,
               "report_dir": out_dir, "config": to_dict(cfg)}
    with open(os.path.join(out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2, default=str)
    with open(os.path.join(out_dir, "summary.md"), "w") as fh:
        fh.write(render_tables(summary))
    return summary


def day_metrics(row: DayRow) -> dict[str, float]:
    """One day of the loop as ``day/<value>`` metrics (``day/go``: 1 go, 0 no-go; NaN values
    of a day without a candidate are left out by the tracker)."""
    out = {f"day/{k}": float(getattr(row, k)) for k in (
        "impressions", "transitions", "true_deployed", "true_baseline", "true_candidate",
        "ope_candidate", "ope_baseline", "selection_regret", "seconds")}
    if row.decision:
        out["day/go"] = float(row.decision == "go")
    return out


def comparison_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The final comparison as ``compare/<policy>/<value>`` metrics (policy labels in snake
    case: ``compare/best_fixed_weights_cem/true_return``)."""
    out = {}
    for r in rows:
        slug = re.sub(r"\W+", "_", r["policy"]).strip("_").lower()
        for key in ("true_return", "vs_baseline_pct", "vs_best_fixed", "dwell_s",
                    "dwell_vs_baseline_pct"):
            if key in r:
                out[f"compare/{slug}/{key}"] = float(r[key])
    return out


def _export_serving(serving: ServingConfig, fusion: FusionConfig, export_dir: str, out_dir: str,
                    name: str) -> str:
    """The deployment artefact: the exploration policy wrapping the new policy."""
    module = torch.jit.load(os.path.join(export_dir, POLICY_FILE))
    return export_exploration(module, serving, fusion.lo, fusion.hi,
                              os.path.join(out_dir, f"deploy-{name}"),
                              meta={"policy": export_dir},
                              rays=fusion.action_space == "ray")


def _offline_eval(spark: "SparkSession", cfg: "MtfConfig", policies: dict[str, str | None],
                  *, day: dt.date, out_dir: str) -> dict[str, Any]:
    """Conservative OPE of ``policies`` (name -> export dir, None = the logging baseline) on the
    held-out split of the data available on ``day``: estimates and go / no-go decisions."""
    return evaluate_policies(spark, cfg, policies, day=day, out_dir=out_dir)


def compare_baselines(cfg: "MtfConfig", world: Any, baseline: Policy, out_dir: str, stamp: str,
                      last_day: dt.date, trained: dict[Any, str] | None = None
                      ) -> list[dict[str, Any]]:
    """Train/search every configured baseline on the final window; paired ground truth.

    ``trained``: train configs already trained on that window with ``cfg.seed`` -> their
    export directory; a learner whose train config equals one is not trained again."""
    trained = {_as_trained(t): e for t, e in (trained or {}).items()}
    pcfg: PipelineConfig = cfg.pipeline
    first = max(cfg.sim.start, last_day - dt.timedelta(days=pcfg.train_window_days - 1))
    policies: dict[str, Policy] = {"logging baseline": baseline}
    sessions: dict[str, int] = {}
    if "cem" in pcfg.compare:
        res = cem_fixed_action(world, pcfg.search, seed=cfg.seed, init=world.baseline_action)
        policies["best fixed weights (CEM)"] = res.best
        sessions["best fixed weights (CEM)"] = res.n_sessions
    if "es" in pcfg.compare:
        table = open_transitions(cfg.lake.path("transitions"), start_ds=first.isoformat(),
                                 end_ds=last_day.isoformat())
        states = read_split(table, "train", columns=("state",), max_rows=20_000)[0]["state"]
        init = getattr(policies.get("best fixed weights (CEM)"), "action", world.baseline_action)
        res = es_linear_policy(world, pcfg.search, seed=cfg.seed, state_sample=states,
                               init_bias=init)
        policies["ES (state -> weights)"] = res.best
        sessions["ES (state -> weights)"] = res.n_sessions
    for key, (label, learner) in LEARNERS.items():
        if key in pcfg.compare:
            export = trained.get(_as_trained(cfg.train, learner))
            if export is None:
                export = _train(cfg, first, last_day, f"{stamp}-final-{key}", learner)
            else:
                logger.info("comparison: %s is the last day's candidate (%s)", label, export)
            policies[label] = _load_policy(export)
    truth = _truth(world, policies, pcfg)
    best_fixed = truth.get("best fixed weights (CEM)")
    rows = []
    base = truth["logging baseline"]
    for label, res in truth.items():
        vs_base = paired_difference(res, base)
        row = {"policy": label, "true_return": res.mean_return, "ci": list(res.ci),
               "vs_baseline_pct": 100.0 * vs_base.diff_return / abs(base.mean_return),
               "vs_baseline_ci": list(vs_base.diff_ci), "dwell_s": res.mean_dwell_s,
               "dwell_vs_baseline_pct": 100.0 * vs_base.diff_dwell_s / abs(base.mean_dwell_s),
               "dwell_vs_baseline_ci": [100.0 * x / abs(base.mean_dwell_s)
                                        for x in vs_base.diff_dwell_ci],
               "interaction_rate": res.interaction_rate,
               "session_length": res.mean_session_length,
               "search_sessions": sessions.get(label, 0)}
        if best_fixed is not None:
            vs_fixed = paired_difference(res, best_fixed)
            row["vs_best_fixed"] = vs_fixed.diff_return
            row["vs_best_fixed_ci"] = list(vs_fixed.diff_ci)
        rows.append(row)
    return rows


# ---- output -----------------------------------------------------------------------------------

def _fmt_day(r: DayRow) -> str:
    return (f"{r.impressions} impressions, {r.transitions} transitions; deployed {r.deployed} "
            f"true {r.true_deployed:.3f} (baseline {r.true_baseline:.3f}); candidate "
            f"{r.candidate or '-'} true {r.true_candidate:.3f} OPE {r.ope_candidate:.3f} "
            f"(baseline OPE {r.ope_baseline:.3f}) -> {r.decision or '-'} [{r.seconds:.0f} s]")


def render_tables(summary: dict[str, Any]) -> str:
    """The per-day closed-loop table and the comparison table, as Markdown."""
    lines = ["## Closed loop, per day", "",
             "| day | impressions | deployed | true value (deployed) | true value (baseline) "
             "| candidate | true value (candidate) | OPE (candidate) | OPE (baseline) | decision |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["days"]:
        lines.append(f"| {r['day']} | {r['impressions']} | {r['deployed']} | "
                     f"{r['true_deployed']:.3f} | {r['true_baseline']:.3f} | "
                     f"{r['candidate'] or '-'} | {r['true_candidate']:.3f} | "
                     f"{r['ope_candidate']:.3f} | {r['ope_baseline']:.3f} | "
                     f"{r['decision'] or '-'} |")
    lines += ["", "## Comparison on ground truth (paired, common random numbers)", "",
              "| policy | true discounted session return [95% CI] | vs logging baseline "
              "| vs best fixed weights [95% CI] | dwell s / session | dwell vs baseline [95% CI] "
              "| interaction rate | session length |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["comparison"]:
        fixed = (f"{r['vs_best_fixed']:+.3f} [{r['vs_best_fixed_ci'][0]:+.3f}, "
                 f"{r['vs_best_fixed_ci'][1]:+.3f}]" if "vs_best_fixed" in r else "-")
        lines.append(f"| {r['policy']} | {r['true_return']:.3f} [{r['ci'][0]:.3f}, "
                     f"{r['ci'][1]:.3f}] | {r['vs_baseline_pct']:+.1f}% | {fixed} | "
                     f"{r['dwell_s']:.0f} | {r['dwell_vs_baseline_pct']:+.1f}% "
                     f"[{r['dwell_vs_baseline_ci'][0]:+.1f}, {r['dwell_vs_baseline_ci'][1]:+.1f}]"
                     f" | {r['interaction_rate']:.3f} | "
                     f"{r['session_length']:.2f} |")
    return "\n".join(lines) + "\n"


def run(cfg: "MtfConfig") -> int:
    """Entry point of ``mtf pipeline``: prints the tables and the report directory."""
    check_available(cfg.tracking)   # a required MLflow that is missing: before Spark starts
    spark = get_spark("mtf-pipeline", cfg.spark)
    try:
        t0 = time.perf_counter()
        summary = run_pipeline(spark, cfg)
    finally:
        spark.stop()
    print(render_tables(summary))
    print(f"report: {summary['report_dir']}  ({time.perf_counter() - t0:.0f} s)")
    return 0
