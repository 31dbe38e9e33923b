"""`mtf train` / `mtf export` on a transitions table written with Spark + Delta."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from mtf.config import load_config
from mtf.rl.checkpoint import list_checkpoints
from mtf.rl.job import run_export, train_job

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["train.batch_size=32", "train.log_every=5", "train.checkpoint_every=10",
        "train.common.hidden=[16,16]", "train.bcq.vae_hidden=[16,16]", "train.bcq.n_candidates=4",
        "train.loader.workers_count=1", "train.loader.shuffle_buffer_rows=256"]


def _overrides(tmp_path: Any, transitions: str, *extra: str) -> list[str]:
    return [f"lake.root={tmp_path}", f"lake.transitions={transitions}", *TINY, *extra]


def test_train_job_trains_checkpoints_and_exports(tmp_path: Any, transitions_path: str) -> None:
    cfg = load_config(None, _overrides(tmp_path, transitions_path, "train.max_steps=12",
                                       "train.run_id=first"))
    result = train_job(cfg)
    run_dir = os.path.join(str(tmp_path), "models", "first")
    assert result.run_dir == run_dir and result.step == 12
    assert [os.path.basename(p) for p in list_checkpoints(run_dir)] == [
        "step_000000010.pt", "step_000000012.pt"]
    records = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [5, 10, 12]
    assert records[-1]["data/epoch"] > 0
    meta = json.load(open(os.path.join(run_dir, "export", "policy.json")))
    assert meta["table_path"] == transitions_path and meta["table_version"] == 0
    assert meta["feature_names"] == ["f0", "f1", "f2", "f3", "f4"]
    assert meta["action_tasks"] == list(cfg.fusion.names)
    assert os.path.isfile(os.path.join(run_dir, "export", "policy.pt"))

    # the same run id again continues from the newest checkpoint
    more = load_config(None, _overrides(tmp_path, transitions_path, "train.max_steps=15",
                                        "train.run_id=first"))
    assert train_job(more).step == 15
    records = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [5, 10, 12, 15]

    # mtf export of that run, by run id under the models directory
    assert run_export(load_config(None, _overrides(tmp_path, transitions_path,
                                                   "train.export_checkpoint=first"))) == 0
    assert json.load(open(os.path.join(run_dir, "export", "policy.json")))["step"] == 15


def test_missing_table_is_a_clear_error(tmp_path: Any) -> None:
    cfg = load_config(None, [f"lake.root={tmp_path}", *TINY])
    with pytest.raises(FileNotFoundError, match="no transitions table at"):
        train_job(cfg)


def test_configured_tasks_must_match_the_table(tmp_path: Any, transitions_path: str) -> None:
    cfg = load_config(None, _overrides(tmp_path, transitions_path,
                                       "fusion.tasks=[{name: click}, {name: like}]"))
    with pytest.raises(ValueError, match=r"has mtf.action_tasks=\['click', 'like', 'share', .*"
                                         r"but the config's fusion.tasks are \['click', 'like'\]"):
        train_job(cfg)


def test_requested_feature_version_must_match_the_table(tmp_path: Any,
                                                        transitions_path: str) -> None:
    cfg = load_config(None, _overrides(tmp_path, transitions_path, "train.feature_version=v9"))
    with pytest.raises(ValueError, match="train.feature_version='v9' but transitions table .* "
                                         "has mtf.feature_version='test-v1'"):
        train_job(cfg)


def test_export_needs_a_checkpoint(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="mtf export needs train.export_checkpoint"):
        run_export(load_config(None, [f"lake.root={tmp_path}"]))
    with pytest.raises(FileNotFoundError, match="no checkpoint file or run directory at"):
        run_export(load_config(None, [f"lake.root={tmp_path}", "train.export_checkpoint=nope"]))


@pytest.mark.slow
def test_torchrun_two_ranks_through_jobs_train(tmp_path: Any, transitions_path: str) -> None:
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone",
           "--nproc_per_node", "2", os.path.join(REPO, "jobs", "train.py"),
           *_overrides(tmp_path, transitions_path, "train.max_steps=6", "train.run_id=ddp",
                       "train.log_every=3", "tracking.mlflow=auto")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = os.path.join(str(tmp_path), "models", "ddp")
    records = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [3, 6]
    assert json.load(open(os.path.join(run_dir, "run.json")))["world_size"] == 2
    assert os.path.isfile(os.path.join(run_dir, "export", "policy.pt"))
    if importlib.util.find_spec("mlflow") is not None:   # rank 0 alone logged one MLflow run
        from mlflow.tracking import MlflowClient

        client = MlflowClient("sqlite:///" + os.path.join(str(tmp_path), "mlruns", "mlflow.db"))
        (run,) = client.search_runs([client.get_experiment_by_name("mtf").experiment_id])
        assert (run.info.run_name, run.info.status) == ("ddp", "FINISHED")
        history = client.get_metric_history(run.info.run_id, "loss/critic")
        assert [(m.step, m.value) for m in history] == [(r["step"], r["loss/critic"])
                                                        for r in records]


def _mtf_train(tmp_path: Any, transitions: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mtf.cli", "train",
           *_overrides(tmp_path, transitions, "train.nproc_per_node=2", *extra)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mtf_train_starts_its_own_ranks(tmp_path: Any, transitions_path: str) -> None:
    proc = _mtf_train(tmp_path, transitions_path, "train.max_steps=4", "train.run_id=ranks",
                      "train.log_every=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = os.path.join(str(tmp_path), "models", "ranks")
    assert json.load(open(os.path.join(run_dir, "run.json")))["world_size"] == 2
    assert [json.loads(x)["step"] for x in open(os.path.join(run_dir, "metrics.jsonl"))] == [2, 4]
    assert os.path.isfile(os.path.join(run_dir, "export", "policy.pt"))
    assert " rank=1 " in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_user_errors_with_local_ranks_are_one_line(tmp_path: Any, transitions_path: str) -> None:
    # Checked in the launcher before any rank starts: exactly the usual line.
    early = _mtf_train(tmp_path, transitions_path, "train.table_version=99")
    assert early.returncode == 2
    assert early.stderr.splitlines() == [
        f"mtf train: error: cannot open transitions table {transitions_path!r} at version 99: "
        f"its latest version is 0; set train.table_version to a version <= 0, or to null for "
        f"the latest"]
    # Found by the ranks (no rows in the split): their line(s), then the launcher's.
    late = _mtf_train(tmp_path, transitions_path, "train.split=nosuch")
    assert late.returncode == 2 and "Traceback" not in late.stderr, late.stderr[-3000:]
    errors = [x for x in late.stderr.splitlines() if "error:" in x]
    assert 2 <= len(errors) <= 3, late.stderr
    assert all("has no rows with split='nosuch'" in x for x in errors[:-1])
    assert errors[-1].startswith("mtf train: error: rank ")
    assert errors[-1].endswith("of 2 stopped on the error above (train.nproc_per_node=2)")


@pytest.mark.slow
def test_torch_distributor_local_mode_two_ranks(spark: Any, tmp_path: Any,
                                                transitions_path: str) -> None:
    from mtf.rl.job import train_with_distributor

    cfg = load_config(None, _overrides(tmp_path, transitions_path, "train.max_steps=4",
                                       "train.run_id=distributor", "train.log_every=2"))
    run_dir = train_with_distributor(cfg, num_processes=2, local_mode=True, use_gpu=False)
    assert run_dir == os.path.join(str(tmp_path), "models", "distributor")
    assert json.load(open(os.path.join(run_dir, "run.json")))["world_size"] == 2
    assert os.path.isfile(os.path.join(run_dir, "export", "policy.pt"))
