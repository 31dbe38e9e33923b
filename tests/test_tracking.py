"""MLflow run tracking (``tracking`` section, mtf/tracking.py): a tiny train run and a tiny
evaluate run logged to a real SQLite store and read back with ``MlflowClient``; tracking off
and mlflow missing write nothing; a failing store or call is a warning, never a failed job."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import types
from typing import Any, Iterator

import pytest
import torch

from mtf.config import LakeConfig, MtfConfig, load_config
from mtf.configtools import to_dict
from mtf.errors import UserError
from mtf.fusion import FusionConfig, TaskSpec
from mtf.loop.closed_loop import DayRow, comparison_metrics, day_metrics
from mtf.ope.config import EnsembleConfig, OpeConfig
from mtf.ope.results import flat_metrics
from mtf.rl.job import train_job
from mtf.tracking import PARENT_TAG, TrackingConfig, flatten, start_run, store_uri
from tests.ope.tables import arrays_to_frame, sessions, write_delta_table, write_export
from tests.rl.tables import write_transitions

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

TINY_TRAIN = ["train.batch_size=32", "train.common.hidden=[16,16]", "train.iql.policy_ema=0.5",
              "train.loader.workers_count=1", "train.loader.shuffle_buffer_rows=256",
              "train.num_threads=1"]


@pytest.fixture(scope="module")
def lake(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """A small transitions table for the trainer (tests/rl) and one tracking store (the
    default one under this lake root, so its tables are created once)."""
    torch.set_num_threads(1)
    root = str(tmp_path_factory.mktemp("tracked-lake"))
    transitions = os.path.join(root, "rl-transitions")
    write_transitions(spark, transitions, n_sessions=120, state_dim=5, seed=0)
    uri = "sqlite:///" + os.path.join(root, "mlruns", "mlflow.db")
    return types.SimpleNamespace(root=root, transitions=transitions, uri=uri)


def _train_cfg(root: str, transitions: str, *extra: str) -> MtfConfig:
    return load_config(None, [f"lake.root={root}", f"lake.transitions={transitions}",
                              *TINY_TRAIN, *extra])


def _only_run(client: MlflowClient, experiment: str, name: str) -> Any:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_train_run_logs_config_metrics_and_the_policy(lake: Any, tmp_path: Any) -> None:
    cfg = _train_cfg(lake.root, lake.transitions, "train.max_steps=10", "train.log_every=5",
                     "train.checkpoint_every=10", "train.run_id=tracked-train",
                     "tracking.mlflow=true")
    result = train_job(cfg)
    client = MlflowClient(lake.uri)
    exp = client.get_experiment_by_name("mtf")
    # the default store: SQLite under lake.root, artefacts beside it
    assert store_uri(cfg.tracking, cfg.lake.root) == lake.uri
    assert exp.artifact_location == "file://" + os.path.join(lake.root, "mlruns", "artifacts")
    run = _only_run(client, "mtf", "tracked-train")
    assert run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("mtf.command", "mtf.run_dir", "mtf.table_version")} \
        == {"mtf.command": "train", "mtf.run_dir": result.run_dir, "mtf.table_version": "0"}
    assert PARENT_TAG not in run.data.tags

    # params: every key of the resolved config, dotted, values as in flatten()
    assert run.data.params == flatten(to_dict(cfg))
    assert (run.data.params["train.max_steps"], run.data.params["mdp.gamma"],
            run.data.params["train.common.hidden"], run.data.params["lake.root"],
            run.data.params["tracking.mlflow"], run.data.params["spark.conf.spark.databricks."
                                                                "delta.snapshotPartitions"]) == \
        ("10", "0.95", "[16, 16]", lake.root, "true", "2")

    # metrics: every record of metrics.jsonl, at its step, exactly
    records = [json.loads(x) for x in open(os.path.join(result.run_dir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [5, 10]
    names = sorted({k for r in records for k in r if k != "step"})
    assert sorted(run.data.metrics) == names and "loss/critic" in names
    for name in names:
        history = client.get_metric_history(run.info.run_id, name)
        assert [(m.step, m.value) for m in history] == [(r["step"], r[name]) for r in records]

    # artefacts: the TorchScript export and run.json, byte for byte
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["policy", "run.json"]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "policy")) == [
        "policy/policy.json", "policy/policy.pt"]
    local = client.download_artifacts(run.info.run_id, "policy", str(tmp_path))
    for name in ("policy.pt", "policy.json"):
        assert open(os.path.join(local, name), "rb").read() == \
            open(os.path.join(result.run_dir, "export", name), "rb").read()


# tests/ope/test_spark.py's tiny OPE, with the paper's gate and no ensemble (the fastest run)
OPE = OpeConfig(n_iterations=40, lr=3e-3, batch_size=64, hidden=(16,), target_update_every=20,
                log_every=20, n_bootstrap=20, n_initial_states=100, threads=1,
                fixed_policies={"c": (0.3, -0.2)}, run_id="tracked-ope",
                gate="conservative_fqe", ensemble=EnsembleConfig(members=0))


def test_evaluate_run_logs_estimates_decisions_and_the_report(
        spark: Any, lake: Any, tmp_path: Any) -> None:
    from mtf.ope.job import evaluate_table

    root = str(tmp_path / "ope-lake")
    path = os.path.join(root, "transitions")
    write_delta_table(spark, path, arrays_to_frame(sessions(120, seed=5), split="test"),
                      ["f0", "f1", "f2"])
    write_export(os.path.join(root, "models", "bc-run1", "export"))
    # an explicit store (this module's), with the experiment named in the config
    tracking = TrackingConfig(mlflow=True, uri=lake.uri, experiment="ope-tests")
    cfg = MtfConfig(lake=LakeConfig(root=root), ope=OPE, tracking=tracking,
                    fusion=FusionConfig(tasks=(TaskSpec("click"), TaskSpec("like"))))
    result, paths = evaluate_table(spark, cfg)
    assert not os.path.exists(os.path.join(root, "mlruns"))   # the configured store, only

    client = MlflowClient(lake.uri)
    run = _only_run(client, "ope-tests", "tracked-ope")
    assert run.info.status == "FINISHED"
    assert run.data.params == flatten(to_dict(cfg))
    assert (run.data.params["ope.n_iterations"], run.data.params["ope.ensemble.members"]) == \
        ("40", "0")
    go = [d.policy for d in result.decisions if d.go]
    assert {k: run.data.tags[k] for k in ("mtf.command", "mtf.gate", "mtf.go", "mtf.report_dir",
                                          "mtf.table_version")} == {
        "mtf.command": "evaluate", "mtf.gate": OPE.gate, "mtf.go": ",".join(go) or "none",
        "mtf.report_dir": paths.directory, "mtf.table_version": "0"}

    # every estimate (with its interval), paired difference and decision, exactly
    expected = {k: v for k, v in flat_metrics(result.results, result.decisions).items()
                if math.isfinite(v)}
    assert len(expected) > 40 and run.data.metrics == expected
    assert [p.name for p in result.policies] == ["logging", "c", "bc"]
    for policy in ("c", "bc"):
        assert run.data.metrics[f"gate/{policy}/go"] == float(result.decision(policy).go)
        assert run.data.metrics[f"gate/{policy}/diff_low"] == result.decision(policy).diff_low
    assert run.data.metrics["ope/bc/conservative_fqe"] == \
        result.estimate("bc", "conservative_fqe")
    assert "gate/logging/go" not in run.data.metrics

    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "report")) == [
        "report/report.html", "report/report.json"]
    local = client.download_artifacts(run.info.run_id, "report/report.json", str(tmp_path))
    assert open(local, "rb").read() == open(paths.json, "rb").read()


def test_tracking_off_writes_nothing(lake: Any, tmp_path: Any) -> None:
    cfg = _train_cfg(str(tmp_path), lake.transitions, "train.max_steps=2", "train.log_every=2",
                     "tracking.mlflow=false")
    assert cfg == _train_cfg(str(tmp_path), lake.transitions, "train.max_steps=2",
                             "train.log_every=2")    # off is the default
    result = train_job(cfg)
    assert result.step == 2
    assert sorted(os.listdir(tmp_path)) == ["models"]


def test_without_mlflow_auto_trains_untracked_and_true_stops_at_the_start(
        lake: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)    # `import mlflow` raises ImportError
    with caplog.at_level(logging.DEBUG, logger="mtf.tracking"):
        result = train_job(_train_cfg(str(tmp_path), lake.transitions, "train.max_steps=2",
                                      "train.log_every=2", "tracking.mlflow=auto"))
    assert result.step == 2 and sorted(os.listdir(tmp_path)) == ["models"]
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "mtf.tracking"] == [
        ("DEBUG", "mlflow is not installed; tracking.mlflow=auto leaves tracking off")]

    other = tmp_path / "required"
    with pytest.raises(UserError, match=r"^tracking\.mlflow=true but mlflow is not installed; "
                                        r"install it with `pip install -e \.\[mlflow\]`"):
        train_job(_train_cfg(str(other), lake.transitions, "train.max_steps=2",
                             "tracking.mlflow=true"))
    assert not os.path.exists(other / "models")     # stopped before training


@pytest.fixture
def root_logging() -> Iterator[None]:
    """``mtf.cli.main`` sets up logging (a handler on pytest's captured stderr): restore the
    root logger afterwards, so later tests do not log into a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("command", ["train", "evaluate", "pipeline"])
def test_a_required_mlflow_that_is_missing_is_one_line_and_exit_code_2(
        command: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], root_logging: None) -> None:
    from mtf.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert main([command, f"lake.root={tmp_path}", "tracking.mlflow=true"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"mtf {command}: error: tracking.mlflow=true but mlflow is not installed; install it "
        f"with `pip install -e .[mlflow]` or set tracking.mlflow=auto (or false)"]
    assert os.listdir(tmp_path) == []     # before any work (no Spark session, no table read)


def test_a_failing_store_or_call_is_a_warning(lake: Any, tmp_path: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    on = TrackingConfig(mlflow=True, uri="sqlite:////proc/no-such-dir/mlflow.db")
    with caplog.at_level(logging.WARNING, logger="mtf.tracking"):
        tracker = start_run(on, lake_root=str(tmp_path), kind="train", name="x", config={})
    assert not tracker.active
    (record,) = [r for r in caplog.records if r.name == "mtf.tracking"]
    assert record.levelname == "WARNING" and record.getMessage().startswith(
        "MLflow store sqlite:////proc/no-such-dir/mlflow.db is not usable (")

    caplog.clear()
    tracker = start_run(TrackingConfig(mlflow=True, uri=lake.uri, experiment="failing"),
                        lake_root=lake.root, kind="train", name="breaks", config={"a": 1})
    with caplog.at_level(logging.WARNING, logger="mtf.tracking"), tracker:
        tracker.log_metrics({"m": 1.0}, step=1)
        tracker.log_artifact(str(tmp_path / "missing.txt"))   # MLflow raises: a warning
        assert not tracker.active
        tracker.log_metrics({"m": 2.0}, step=2)               # a no-op from now on
    (record,) = [r for r in caplog.records if r.name == "mtf.tracking"]
    assert record.levelname == "WARNING" and record.getMessage().startswith(
        f"MLflow tracking of run {tracker.run_id} stopped (log artifact {tmp_path}/missing.txt "
        f"failed: ")
    run = MlflowClient(lake.uri).get_run(tracker.run_id)
    assert (run.data.params, run.data.metrics, run.info.status) == ({"a": "1"}, {"m": 1.0},
                                                                    "RUNNING")

    with pytest.raises(UserError, match=r"^tracking\.uri is empty and lake\.root "
                                        r"'s3a://b/lake' is not a local path; set tracking\.uri"):
        start_run(TrackingConfig(mlflow="auto"), lake_root="s3a://b/lake", kind="evaluate",
                  name="y", config={})


def test_runs_started_inside_a_run_are_its_children(lake: Any) -> None:
    """``mtf pipeline``'s trainings and evaluations: child runs in the parent's experiment."""
    settings = TrackingConfig(mlflow=True, uri=lake.uri, experiment="loop-tests")
    with start_run(settings, lake_root=lake.root, kind="pipeline", name="loop",
                   config={}) as parent:
        with start_run(dataclasses.replace(settings, experiment="elsewhere"),
                       lake_root=lake.root, kind="train", name="day-1", config={}) as child:
            pass
        with pytest.raises(RuntimeError):
            with start_run(settings, lake_root=lake.root, kind="evaluate", name="day-1-ope",
                           config={}) as failed:
                raise RuntimeError("boom")
    after = start_run(settings, lake_root=lake.root, kind="train", name="later", config={})
    after.finish()
    client = MlflowClient(lake.uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("loop-tests").experiment_id])}
    assert sorted(runs) == ["day-1", "day-1-ope", "later", "loop"]
    assert client.get_experiment_by_name("elsewhere") is None
    assert {n: r.data.tags.get(PARENT_TAG) for n, r in runs.items()} == {
        "loop": None, "day-1": parent.run_id, "day-1-ope": parent.run_id, "later": None}
    assert {n: r.info.status for n, r in runs.items()} == {
        "loop": "FINISHED", "day-1": "FINISHED", "day-1-ope": "FAILED", "later": "FINISHED"}
    assert (child.run_id, failed.run_id) == (runs["day-1"].info.run_id,
                                             runs["day-1-ope"].info.run_id)


