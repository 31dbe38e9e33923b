"""The closed loop end to end at a tiny scale: logs -> transitions -> train -> OPE -> deploy."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from mtf.config import load_config
from mtf.loop.closed_loop import render_tables, run_pipeline
from mtf.loop.config import PipelineConfig

pytestmark = pytest.mark.slow


def test_closed_loop_runs_day_by_day_and_writes_the_tables(spark, tmp_path) -> None:
    cfg = load_config(None, [
        f"lake.root={tmp_path}", "sim.n_users=300", "sim.users_per_shard=150",
        "pipeline.days=2", "pipeline.truth_sessions=200",
        "pipeline.compare=[cem, bcq, iql_quadratic]",
        "train.algo=iql",   # the loop's learner; BCQ below
        "pipeline.candidates=2",   # two seeds per retrain day: the gate chooses
        "pipeline.search={cem_generations: 1, cem_population: 3, sessions_per_eval: 50}",
        "train.max_steps=40", "train.log_every=20", "train.checkpoint_every=40",
        "train.common.hidden=[16, 16]", "train.bcq.vae_hidden=[16, 16]",
        "ope.n_iterations=30", "ope.n_initial_states=100", "ope.hidden=[16]",
        "ope.n_bootstrap=20", "etl.files_per_day=2",
        f"tracking.mlflow={'auto' if importlib.util.find_spec('mlflow') else 'false'}"])
    summary = run_pipeline(spark, cfg)
    days = summary["days"]
    assert [d["day"] for d in days] == ["2026-01-01", "2026-01-02"]
    assert all(d["impressions"] > 0 and d["transitions"] > 0 for d in days)
    # Day 0 serves the baseline and trains nothing; day 1 trains a candidate and evaluates it.
    assert days[0]["deployed"] == "baseline" and days[0]["candidate"] == ""
    assert days[0]["true_deployed"] == days[0]["true_baseline"]
    # Two candidates (seeds) were evaluated together; the loop deploys the gate's choice: the
    # GO candidate with the highest pessimistic value, else the first (and decides no-go).
    report = json.load(open(os.path.join(summary["report_dir"], "ope-2026-01-02",
                                         "report.json")))
    gate = {d["policy"]: d["go"] for d in report["decisions"]}
    names = ["iql-2026-01-02", "iql-2026-01-02-s1"]
    assert sorted(gate) == names and sorted(days[1]["candidates"]) == names
    rows = {r["policy"]: r for r in report["results"]}
    by = report["config"]["ope"]["gate"]

    def pessimistic(n: str) -> float:
        r = rows[n]
        return r["diagnostics"]["ensemble_lower"] if by == "fqe_ensemble" else \
            r["estimates"]["conservative_fqe"]["value"]

    go_names = [n for n in names if gate[n]]
    want = max(go_names, key=pessimistic) if go_names else names[0]
    assert days[1]["candidate"] == want
    # The loop's decision is the OPE gate's (go_requires_ope, the default), not a forced GO.
    assert days[1]["decision"] == ("go" if gate[want] else "no-go")
    true = {n: c["true"] for n, c in days[1]["candidates"].items()}
    assert days[1]["selection_regret"] == pytest.approx(max(true.values()) - true[want])
    assert days[1]["ope_candidate"] == days[1]["ope_candidate"]      # a number, not NaN
    labels = [r["policy"] for r in summary["comparison"]]
    assert labels == ["logging baseline", "best fixed weights (CEM)", "BatchRL-MTF (BCQ)",
                      "IQL, quadratic critic"]
    base = summary["comparison"][0]
    assert base["vs_baseline_pct"] == 0.0 and base["vs_baseline_ci"] == [0.0, 0.0]
    assert base["dwell_vs_baseline_pct"] == 0.0 and base["dwell_vs_baseline_ci"] == [0.0, 0.0]
    for row in summary["comparison"][1:]:      # paired: the CI holds the estimate
        lo, hi = row["dwell_vs_baseline_ci"]
        assert lo <= row["dwell_vs_baseline_pct"] <= hi
    # The configured learner's row is the last day's first candidate, not a second training:
    # the same policy on the same sessions has exactly the same true value.
    assert summary["comparison"][3]["true_return"] == days[1]["candidates"][names[0]]["true"]
    # The states carry each simulated user's real profile (the profile table is written).
    from mtf.delta import read_delta
    from mtf.sim.generate import shard_users
    from mtf.sim.world import World

    world = World.from_config(cfg)
    cols = list(cfg.features.profile_columns)
    truth = {}
    for shard in range(cfg.sim.n_shards):
        users = shard_users(world, shard)
        truth.update(zip(users.ids, users.profile_columns(cols)))
    rows = read_delta(spark, cfg.lake.path("transitions")).select("user_id", "state").collect()
    got = np.array([r.state[:len(cols)] for r in rows])
    want = np.array([truth[r.user_id] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[:, cols.index("activity")].std() > 0.1
    out = summary["report_dir"]
    assert json.load(open(os.path.join(out, "summary.json")))["days"][1]["day"] == "2026-01-02"
    assert os.path.isfile(os.path.join(out, "ope-2026-01-02", "report.html"))
    md = render_tables(summary)
    assert "| 2026-01-02 |" in md and "BatchRL-MTF (BCQ)" in md
    if cfg.tracking.mlflow:
        _check_tracked(str(tmp_path), summary)


def _check_tracked(root: str, summary: dict) -> None:
    """One MLflow run for the loop (each day a step), its trainings and OPE runs children."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient("sqlite:///" + os.path.join(root, "mlruns", "mlflow.db"))
    runs = client.search_runs([client.get_experiment_by_name("mtf").experiment_id])
    (loop,) = [r for r in runs if r.data.tags["mtf.command"] == "pipeline"]
    children = sorted((r.data.tags["mtf.command"], r.info.run_name) for r in runs
                      if r.data.tags.get("mlflow.parentRunId") == loop.info.run_id)
    stamp = loop.info.run_name.removeprefix("pipeline-")
    assert children == [("evaluate", "ope-2026-01-02"),
                        ("train", f"{stamp}-final-bcq"), ("train", f"{stamp}-iql-2026-01-02"),
                        ("train", f"{stamp}-iql-2026-01-02-s1")]
    assert len(runs) == 5 and {r.info.status for r in runs} == {"FINISHED"}
    days = summary["days"]
    history = client.get_metric_history(loop.info.run_id, "day/true_deployed")
    assert [(m.step, m.value) for m in history] == [(0, days[0]["true_deployed"]),
                                                    (1, days[1]["true_deployed"])]
    go = client.get_metric_history(loop.info.run_id, "day/go")
    assert [(m.step, m.value) for m in go] == [(1, float(days[1]["decision"] == "go"))]
    assert loop.data.metrics["compare/logging_baseline/vs_baseline_pct"] == 0.0
    assert sorted(a.path for a in client.list_artifacts(loop.info.run_id, "summary")) == [
        "summary/summary.json", "summary/summary.md"]


