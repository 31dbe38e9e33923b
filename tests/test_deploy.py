"""The example Airflow DAG builds valid mtf commands (checked without Airflow installed)."""
from __future__ import annotations

import importlib.util
import os
import shlex

import pytest

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
    assert [t for t, _ in cmds] == ["build_transitions", "train", "evaluate", "deploy",
                                    "maintain"]
    assert [t for t, _ in cmds] == list(dag.TASKS)
    for task, command in cmds:
        argv = shlex.split(command)
        if task == "deploy":      # not a Spark job: the mtf CLI acts on the gate's decision
            assert argv[:4] == ["python3", "-m", "mtf.cli", "deploy"]
            assert load_config(os.path.join(ROOT, "conf", "cluster.yaml"),
                               argv[6:]).ope.run_id == "daily-2026-01-07"
            continue
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
        if task == "maintain":       # after deploy: the VACUUM keeps the new pin readable
            assert job.endswith("jobs/maintain.py") and overrides == []


# ---- mtf deploy: acting on the gate ----------------------------------------------------------

def _report(lake, run_id: str, selected: str | None, policy_dir: str) -> None:
    """A report.json as `mtf evaluate` writes it (the fields mtf deploy reads)."""
    import json
    out = lake / "reports" / run_id
    out.mkdir(parents=True)
    go = selected is not None
    (out / "report.json").write_text(json.dumps({
        "run_id": run_id, "selected": selected, "meta": {"feature_names": ["f0", "f1"]},
        "policies": [
            {"name": "logging", "kind": "fixed", "source": "fixed", "action": [0.0] * 6},
            {"name": "bcq", "kind": "exported", "source": policy_dir},
            {"name": "half", "kind": "fixed", "source": "fixed", "action": [0.5] * 6}],
        "decisions": [{"policy": "bcq", "go": go, "reason": "lower bound above -margin"
                       if go else "lower bound -0.2 < -margin -0.05"}]}))


def _exported_policy(tmp_path) -> str:
    import torch

    from mtf.serving.export import ConstantPolicy
    d = tmp_path / "models" / "bcq" / "export"
    d.mkdir(parents=True)
    torch.jit.script(ConstantPolicy(torch.full((6,), 0.25))).save(str(d / "policy.pt"))
    return str(d)


def _deploy(lake, run_id: str, capsys) -> tuple[int, dict]:
    import json

    from mtf.cli import main
    code = main(["deploy", f"lake.root={lake}", f"ope.run_id={run_id}"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


def test_deploy_on_go_switches_serving_and_no_go_keeps_it(tmp_path, capsys) -> None:
    import json

    import torch
    lake = tmp_path / "lake"
    policy_dir = _exported_policy(tmp_path)
    _report(lake, "daily-2026-01-07", "bcq", policy_dir)
    _report(lake, "daily-2026-01-08", None, policy_dir)
    _report(lake, "daily-2026-01-09", "half", policy_dir)

    code, out = _deploy(lake, "daily-2026-01-07", capsys)
    assert code == 0 and (out["action"], out["policy"]) == ("deployed", "bcq")
    current = json.loads((lake / "serving" / "current.json").read_text())
    assert (current["policy"], current["path"]) == (
        "bcq", str(lake / "serving" / "daily-2026-01-07"))
    explore = torch.jit.load(str(lake / "serving" / "daily-2026-01-07" / "explore.pt"))
    action, logp = explore(torch.zeros(3, 2), torch.tensor([0, 0, 0]))   # exploit group
    assert torch.allclose(action, torch.full((3, 6), 0.25)) and torch.isnan(logp).all()
    sidecar = json.loads((lake / "serving" / "daily-2026-01-07" / "explore.json").read_text())
    assert (sidecar["policy"], sidecar["source"]) == ("bcq", policy_dir)

    # NO-GO: the deployed policy keeps serving, nothing is written.
    before = (lake / "serving" / "current.json").read_text()
    code, out = _deploy(lake, "daily-2026-01-08", capsys)
    assert code == 0 and (out["action"], out["policy"]) == ("kept", "bcq")
    assert (lake / "serving" / "current.json").read_text() == before
    assert not (lake / "serving" / "daily-2026-01-08").exists()

    # A fixed policy the gate selected deploys as constant weights; a retried task is harmless.
    for _ in range(2):
        code, out = _deploy(lake, "daily-2026-01-09", capsys)
        assert code == 0 and out["policy"] == "half"
    explore = torch.jit.load(str(lake / "serving" / "daily-2026-01-09" / "explore.pt"))
    assert torch.allclose(explore(torch.zeros(1, 2), torch.tensor([0]))[0],
                          torch.full((1, 6), 0.5))


def test_deploy_without_a_report_is_one_line(tmp_path, capsys) -> None:
    from mtf.cli import main
    code = main(["deploy", f"lake.root={tmp_path}", "ope.run_id=daily-2026-01-07"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "no OPE report" in err[0] and "mtf evaluate" in err[0]
    code = main(["deploy", f"lake.root={tmp_path}"])
    assert code == 2 and "ope.run_id" in capsys.readouterr().err


# ---- the DAG in a real Airflow ---------------------------------------------------------------

AIRFLOW_REQUIREMENTS = os.path.join(ROOT, "deploy", "airflow-requirements.txt")
DAGBAG_PROBE = r"""
import json, sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("mtf_daily")
print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "dags": sorted(bag.dags),
                  "tasks": {t.task_id: {"upstream": sorted(t.upstream_task_ids),
                                        "command": t.bash_command,
                                        "depends_on_past": t.depends_on_past}
                            for t in (dag.tasks if dag else [])},
                  "max_active_runs": dag.max_active_runs if dag else None}))
"""


def airflow_python() -> str:
    """Python of a virtual environment with the pinned Airflow, created once per requirements
    file under ~/.cache/mtf (a few minutes the first time; Airflow is not an mtf dependency)."""
    import hashlib
    import subprocess
    import venv

    digest = hashlib.sha256(open(AIRFLOW_REQUIREMENTS, "rb").read()).hexdigest()[:12]
    home = os.path.join(os.path.expanduser("~"), ".cache", "mtf", f"airflow-{digest}")
    python = os.path.join(home, "bin", "python")
    if not os.path.isfile(os.path.join(home, ".installed")):
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-r",
                        AIRFLOW_REQUIREMENTS], check=True, timeout=1800)
        open(os.path.join(home, ".installed"), "w").close()
    return python


@pytest.mark.slow
def test_a_real_airflow_dagbag_loads_the_daily_dag(tmp_path) -> None:
    import json
    import shutil
    import subprocess

    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(os.path.join(ROOT, "deploy", "airflow_mtf_daily.py"), dags)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
           "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run([airflow_python(), "-c", DAGBAG_PROBE, str(dags)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    bag = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bag["import_errors"] == {} and bag["dags"] == ["mtf_daily"]
    tasks = bag["tasks"]
    assert list(tasks) == ["build_transitions", "train", "evaluate", "deploy", "maintain"]
    assert [tasks[t]["upstream"] for t in tasks] == [[], ["build_transitions"], ["train"],
                                                     ["evaluate"], ["deploy"]]
    assert all(t["depends_on_past"] for t in tasks.values()) and bag["max_active_runs"] == 1
    assert "mtf.cli deploy" in tasks["deploy"]["command"]
    assert "ope.run_id=daily-{{ ds }}" in tasks["deploy"]["command"]