def test_flattened_params_and_loop_metrics() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": {}, "e": {"x.y": "z"}}, "f": None,
                    "g": True, "h": "", "i": 0.5}) == {
        "a.b": "1", "a.c": "[1, 2]", "a.d": "{}", "a.e.x.y": "z", "f": "null", "g": "true",
        "h": "", "i": "0.5"}
    first = DayRow(day="2026-01-01", impressions=10, transitions=4, deployed="baseline",
                   true_deployed=4.5, true_baseline=4.5, seconds=2.0)
    got = day_metrics(first)     # a day without a candidate: NaN values the tracker drops
    assert {k: v for k, v in got.items() if math.isfinite(v)} == {
        "day/impressions": 10.0, "day/transitions": 4.0, "day/true_deployed": 4.5,
        "day/true_baseline": 4.5, "day/seconds": 2.0}
    assert sorted(k for k, v in got.items() if math.isnan(v)) == [
        "day/ope_baseline", "day/ope_candidate", "day/selection_regret", "day/true_candidate"]
    later = dataclasses.replace(first, candidate="iql-2", true_candidate=4.7, ope_candidate=5.0,
                                ope_baseline=4.6, selection_regret=0.0, decision="no-go")
    assert day_metrics(later)["day/go"] == 0.0 and "day/go" not in day_metrics(first)
    assert comparison_metrics([
        {"policy": "best fixed weights (CEM)", "true_return": 4.5, "vs_baseline_pct": 0.7},
        {"policy": "ES (state -> weights)", "true_return": 4.6, "vs_baseline_pct": 2.6,
         "vs_best_fixed": 0.08, "dwell_vs_baseline_pct": 1.5}]) == {
        "compare/best_fixed_weights_cem/true_return": 4.5,
        "compare/best_fixed_weights_cem/vs_baseline_pct": 0.7,
        "compare/es_state_weights/true_return": 4.6,
        "compare/es_state_weights/vs_baseline_pct": 2.6,
        "compare/es_state_weights/vs_best_fixed": 0.08,
        "compare/es_state_weights/dwell_vs_baseline_pct": 1.5}