def test_pipeline_config_validation() -> None:
    with pytest.raises(ValueError, match="compare has unknown entries"):
        PipelineConfig(compare=("sac",))
    with pytest.raises(ValueError, match="first_train_day"):
        PipelineConfig(days=2, first_train_day=2)


def test_learners_set_what_distinguishes_them_whatever_the_configured_learner() -> None:
    from mtf.loop.config import LEARNERS

    quad = load_config(None, ["train.algo=iql", "train.iql.quadratic_critic=true"]).train
    plain = load_config(None, ["train.algo=bcq"]).train
    for base in (quad, plain):
        assert LEARNERS["iql"][1](base).iql.quadratic_critic is False
        assert LEARNERS["iql_quadratic"][1](base).iql.quadratic_critic is True
        assert LEARNERS["bcq"][1](base).algo == "bcq"
        assert LEARNERS["bcq_random"][1](base).explore_groups == ("random",)


def test_a_comparison_learner_reuses_the_candidate_only_when_it_trains_the_same_policy() -> None:
    from mtf.loop.closed_loop import _as_trained
    from mtf.loop.config import LEARNERS

    quad = load_config(None, ["train.algo=iql", "train.iql.quadratic_critic=true",
                              "train.run_id=x", "train.start_ds=2026-01-01"]).train
    bcq = load_config(None, ["train.algo=bcq", "train.explore_groups=[noise]"]).train
    same = {k for k, (_, learner) in LEARNERS.items()
            if _as_trained(quad, learner) == _as_trained(quad)}
    assert same == {"iql_quadratic"}
    # BCQ on random exploration only is not plain BCQ, although _train resets explore_groups.
    same = {k for k, (_, learner) in LEARNERS.items()
            if _as_trained(bcq, learner) == _as_trained(bcq)}
    assert same == {"bcq"}
