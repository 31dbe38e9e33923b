"""Does the learned fusion beat the logging policy and the best fixed weights? Per world.

The library of ``benchmarks/heldout_learning.py`` (no Spark, no Delta, no MLflow on its path).
For each protocol world (:mod:`mtf.loop.protocol`; the config is the world's overrides on the
base config, the simulated window ``pipeline.days`` long, as the closed loop's):

1. **simulate** the logs of the logging policy with its exploration and turn them into
   transitions in memory (:func:`mtf.loop.ope_validation.simulated_transitions`); every row
   trains (the closed loop's learners train on every day of their window). The trainer's
   columns are cached as ``.npz`` in the work directory, keyed by everything they depend on;
2. **train** each learner in memory (:func:`mtf.loop.in_memory_training.train_policy`):
   ``default`` (``train`` as configured), ``bcq`` and named variants of ``train.*`` overrides
   (:func:`parse_learner`); the training seed is the world seed, as in the closed loop;
3. **search** the best fixed weights by CEM with simulator access
   (:func:`mtf.loop.blackbox.cem_fixed_action`) on its own seed (world seed + 500);
4. **OPE selection** (``Sizes.ope_select``): what a user without a simulator does. The
   configured OPE (``ope``: its gate and :func:`mtf.ope.rules.select_policy`) evaluates the
   logging policy and every learner on ``ope_days`` of logs of **fresh users** (shards after
   the training population's: logs no learner trained on) and picks the policy to deploy;
   :func:`ope_selection` reports its true return and its regret against the truth-best of
   the learners and the logging policy (:func:`ope_job`);
5. **truth**: every policy on the same ``truth_sessions`` sessions of the world's truth seed
   (:func:`mtf.sim.evaluate.evaluate_many`; common random numbers, so each policy may run in its
   own process and still pair with the others), return and dwell time per session, and paired
   differences to the logging policy and to the CEM weights (:func:`world_rows`).

Every step is a job in a process pool (:func:`run_jobs`): CEM and the logging policy's truth
start at once, the learners when their world's data are there, each policy's truth as soon as
the policy is, so a many-core machine stays busy.

Tuning and held-out worlds: :func:`choose` picks the learner with the best mean % vs logging
over tuning worlds (its callers check :func:`mtf.loop.protocol.require_tuning` first);
:func:`chosen_learners` reads that choice back for a held-out run, which only reports.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shlex
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from mtf.errors import UserError
from mtf.loop.protocol import TUNING, ProtocolConfig, WorldSpec

if TYPE_CHECKING:
    from mtf.config import MtfConfig
    from mtf.ope.policies import TargetPolicy
    from mtf.sim.evaluate import EvalResult
    from mtf.sim.world import World

LOGGING, CEM = "logging", "cem"
RETURN_GOAL_PCT = 5.0        # the learned fusion's goal on return: >= +5% vs logging, CI > 0
DWELL_GOAL_PCT = 2.0         # ... and on dwell time per session: >= +2%, CI > 0
CEM_SEED_OFFSET = 500        # CEM searches on world seed + 500: neither the world's nor the truth's


# ---- learners -------------------------------------------------------------------------------

@dataclass(frozen=True)
class LearnerSpec:
    """A learner: a name and its ``train.*`` overrides of the configured ``train`` section."""

    name: str
    overrides: tuple[str, ...] = ()


BUILTIN_LEARNERS = (LearnerSpec("default"), LearnerSpec("bcq", ("train.algo=bcq",)))


# The non-train keys a learner may set: how actions are parametrised changes what the logging
# policy explores (so the learner gets its own simulated logs) but not the world's truth.
LEARNER_WORLD_KEYS = ("fusion.action_space",)


def parse_learner(text: str) -> LearnerSpec:
    """``"name: train.key=value train.key=value"`` -> :class:`LearnerSpec` (shell quoting
    allowed inside the overrides). Only ``train.*`` keys and :data:`LEARNER_WORLD_KEYS`: a
    learner may not change the world."""
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not sep or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"--learner {text!r}: expected 'name: train.key=value ...' with a name "
                        "of letters, digits, '_' or '-'")
    if name in (LOGGING, CEM):
        raise UserError(f"--learner {text!r}: {name!r} is the name of a reference policy; "
                        "choose another name")
    overrides = tuple(shlex.split(rest))
    bad = [o for o in overrides if "=" not in o or not (
        o.startswith("train.") or o.partition("=")[0] in LEARNER_WORLD_KEYS)]
    if bad:
        raise UserError(f"--learner {name}: overrides must be train.KEY=VALUE (or "
                        f"{', '.join(LEARNER_WORLD_KEYS)}), got {bad}")
    return LearnerSpec(name, overrides)


def learner_set(extra: Sequence[LearnerSpec]) -> list[LearnerSpec]:
    """``default``, ``bcq`` and ``extra`` (unique names; a variant may not reuse a built-in's)."""
    out = [*BUILTIN_LEARNERS, *extra]
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"learner names must be unique, repeated: {dup} (default and bcq are "
                        "always trained; name the variants differently)")
    return out


