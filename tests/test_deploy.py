"""The example Airflow DAG builds valid mtf commands (checked without Airflow installed)."""
from __future__ import annotations

import importlib.util
import os
import shlex

from mtf.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_dag_module():
    spec = importlib.util.spec_from_file_location(
        "mtf_daily_dag", os.path.join(ROOT, "deploy", "airflow_mtf_daily.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_daily_commands_run_the_jobs_in_order_with_valid_overrides() -> None:
    dag = load_dag_module()
    assert dag.DAG is None or hasattr(dag, "dag")     # importable without Airflow
    cmds = dag.daily_commands("2026-01-07", "2026-01-05", conf_file="conf/cluster.yaml",
                              master="spark://m:7077", mtf_home=ROOT)
    assert [t for t, _ in cmds] == ["build_transitions", "train", "evaluate"]
    for task, command in cmds:
        argv = shlex.split(command)
        job = next(a for a in argv if a.endswith(".py"))
        assert os.path.isfile(job), job
        overrides = [a for a in argv[argv.index(job) + 1:] if "=" in a and not a.startswith("-")]
        # Every override names a real config key with a valid value.
        cfg = load_config(os.path.join(ROOT, "conf", "cluster.yaml"), overrides)
        if task == "build_transitions":
            assert (cfg.etl.start_ds, cfg.etl.end_ds) == ("2026-01-07", "2026-01-07")
        if task == "train":
            assert (cfg.train.start_ds, cfg.train.end_ds) == ("2026-01-05", "2026-01-07")
            assert cfg.train.run_id == "bcq-2026-01-07"   # a retry resumes the same run
        if task == "evaluate":
            assert cfg.ope.run_id == "daily-2026-01-07"
