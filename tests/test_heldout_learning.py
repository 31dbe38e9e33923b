"""benchmarks/heldout_learning.py and its library (mtf/loop/learning_benchmark.py), cheaply:
the paired dwell difference, the protocol (``--choose`` only on tuning worlds, the winner,
``--learners-from``), the per-policy truth jobs pairing exactly, and the whole job chain in a
process where Spark, Delta, petastorm and MLflow cannot be imported. The smoke run through
the script is tests/test_benchmarks.py::test_bench_heldout_smoke.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from statistics import NormalDist
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from mtf.config import load_config
from mtf.errors import UserError
from mtf.loop import learning_benchmark as lb
from mtf.loop.learning_benchmark import LearnerSpec
from mtf.sim.evaluate import EvalResult, evaluate_many, paired_difference
from mtf.sim.policies import FixedPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Z = NormalDist().inv_cdf(0.975)


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """benchmarks/heldout_learning.py as a module (its ``result`` import needs benchmarks/)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "heldout_learning", os.path.join(ROOT, "benchmarks", "heldout_learning.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))


def _result(returns: list[float], dwells: list[float]) -> EvalResult:
    r, d = np.array(returns), np.array(dwells)
    return EvalResult(n_sessions=len(r), mean_return=float(r.mean()), ci=(0.0, 0.0), std_err=0.0,
                      mean_first_reward=0.0, first_reward_ci=(0.0, 0.0),
                      mean_total_reward=float(r.sum()), mean_dwell_s=float(d.mean()),
                      interaction_rate=0.1, mean_session_length=3.0, ci_level=0.95,
                      returns=r, first_rewards=np.zeros(len(r)),
                      first_states=np.zeros((len(r), 2)), dwells=d)


def test_paired_dwell_difference_and_world_rows() -> None:
    a = _result([2.0, 4.0, 6.0, 8.0], [10.0, 20.0, 30.0, 40.0])
    b = _result([1.0, 4.0, 5.0, 6.0], [8.0, 21.0, 25.0, 40.0])
    d = paired_difference(a, b)
    # per-session dwell differences 2, -1, 5, 0: mean 1.5, sample variance 7
    half = Z * np.sqrt(7.0) / 2.0
    assert d.diff_dwell_s == 1.5
    assert d.diff_dwell_ci == pytest.approx((1.5 - half, 1.5 + half), abs=1e-12)
    # the return's pairing is untouched: differences 1, 0, 1, 2 (mean 1, variance 2/3)
    assert d.diff_return == 1.0
    rhalf = Z * np.sqrt(2.0 / 3.0) / 2.0
    assert d.diff_ci == pytest.approx((1.0 - rhalf, 1.0 + rhalf), abs=1e-12)

    rows = lb.world_rows({lb.LOGGING: b, "x": a})
    x = rows["x"]
    assert x["dwell_pct"] == pytest.approx(100.0 * 1.5 / 23.5, abs=1e-12)
    assert x["dwell_pct_ci"] == pytest.approx([100.0 * (1.5 - half) / 23.5,
                                               100.0 * (1.5 + half) / 23.5], abs=1e-12)
    assert x["return_pct"] == pytest.approx(25.0, abs=1e-12)       # +1 on a mean of 4
    # +25% with CI [+25 - 100 * rhalf / 4, ...]: the lower end 25 - 20.0 > 0 holds the goal;
    # dwell +6.4% but its CI reaches below 0: no dwell goal; no CEM in the run: no CEM goal
    assert x["goals"] == {"return": True, "dwell": False, "above_cem": None}
    assert "vs_cem" not in x
    assert rows[lb.LOGGING]["return_pct"] == 0.0 and rows[lb.LOGGING]["dwell_pct_ci"] == [0, 0]

    rows = lb.world_rows({lb.LOGGING: b, lb.CEM: b, "x": a})
    assert rows["x"]["vs_cem"] == 1.0 and rows["x"]["goals"]["above_cem"] is True
    assert "vs_cem" not in rows[lb.CEM]


def _args(script: ModuleType, *argv: str) -> Any:
    return script.parse_args(list(argv))


def test_choose_refuses_a_heldout_world(script: ModuleType) -> None:
    with pytest.raises(UserError, match="held-out world held-41: seed=41"):
        script.plan(_args(script, "--role", "tuning", "--worlds", "tune-7,held-41", "--choose"))
    # the default role is heldout: choosing there stops at its first world
    with pytest.raises(UserError, match="may not use held-out world held-41"):
        script.plan(_args(script, "--choose"))
    # a held-out seed through --set is caught as well
    with pytest.raises(UserError, match="held-out world held-42-mix: pipeline.truth_seed=7042"):
        script.plan(_args(script, "--role", "tuning", "--choose",
                          "--set", "pipeline.truth_seed=7042"))
    runs, learners = script.plan(_args(script, "--role", "tuning", "--choose", "--learner",
                                       "wide: train.common.hidden=[32,32]"))
    assert [r.spec.name for r in runs] == ["tune-7", "tune-8", "tune-9-bait"]
    assert [r.role for r in runs] == ["tuning"] * 3
    assert [(s.name, s.overrides) for s in learners] == [
        ("default", ()), ("bcq", ("train.algo=bcq",)),
        ("wide", ("train.common.hidden=[32,32]",))]
    assert runs[2].config(learners[2]).train.common.hidden == (32, 32)
    assert runs[2].config().sim.response.click_bait == 2.3          # the world's structure
    # a held-out report run needs no tuning world; --learners trains a subset
    runs, learners = script.plan(_args(script, "--learners", "default"))
    assert [r.spec.name for r in runs] == ["held-41", "held-42-mix", "held-43-bait"]
    assert learners == [LearnerSpec("default")]
    with pytest.raises(UserError, match=r"--learners \['wide'\] are not among"):
        script.plan(_args(script, "--learners", "default,wide"))


def test_parse_learner() -> None:
    assert lb.parse_learner("bcq_wide: train.algo=bcq 'train.common.hidden=[256, 256]'") == \
        LearnerSpec("bcq_wide", ("train.algo=bcq", "train.common.hidden=[256, 256]"))
    assert lb.parse_learner("ray: fusion.action_space=ray") == \
        LearnerSpec("ray", ("fusion.action_space=ray",))
    with pytest.raises(UserError, match=r"overrides must be train.KEY=VALUE \(or "
                                        r"fusion.action_space\), got .'seed=41'"):
        lb.parse_learner("x: train.algo=bcq seed=41")
    with pytest.raises(UserError, match=r"got .'fusion.tasks=\[\]'"):
        lb.parse_learner("x: fusion.tasks=[]")
    with pytest.raises(UserError, match="expected 'name: train.key=value"):
        lb.parse_learner("train.algo=bcq")
    with pytest.raises(UserError, match="reference policy"):
        lb.parse_learner("cem: train.algo=bcq")
    with pytest.raises(UserError, match=r"repeated: \['bcq'\]"):
        lb.learner_set([LearnerSpec("bcq", ("train.algo=bcq",))])


def _world(name: str, **pct: float) -> dict[str, Any]:
    return {"world": name, "rows": {k: {"return_pct": v} for k, v in pct.items()}}


SPECS = [LearnerSpec("default"), LearnerSpec("bcq", ("train.algo=bcq",)),
         LearnerSpec("v", ("train.algo=bcq", "train.bcq.lam=0.75")),
         LearnerSpec("partial", ("train.algo=bcq",))]


def test_choose_is_the_argmax_of_the_mean_over_the_worlds() -> None:
    worlds = [_world("tune-7", logging=0.0, cem=9.0, default=1.0, bcq=3.0, v=2.5, partial=9.0),
              _world("tune-8", logging=0.0, cem=9.0, default=2.0, bcq=-1.0, v=2.0)]
    chosen = lb.choose(worlds, SPECS)
    # means: default 1.5, bcq 1.0, v 2.25; partial has no tune-8 result; cem is no learner
    assert chosen == {"name": "v", "overrides": ["train.algo=bcq", "train.bcq.lam=0.75"],
                      "mean_return_pct": 2.25,
                      "means": {"default": 1.5, "bcq": 1.0, "v": 2.25},
                      "worlds": ["tune-7", "tune-8"],
                      "per_world_return_pct": {"tune-7": 2.5, "tune-8": 2.0}}
    # a tie goes to the first listed learner
    tie = [_world("tune-7", default=2.0, bcq=2.0, v=1.0)]
    assert lb.choose(tie, SPECS[:3])["name"] == "default"
    with pytest.raises(UserError, match="nothing to choose from"):
        lb.choose([_world("tune-7", logging=0.0)], SPECS)


def test_learners_from_reproduces_the_choice(script: ModuleType, tmp_path: Any) -> None:
    worlds = [_world("tune-7", default=1.0, bcq=0.5, v=2.0),
              _world("tune-9-bait", default=1.0, bcq=0.5, v=2.0)]
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps({"details": {"chosen": lb.choose(worlds, SPECS[:3])}}))
    runs, learners = script.plan(_args(script, "--learners-from", str(path)))
    assert [r.role for r in runs] == ["heldout"] * 3
    assert learners == [*lb.BUILTIN_LEARNERS, SPECS[2]]
    assert runs[0].config(learners[2]).train.bcq.lam == 0.75
    assert runs[0].config(learners[2]).train.algo == "bcq"
    # --learners-from takes the choice as it is: no extra variants, no new choice
    with pytest.raises(UserError, match="drop --learner and --choose"):
        script.plan(_args(script, "--learners-from", str(path), "--learner", "x: train.tau=1"))
    protocol = load_config(None).protocol
    # a built-in winner adds nothing (default and bcq always run)
    assert lb.chosen_learners({"details": {"chosen": lb.choose(worlds[:1], SPECS[:2])}},
                              protocol) == []
    # a choice made on a held-out world is refused; a JSON without a choice too
    bad = lb.choose([_world("held-41", default=1.0, v=2.0)], [SPECS[0], SPECS[2]])
    with pytest.raises(UserError, match=r"made on \['held-41'\], which are not tuning"):
        lb.chosen_learners({"details": {"chosen": bad}}, protocol)
    with pytest.raises(UserError, match="has no details.chosen"):
        lb.chosen_learners({"details": {}}, protocol)