# ---- configs and worlds ---------------------------------------------------------------------

@dataclass(frozen=True)
class Sizes:
    """What one run simulates, trains and evaluates (None: the config's value)."""

    users: int | None = None           # sim.n_users
    days: int | None = None            # sim.n_days (default pipeline.days)
    train_steps: int | None = None     # every learner's train.max_steps
    truth_sessions: int = 20_000
    cem_generations: int = 10
    cem_population: int = 16
    cem_sessions: int = 1000           # sessions per CEM candidate and generation
    ope_select: bool = False           # choose among the learners with the OPE gate
    ope_users: int | None = None       # fresh users whose logs the OPE sees (None: users)
    ope_days: int = 1                  # days of their logs


@dataclass(frozen=True)
class WorldRun:
    """One world of a run, everything a job needs to rebuild its config (picklable)."""

    spec: WorldSpec
    role: str
    conf_file: str | None
    extra: tuple[str, ...]             # overrides after the world's own
    sizes: Sizes

    def config(self, learner: LearnerSpec | None = None) -> "MtfConfig":
        """The world's config; with ``learner``, its ``train`` overrides applied (and
        ``sizes.train_steps``)."""
        from mtf.config import load_config

        cfg = load_config(self.conf_file, [*self.spec.config_overrides(), *self.extra,
                                           *(learner.overrides if learner else ())])
        sim = replace(cfg.sim, n_users=self.sizes.users or cfg.sim.n_users,
                      n_days=self.sizes.days or cfg.pipeline.days)
        cfg = replace(cfg, sim=sim)
        if learner is not None and self.sizes.train_steps:
            cfg = replace(cfg, train=replace(cfg.train, max_steps=self.sizes.train_steps))
        return cfg

    def world(self, learner: LearnerSpec | None = None) -> "World":
        """The world (with ``learner``: its action parametrisation, which only changes what
        the logging policy explores; truth is measured on the world without it)."""
        from mtf.sim.world import World

        return World.from_config(self.config(learner))

    def data_key(self, learner: LearnerSpec | None = None) -> str:
        """A digest of everything the simulated transitions (of ``learner``'s logs) depend on."""
        from mtf.configtools import to_dict

        cfg = self.config(learner)
        parts = {k: to_dict(getattr(cfg, k)) for k in ("sim", "serving", "fusion", "features",
                                                       "reward", "mdp")}
        text = json.dumps({"seed": cfg.seed, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def world_runs(protocol: ProtocolConfig, names: Sequence[str], role: str,
               conf_file: str | None, extra: Sequence[str], sizes: Sizes) -> list[WorldRun]:
    """The worlds of a run: ``names`` (any protocol world) or every world of ``role``."""
    specs = [protocol.world(n) for n in names] if names else list(
        protocol.tuning if role == TUNING else protocol.heldout)
    if not specs:
        raise UserError(f"no {role} worlds in the config's protocol section; list them there "
                        "or name worlds with --worlds")
    return [WorldRun(s, protocol.role(s.name), conf_file, tuple(extra), sizes) for s in specs]


# ---- jobs (each runs in a worker process) ---------------------------------------------------

def _init_worker() -> None:
    import torch

    from mtf.log import setup_logging

    torch.set_num_threads(1)
    setup_logging("WARNING")


def simulate_job(run: WorldRun, path: str,
                 learner: LearnerSpec | None = None) -> dict[str, Any]:
    """Simulate the world's logs (as ``learner``'s action parametrisation explores them) and
    save the trainer's columns (every row) at ``path``."""
    from mtf.loop.in_memory_training import frame_columns
    from mtf.loop.ope_validation import simulated_transitions

    t0, c0 = time.perf_counter(), time.process_time()
    df = simulated_transitions(run.world(learner), test_share=1.0)
    cols = frame_columns(df)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **cols)
    os.replace(tmp, path)         # never a half-written cache
    return {"rows": int(len(df)), "sessions": int(df["session_id"].nunique()),
            "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "cached": False}


def load_columns(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def train_job(run: WorldRun, learner: LearnerSpec, data: str, run_dir: str) -> dict[str, Any]:
    """Train one learner on the world's cached columns; its policy as TorchScript bytes."""
    from mtf.loop.in_memory_training import select_groups, train_policy
    from mtf.ope.policies import module_policy

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = run.config(learner)
    cols = load_columns(data)
    module = train_policy(cfg, cfg.train, cols, seed=cfg.seed, run_dir=run_dir)
    tc = cfg.train
    return {"policy": module_policy(learner.name, module, f"{tc.algo}, {tc.max_steps} steps"),
            "algo": tc.algo, "max_steps": tc.max_steps,
            "rows": int(len(select_groups(cols, tc.explore_groups)["reward"])),
            "overrides": list(learner.overrides), "seconds": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}


def cem_job(run: WorldRun) -> dict[str, Any]:
    """The best fixed weights by CEM from the logging weights, on the world seed + 500."""
    from mtf.loop.blackbox import cem_fixed_action

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = run.config()
    world = run.world()
    search = replace(cfg.pipeline.search, cem_generations=run.sizes.cem_generations,
                     cem_population=run.sizes.cem_population,
                     sessions_per_eval=run.sizes.cem_sessions)
    res = cem_fixed_action(world, search, seed=cfg.seed + CEM_SEED_OFFSET,
                           init=world.baseline_action)
    return {"action": [float(x) for x in res.best.action], "history": res.history,
            "sessions": res.n_sessions, "seed": cfg.seed + CEM_SEED_OFFSET,
            "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def ope_test_world(run: WorldRun) -> tuple["World", list[int]]:
    """The world with room for ``ope_users`` fresh users after the training population, for
    ``ope_days``, and the shards that hold only them."""
    from mtf.sim.world import World

    cfg = run.config()
    ups = cfg.sim.users_per_shard
    first = -(-cfg.sim.n_users // ups)                      # shards of the training users
    fresh = run.sizes.ope_users or cfg.sim.n_users
    sim = replace(cfg.sim, n_users=first * ups + fresh, n_days=run.sizes.ope_days)
    world = World.from_config(replace(cfg, sim=sim))
    return world, list(range(first, world.sim.n_shards))


def ope_job(run: WorldRun, policies: Mapping[str, "TargetPolicy"]) -> dict[str, Any]:
    """The configured OPE on fresh users' logs of the logging policy: per policy its gate
    decision and estimates, and the policy the gate selects among ``policies`` (the logging
    policy when none gets GO)."""
    from mtf.loop.ope_validation import simulated_transitions, to_arrays
    from mtf.ope.config import LOGGING_POLICY
    from mtf.ope.evaluate import evaluate_arrays, rays_of
    from mtf.ope.policies import fixed_policy
    from mtf.ope.rules import pessimistic_value, select_policy

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = run.config()
    world, shards = ope_test_world(run)
    data = to_arrays(simulated_transitions(world, test_share=1.0, shards=shards), "test")
    targets = [fixed_policy(LOGGING_POLICY, world.baseline_action), *policies.values()]
    res = evaluate_arrays(data, targets, cfg.ope, gamma=cfg.mdp.gamma, seed=cfg.seed,
                          rays=rays_of(cfg.fusion))
    by_name = {r.policy: r for r in res.results}
    decisions = {d.policy: {"go": bool(d.go), "reason": d.reason, "estimator": d.estimator,
                            "pessimistic": float(pessimistic_value(by_name[d.policy],
                                                                   d.estimator))}
                 for d in res.decisions}
    chosen = select_policy(res.results, res.decisions, list(policies)) or LOGGING
    return {"chosen": chosen, "gate": cfg.ope.gate, "decisions": decisions,
            "rows": len(data), "sessions": int(data.session_starts().size),
            "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def ope_selection(ope: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]],
                  candidates: Sequence[str]) -> dict[str, Any]:
    """The gate's choice against the truth: its true return % vs logging, the truth-best of
    ``candidates`` and the logging policy, and the regret (best - chosen, % of logging)."""
    pool = [c for c in (LOGGING, *candidates) if c in rows]
    best = max(pool, key=lambda c: rows[c]["return_pct"])
    chosen = ope["chosen"]
    return {"chosen": chosen, "chosen_return_pct": rows[chosen]["return_pct"],
            "best": best, "best_return_pct": rows[best]["return_pct"],
            "regret_pct": rows[best]["return_pct"] - rows[chosen]["return_pct"],
            "candidates": pool}


def truth_job(run: WorldRun, name: str, policy: "TargetPolicy | Sequence[float] | None"
              ) -> dict[str, Any]:
    """One policy's truth on the world's truth sessions: a :class:`TargetPolicy`, a fixed
    action, or None for the logging policy. Common random numbers make it pair with the
    others' (each evaluates the same users, warm-ups and per-step random numbers)."""
    from mtf.sim.evaluate import evaluate_many
    from mtf.sim.policies import FixedPolicy

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = run.config()
    world = run.world()
    if policy is None:
        fn: Any = FixedPolicy(world.baseline_action)
    elif isinstance(policy, (list, tuple, np.ndarray)):
        fn = FixedPolicy(np.asarray(policy, dtype=np.float64))
    else:
        fn = policy.numpy_policy()
    res = evaluate_many(world, {name: fn}, n_sessions=run.sizes.truth_sessions,
                        seed=cfg.pipeline.truth_seed)[name]
    # the first states are not needed here and would be most of what travels back
    res = replace(res, first_states=res.first_states[:0])
    return {"result": res, "seconds": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0}


# ---- figures --------------------------------------------------------------------------------

def _pct(value: float, ref: float) -> float:
    return 100.0 * value / abs(ref) if ref else float("nan")


def world_rows(results: Mapping[str, "EvalResult"]) -> dict[str, dict[str, Any]]:
    """Per policy: true return and dwell, % vs logging with paired 95% CIs, interaction rate,
    session length, paired difference to the CEM weights (when there are some), and the
    goals it meets (:func:`goals`). ``results`` must hold :data:`LOGGING`."""
    from mtf.sim.evaluate import paired_difference

    base = results[LOGGING]
    cem = results.get(CEM)
    rows: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        d = paired_difference(r, base)
        row: dict[str, Any] = {
            "return": r.mean_return, "return_ci": list(r.ci),
            "return_pct": _pct(d.diff_return, base.mean_return),
            "return_pct_ci": [_pct(x, base.mean_return) for x in d.diff_ci],
            "dwell_s": r.mean_dwell_s,
            "dwell_pct": _pct(d.diff_dwell_s, base.mean_dwell_s),
            "dwell_pct_ci": [_pct(x, base.mean_dwell_s) for x in d.diff_dwell_ci],
            "interaction_rate": r.interaction_rate, "session_length": r.mean_session_length}
        if cem is not None and name != CEM:
            c = paired_difference(r, cem)
            row.update({"vs_cem": c.diff_return, "vs_cem_ci": list(c.diff_ci),
                        "vs_cem_pct": _pct(c.diff_return, cem.mean_return),
                        "vs_cem_pct_ci": [_pct(x, cem.mean_return) for x in c.diff_ci]})
        row["goals"] = goals(row)
        rows[name] = row
    return rows


def goals(row: Mapping[str, Any]) -> dict[str, bool | None]:
    """Return >= +5% vs logging with the paired CI above 0; dwell >= +2% with its CI above 0;
    above the CEM weights with the paired CI above 0 (None without CEM)."""
    return {"return": bool(row["return_pct"] >= RETURN_GOAL_PCT and row["return_pct_ci"][0] > 0),
            "dwell": bool(row["dwell_pct"] >= DWELL_GOAL_PCT and row["dwell_pct_ci"][0] > 0),
            "above_cem": bool(row["vs_cem_ci"][0] > 0) if "vs_cem_ci" in row else None}


def pooled(worlds: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy over the worlds that report it: mean % vs logging of return and dwell, and
    on how many worlds each goal holds."""
    names = list(dict.fromkeys(n for w in worlds for n in w["rows"]))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [w["rows"][name] for w in worlds if name in w["rows"]]
        out[name] = {
            "worlds": len(rows),
            "return_pct_mean": float(np.mean([r["return_pct"] for r in rows])),
            "dwell_pct_mean": float(np.mean([r["dwell_pct"] for r in rows])),
            **{f"{g}_goal_worlds": sum(bool(r["goals"][g]) for r in rows)
               for g in ("return", "dwell")},
            "above_cem_worlds": sum(bool(r["goals"]["above_cem"]) for r in rows),
        }
    return out


def choose(worlds: Sequence[Mapping[str, Any]],
           learners: Sequence[LearnerSpec]) -> dict[str, Any]:
    """The learner with the best mean % vs logging (return) over ``worlds`` (tuning worlds;
    the caller checks). Only learners with a result on every world compete; the first listed
    wins a tie. Returns its name, overrides, mean and per-world figures."""
    complete = [s for s in learners if all(s.name in w["rows"] for w in worlds)]
    if not worlds or not complete:
        raise UserError("nothing to choose from: no learner has a result on every world")
    means = {s.name: float(np.mean([w["rows"][s.name]["return_pct"] for w in worlds]))
             for s in complete}
    best = max(complete, key=lambda s: means[s.name])      # max keeps the first of equals
    return {"name": best.name, "overrides": list(best.overrides),
            "mean_return_pct": means[best.name], "means": means,
            "worlds": [w["world"] for w in worlds],
            "per_world_return_pct": {w["world"]: w["rows"][best.name]["return_pct"]
                                     for w in worlds}}


def parse_families(texts: Sequence[str],
                   learners: Sequence[LearnerSpec]) -> dict[str, list[LearnerSpec]]:
    """``"NAME: l1,l2"`` -> {NAME: those learners}; none given -> one family ``all`` of every
    learner. Unknown or repeated names are a UserError."""
    by_name = {s.name: s for s in learners}
    if not texts:
        return {"all": list(learners)}
    out: dict[str, list[LearnerSpec]] = {}
    for text in texts:
        name, sep, rest = text.partition(":")
        members = [m.strip() for m in rest.split(",") if m.strip()]
        if not sep or not name.strip() or not members:
            raise UserError(f"--family {text!r}: expected 'NAME: learner1,learner2'")
        unknown = [m for m in members if m not in by_name]
        if unknown or name.strip() in out:
            raise UserError(f"--family {text!r}: unknown learners {unknown} (known: "
                            f"{list(by_name)}) or a repeated family name")
        out[name.strip()] = [by_name[m] for m in members]
    return out


def chosen_learners(record: Mapping[str, Any], protocol: ProtocolConfig) -> list[LearnerSpec]:
    """The variants a ``--choose`` run chose (its result JSON: ``details.choices``, one per
    family, or the single ``details.chosen``), to run on held-out worlds: no extra learner for
    a choice of ``default`` or ``bcq`` (always trained). Every choice must come from tuning
    worlds of this protocol."""
    details = record.get("details") or {}
    choices = list((details.get("choices") or {}).values()) or (
        [details["chosen"]] if details.get("chosen") else [])
    if not choices:
        raise UserError("--learners-from: the result JSON has no details.chosen; give the JSON "
                        "of a tuning run with --choose")
    out: list[LearnerSpec] = []
    for chosen in choices:
        not_tuning = [w for w in chosen["worlds"] if protocol.role(w) != TUNING]
        if not_tuning:
            raise UserError(f"--learners-from: the choice was made on {not_tuning}, which are "
                            "not tuning worlds of this config's protocol; choose on tuning "
                            "worlds")
        if chosen["name"] not in {s.name for s in BUILTIN_LEARNERS} | {s.name for s in out}:
            out.append(LearnerSpec(chosen["name"], tuple(chosen["overrides"])))
    return out


# ---- the job graph --------------------------------------------------------------------------

@dataclass
class _WorldState:
    run: WorldRun
    own_key: str = ""                                         # the world's own logs' data key
    learner_keys: dict[str, str] = field(default_factory=dict)  # learner -> its logs' data key
    data: dict[str, str] = field(default_factory=dict)        # data key -> cached columns
    simulation: dict[str, Any] = field(default_factory=dict)  # the world's own logs
    simulations: dict[str, dict[str, Any]] = field(default_factory=dict)  # other keys' logs
    learners: dict[str, dict[str, Any]] = field(default_factory=dict)
    cem: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)       # name -> EvalResult
    truth_s: dict[str, dict[str, float]] = field(default_factory=dict)  # seconds, cpu_s
    ope: dict[str, Any] = field(default_factory=dict)         # ope_job's output
    failed: dict[str, str] = field(default_factory=dict)      # job -> error


def _took(out: Mapping[str, Any]) -> str:
    return f"{out['seconds']:.0f} s ({out['cpu_s']:.0f} CPU s)"


# Which ready job runs first when workers are short: a world's data unlock its learners, the
# learners are the longest jobs, CEM next, truths fill the gaps.
_PRIORITY = {"simulate": 0, "train": 1, "ope": 2, "cem": 2, "truth": 3}


def run_jobs(runs: Sequence[WorldRun], learners: Sequence[LearnerSpec], *, parallel: int,
             workdir: str, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run every world's jobs in ``parallel`` spawned processes (one torch thread each);
    one record per world (:func:`world_record`). A failed job is logged and recorded in the
    world's ``failed``; the others go on (a failed simulation skips the world's learners)."""
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    states = {r.spec.name: _WorldState(r) for r in runs}
    ready: list[tuple[int, int, str, str, tuple[Any, ...]]] = []   # (prio, n, kind, world, args)
    count = [0]

    def push(kind: str, world: str, fn: Callable[..., Any], *args: Any, label: str = "") -> None:
        count[0] += 1
        ready.append((_PRIORITY[kind], count[0], kind, world, (fn, label, *args)))

    def push_learners(st: _WorldState, key: str) -> None:
        for spec in learners:
            if st.learner_keys[spec.name] == key:
                run_dir = os.path.join(workdir, "runs", st.run.spec.name, spec.name)
                push("train", st.run.spec.name, train_job, st.run, spec, st.data[key], run_dir,
                     label=spec.name)

    def maybe_select(st: _WorldState) -> None:
        """Once every learner of the world has trained (or failed): the OPE selection."""
        if not st.run.sizes.ope_select:
            return
        if all(s.name in st.learners or f"train {s.name}" in st.failed for s in learners):
            trained = {s.name: st.learners[s.name]["policy"] for s in learners
                       if s.name in st.learners}
            push("ope", st.run.spec.name, ope_job, st.run, trained, label="selection")

    def simulated(st: _WorldState, key: str, out: dict[str, Any]) -> None:
        if key == st.own_key:
            st.simulation = out
        else:
            st.simulations[key] = out

    for st in states.values():
        run = st.run
        # one simulation per distinct data key (a learner with its own action parametrisation
        # explores differently), the world's own first
        st.own_key = run.data_key()
        st.learner_keys = {spec.name: run.data_key(spec) for spec in learners}
        by_key: dict[str, LearnerSpec | None] = {st.own_key: None}
        for spec in learners:
            by_key.setdefault(st.learner_keys[spec.name], spec)
        for key, spec in by_key.items():
            st.data[key] = os.path.join(workdir, "data", f"{run.spec.name}-{key}.npz")
            if os.path.exists(st.data[key]):
                with np.load(st.data[key]) as z:
                    simulated(st, key, {"rows": int(z["reward"].shape[0]), "cached": True})
                log(f"{run.spec.name}: simulated transitions from the cache {st.data[key]}")
                push_learners(st, key)
            else:
                push("simulate", run.spec.name, simulate_job, run, st.data[key], spec,
                     label=key)
        push("cem", run.spec.name, cem_job, run)
        push("truth", run.spec.name, truth_job, run, LOGGING, None, label=LOGGING)

    ctx = mp.get_context("spawn")        # torch threads and CUDA do not survive fork
    running: dict[Future[Any], tuple[str, str, str]] = {}
    with ProcessPoolExecutor(max_workers=parallel, mp_context=ctx,
                             initializer=_init_worker) as pool:
        while ready or running:
            ready.sort(key=lambda j: j[:2])
            while ready and len(running) < parallel:
                _, _, kind, world, (fn, label, *args) = ready.pop(0)
                running[pool.submit(fn, *args)] = (kind, world, label)
                log(f"{world}: {' '.join(x for x in (kind, label) if x)} started")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                kind, world, label = running.pop(fut)
                st = states[world]
                job = f"{kind} {label}".strip()
                exc = fut.exception()
                if exc is not None:
                    st.failed[job] = f"{type(exc).__name__}: {exc}"
                    log(f"{world}: {job} FAILED: {st.failed[job]}")
                    if kind == "train":
                        maybe_select(st)
                    continue
                out = fut.result()
                if kind == "simulate":
                    simulated(st, label, out)
                    log(f"{world}: simulated {out['rows']} transitions of {out['sessions']} "
                        f"sessions ({label}) in {_took(out)}")
                    push_learners(st, label)
                elif kind == "train":
                    st.learners[label] = out
                    log(f"{world}: trained {label} ({out['algo']}, {out['max_steps']} steps, "
                        f"{out['rows']} rows) in {_took(out)}")
                    push("truth", world, truth_job, st.run, label, out["policy"], label=label)
                    maybe_select(st)
                elif kind == "ope":
                    st.ope = out
                    log(f"{world}: OPE ({out['gate']}, {out['sessions']} sessions of fresh "
                        f"users) chose {out['chosen']} in {_took(out)}")
                elif kind == "cem":
                    st.cem = out
                    log(f"{world}: CEM ({len(out['history'])} generations, {out['sessions']} "
                        f"sessions) in {_took(out)}: "
                        f"{[round(a, 2) for a in out['action']]}")
                    push("truth", world, truth_job, st.run, CEM, out["action"], label=CEM)
                else:
                    st.truth[label] = out["result"]
                    st.truth_s[label] = {k: out[k] for k in ("seconds", "cpu_s")}
                    log(f"{world}: truth of {label} ({st.run.sizes.truth_sessions} sessions) "
                        f"in {_took(out)}: {out['result'].mean_return:.4f}")
    return [world_record(st, [s.name for s in learners]) for st in states.values()]


def world_record(st: _WorldState, learner_names: Sequence[str]) -> dict[str, Any]:
    """A world's JSON-ready record: its rows (:func:`world_rows`) in the order logging, CEM,
    learners; what each job took."""
    run, cfg = st.run, st.run.config()
    order = [n for n in (LOGGING, CEM, *learner_names) if n in st.truth]
    rows = world_rows({n: st.truth[n] for n in order}) if LOGGING in st.truth else {}
    return {"world": run.spec.name, "role": run.role, "seed": cfg.seed,
            "truth_seed": cfg.pipeline.truth_seed, "overrides": list(run.spec.overrides),
            "description": run.spec.description, "users": cfg.sim.n_users,
            "days": cfg.sim.n_days, "truth_sessions": run.sizes.truth_sessions,
            "simulation": st.simulation, "other_simulations": st.simulations,
            "learners": {n: {k: v for k, v in r.items() if k != "policy"}
                         for n, r in st.learners.items()},
            "cem": st.cem, "truth_s": st.truth_s, "rows": rows, "failed": st.failed,
            **({"ope": {**st.ope, **ope_selection(st.ope, rows, [
                n for n in learner_names if n in st.learners])}}
               if st.ope and rows and st.ope["chosen"] in rows else {})}


# ---- output ---------------------------------------------------------------------------------

def _ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def format_world(rec: Mapping[str, Any]) -> str:
    head = (f"[{rec['world']}] ({rec['role']}) seed {rec['seed']}, truth seed "
            f"{rec['truth_seed']}, {rec['users']} users x {rec['days']} days, "
            f"{rec['truth_sessions']} truth sessions")
    lines = [head, f"  {'policy':<16}{'return':>9}  {'vs logging % [95% CI]':<26}"
                   f"{'dwell s':>8}  {'vs logging % [95% CI]':<26}{'inter.':>7}{'length':>7}"
                   f"  vs CEM % [95% CI]"]
    for name, r in rec["rows"].items():
        cem = (f"{r['vs_cem_pct']:+6.2f} {_ci(r['vs_cem_pct_ci'])}" if "vs_cem_pct" in r
               else "")
        flags = "".join(f for f, g in (("R", "return"), ("D", "dwell"), ("C", "above_cem"))
                        if r["goals"][g])
        lines.append(f"  {name:<16}{r['return']:9.4f}  "
                     f"{r['return_pct']:+6.2f} {_ci(r['return_pct_ci']):<19}"
                     f"{r['dwell_s']:8.1f}  {r['dwell_pct']:+6.2f} {_ci(r['dwell_pct_ci']):<19}"
                     f"{r['interaction_rate']:7.3f}{r['session_length']:7.2f}  {cem}"
                     f"{'  goals ' + flags if flags else ''}")
    if rec.get("ope"):
        o = rec["ope"]
        lines.append(f"  OPE gate ({o['gate']}, fresh users' logs) chose {o['chosen']} "
                     f"({o['chosen_return_pct']:+.2f}% true); truth-best {o['best']} "
                     f"({o['best_return_pct']:+.2f}%): regret {o['regret_pct']:.2f}% of logging")
    for job, err in rec["failed"].items():
        lines.append(f"  FAILED {job}: {err}")
    return "\n".join(lines)


def format_pooled(rows: Mapping[str, Mapping[str, Any]], n_worlds: int) -> str:
    lines = [f"  {'policy':<16}{'worlds':>7}{'return %':>10}{'dwell %':>9}"
             f"   goals held on: return>=+{RETURN_GOAL_PCT:g}%  dwell>=+{DWELL_GOAL_PCT:g}%  "
             "above CEM (CI > 0)"]
    for name, r in rows.items():
        lines.append(f"  {name:<16}{r['worlds']:>7}{r['return_pct_mean']:+10.2f}"
                     f"{r['dwell_pct_mean']:+9.2f}   {r['return_goal_worlds']:>9}/{n_worlds}"
                     f"{r['dwell_goal_worlds']:>12}/{n_worlds}"
                     f"{r['above_cem_worlds']:>12}/{n_worlds}")
    return "\n".join(lines)


def figures_of(pool: Mapping[str, Mapping[str, Any]],
               worlds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The finite numbers of a run: pooled means and goal counts per policy, and per world
    each policy's % vs logging (the logging policy's own 0s left out)."""
    out: dict[str, float] = {}
    for name, r in pool.items():
        if name == LOGGING:
            continue
        out.update({f"{name}.{k}": float(r[k]) for k in (
            "return_pct_mean", "dwell_pct_mean", "return_goal_worlds", "dwell_goal_worlds")})
        if name != CEM:
            out[f"{name}.above_cem_worlds"] = float(r["above_cem_worlds"])
    for w in worlds:
        for name, r in w["rows"].items():
            if name != LOGGING:
                out[f"{w['world']}.{name}.return_pct"] = float(r["return_pct"])
                out[f"{w['world']}.{name}.dwell_pct"] = float(r["dwell_pct"])
        if w.get("ope"):
            out[f"{w['world']}.ope_select.regret_pct"] = float(w["ope"]["regret_pct"])
            out[f"{w['world']}.ope_select.return_pct"] = float(w["ope"]["chosen_return_pct"])
    selected = [w["ope"] for w in worlds if w.get("ope")]
    if selected:
        out["ope_select.regret_pct_mean"] = float(np.mean([o["regret_pct"] for o in selected]))
        out["ope_select.regret_pct_max"] = float(np.max([o["regret_pct"] for o in selected]))
        out["ope_select.return_pct_mean"] = float(np.mean([o["chosen_return_pct"]
                                                           for o in selected]))
    return out