def test_truth_jobs_pair_exactly_with_a_joint_evaluation() -> None:
    """Each policy's truth runs in its own job: common random numbers make it the same
    per-session numbers as evaluating the policies together."""
    protocol = load_config(None).protocol
    (run,) = lb.world_runs(protocol, ["tune-9-bait"], "tuning", None, (),
                           lb.Sizes(users=50, truth_sessions=40))
    action = [0.3, -0.2, 0.1, 0.5, -0.4, 0.2]
    alone = {lb.LOGGING: lb.truth_job(run, lb.LOGGING, None)["result"],
             lb.CEM: lb.truth_job(run, lb.CEM, action)["result"]}
    world = run.world()
    joint = evaluate_many(world, {lb.LOGGING: FixedPolicy(world.baseline_action),
                                  lb.CEM: FixedPolicy(np.array(action))},
                          n_sessions=40, seed=1234)
    for name in (lb.LOGGING, lb.CEM):
        for field in ("returns", "dwells", "first_rewards"):
            np.testing.assert_array_equal(getattr(alone[name], field),
                                          getattr(joint[name], field))
    assert alone[lb.CEM].mean_return != alone[lb.LOGGING].mean_return


NO_SPARK = ("pyspark", "py4j", "delta", "deltalake", "petastorm", "mlflow")
JOB_CHAIN = """
import sys
for m in {blocked!r}:
    sys.modules[m] = None
from mtf.config import load_config
from mtf.loop import learning_benchmark as lb

protocol = load_config(None).protocol
cheap_ope = ["ope.n_iterations=20", "ope.target_update_every=10", "ope.n_bootstrap=20",
             "ope.ensemble.members=2", "ope.ensemble.backups=2", "ope.ensemble.steps_per_backup=3"]
(run,) = lb.world_runs(protocol, ["tune-8"], "tuning", None, ["train.batch_size=32", *cheap_ope],
                       lb.Sizes(users=40, days=1, train_steps=3, truth_sessions=20,
                                cem_generations=1, cem_population=2, cem_sessions=4,
                                ope_select=True, ope_users=40))
sim = lb.simulate_job(run, {data!r})
learner = lb.train_job(run, lb.BUILTIN_LEARNERS[1], {data!r}, {runs!r})
cem = lb.cem_job(run)
truth = {{n: lb.truth_job(run, n, p)["result"] for n, p in (
    (lb.LOGGING, None), (lb.CEM, cem["action"]), ("bcq", learner["policy"]))}}
rows = lb.world_rows(truth)
ope = lb.ope_job(run, {{"bcq": learner["policy"]}})
assert ope["chosen"] in ("logging", "bcq") and set(ope["decisions"]) == {{"bcq"}}, ope
print(sim["rows"], learner["algo"], sorted(rows))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m])
print("loaded:", loaded)
"""


def test_the_jobs_run_without_spark_delta_petastorm_or_mlflow(tmp_path: Any) -> None:
    """Every job in a process where importing any of them fails."""
    code = JOB_CHAIN.format(blocked=NO_SPARK, data=str(tmp_path / "data.npz"),
                            runs=str(tmp_path / "runs"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_rows, algo, names = proc.stdout.splitlines()[0].split(" ", 2)
    assert int(n_rows) > 32 and algo == "bcq" and names == "['bcq', 'cem', 'logging']"
    assert proc.stdout.splitlines()[1] == "loaded: []"


def test_one_choice_per_family_and_learners_from_runs_each(script: ModuleType,
                                                           tmp_path: Any) -> None:
    worlds = [_world("tune-7", default=1.0, bcq=0.5, v=2.0, full=1.5),
              _world("tune-8", default=1.0, bcq=0.9, v=0.5, full=1.4)]
    full = LearnerSpec("full", ("train.iql.curvature=full",))
    families = lb.parse_families(["bcq: bcq,v", "iql: default,full"], [*SPECS[:3], full])
    assert {f: [s.name for s in m] for f, m in families.items()} == {
        "bcq": ["bcq", "v"], "iql": ["default", "full"]}
    choices = {f: lb.choose(worlds, m) for f, m in families.items()}
    assert (choices["bcq"]["name"], choices["bcq"]["mean_return_pct"]) == ("v", 1.25)
    assert (choices["iql"]["name"], choices["iql"]["mean_return_pct"]) == ("full", 1.45)
    protocol = load_config(None).protocol
    assert lb.chosen_learners({"details": {"choices": choices}}, protocol) == [SPECS[2], full]
    assert lb.parse_families([], SPECS[:2]) == {"all": SPECS[:2]}
    for bad in ("bcq bcq,v", "bcq: nope", "x:"):
        with pytest.raises(UserError, match="--family"):
            lb.parse_families([bad], SPECS[:3])
    with pytest.raises(UserError, match="--family only applies with --choose"):
        script.plan(_args(script, "--family", "a: default"))


def test_ope_test_world_holds_only_fresh_users() -> None:
    """The OPE's logs come from users after the training population's shards."""
    protocol = load_config(None).protocol
    (run,) = lb.world_runs(protocol, ["tune-8"], "tuning", None, [],
                           lb.Sizes(users=2500, days=3, ope_select=True, ope_users=1200))
    world, shards = lb.ope_test_world(run)
    ups = world.sim.users_per_shard
    assert (world.sim.n_users, world.sim.n_days) == (3 * ups + 1200, 1)
    assert shards == list(range(3, world.sim.n_shards)) and world.seed == 8
    # the training world's users end before the first OPE shard starts
    assert 2500 <= shards[0] * ups


def test_ope_selection_against_the_truth() -> None:
    rows = {"logging": {"return_pct": 0.0}, "a": {"return_pct": 4.0},
            "b": {"return_pct": 6.5}, "cem": {"return_pct": 9.0}}
    got = lb.ope_selection({"chosen": "a"}, rows, ["a", "b"])
    assert (got["best"], got["chosen_return_pct"], got["regret_pct"]) == ("b", 4.0, 2.5)
    kept = lb.ope_selection({"chosen": "logging"}, {**rows, "b": {"return_pct": -1.0}},
                            ["a", "b"])
    assert (kept["best"], kept["regret_pct"]) == ("a", 4.0)   # CEM is not a candidate


FAKE_PY = """#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
out = args[args.index("--json") + 1]
with open(out, "w") as fh:
    fh.write("{{}}")
"""


def test_protocol_script_runs_its_learners_and_families(tmp_path: Any) -> None:
    """benchmarks/heldout_protocol.sh with a stand-in Python: the tuning run gets learners and
    families the benchmark accepts; the held-out run reads the choice and lets the OPE select."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "py"
    fake.write_text(FAKE_PY.format(log=str(log)))
    fake.chmod(0o755)
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "heldout_protocol.sh"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PY": str(fake), "WORK": str(tmp_path / "w")})
    assert proc.returncode == 0, proc.stderr
    tuning, heldout = (json.loads(line) for line in log.read_text().splitlines())
    assert tuning[:4] == ["benchmarks/heldout_learning.py", "--role", "tuning", "--choose"]
    specs = lb.learner_set([lb.parse_learner(tuning[i + 1])
                            for i, a in enumerate(tuning) if a == "--learner"])
    families = lb.parse_families([tuning[i + 1] for i, a in enumerate(tuning)
                                  if a == "--family"], specs)
    assert {f: [s.name for s in m] for f, m in families.items()} == {
        "bcq": ["bcq", "bcq_rho05", "bcq_lam075", "bcq_wide", "bcq_bounded",
                "bcq_bounded_lam075", "bcq_bounded_w03"],
        "default": ["default", "iql_full", "ray", "ray_full"]}
    assert heldout[:4] == ["benchmarks/heldout_learning.py", "--role", "heldout", "--ope-select"]
    assert heldout[heldout.index("--learners-from") + 1] == str(
        tmp_path / "out" / "heldout_learning_tuning.json")
