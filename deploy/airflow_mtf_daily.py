"""Airflow DAG: the daily mtf loop for the logical date ``ds``, from logs to serving.

    build_transitions -> train -> evaluate -> deploy -> maintain

``deploy`` acts on the offline gate: on GO it wraps the selected policy in the exploration
policy under ``<lake>/serving/daily-<ds>/`` and switches ``<lake>/serving/current.json`` to it;
on NO-GO it changes nothing, so the deployed policy keeps serving (``mtf deploy``,
mtf/serving/deploy.py). Serving reads ``current.json``. ``maintain`` then compacts small files
and VACUUMs the lake's tables, keeping every pinned version readable (the deployed policy's
included; docs/maintenance.md); it runs after deploy so that it sees the new pin.

Copy this file into your Airflow ``dags/`` folder and set the Airflow Variables
``mtf_conf_file`` (a YAML like conf/cluster.yaml), ``mtf_spark_master`` and ``mtf_home`` (where
mtf's jobs/ live on the workers; ``mtf`` must be installed there). Each task is idempotent:
re-running a date replaces exactly that date's partitions (build-transitions uses Delta
replaceWhere on ds), training uses the run id ``bcq-<ds>`` (a retried task resumes from its last
checkpoint), the evaluation report is written under ``daily-<ds>``, deploy re-writes the same
files and maintain only removes files no pinned version needs. Days run in order, one at a time (``depends_on_past``, ``max_active_runs=1``): day D + 1's
build continues the sessions open at the end of day D (docs/etl.md). Backfills are
``airflow dags backfill -s 2026-01-01 -e 2026-01-07 mtf_daily``.

The command lines come from :func:`daily_commands`, a plain function the tests check without
Airflow; a slow test loads this file with a real Airflow ``DagBag`` in its own virtual
environment (deploy/airflow-requirements.txt).
"""
from __future__ import annotations

import datetime as dt

SPARK_SUBMIT = ("spark-submit --master {master} --deploy-mode client "
                "--packages io.delta:delta-spark_4.0_2.13:4.4.0 "
                "--conf spark.pyspark.python=python3")
TASKS = ("build_transitions", "train", "evaluate", "deploy", "maintain")
TRAIN_DAYS = 3          # the paper retrains daily on the last 3 days


def daily_commands(ds: str, first_ds: str, *, conf_file: str, master: str, mtf_home: str,
                   nproc: int = 8) -> list[tuple[str, str]]:
    """``[(task_id, bash command), ...]`` for logical date ``ds``, in run order (:data:`TASKS`).

    ``first_ds`` is the first day of the training window. Both may be Airflow templates
    (``{{ ds }}``, ``{{ macros.ds_add(ds, -2) }}``).
    """
    submit = SPARK_SUBMIT.format(master=master)
    conf = f"--conf-file {conf_file}"
    job = lambda name: f"{mtf_home}/jobs/{name}.py"  # noqa: E731
    return [
        ("build_transitions",
         f"{submit} {job('build_transitions')} {conf} etl.start_ds={ds} etl.end_ds={ds}"),
        ("train",
         f"torchrun --nproc_per_node {nproc} {job('train')} {conf} "
         f"train.start_ds={first_ds} train.end_ds={ds} train.run_id=bcq-{ds}"),
        ("evaluate", f"{submit} {job('evaluate')} {conf} ope.run_id=daily-{ds}"),
        ("deploy", f"python3 -m mtf.cli deploy {conf} ope.run_id=daily-{ds}"),
        ("maintain", f"{submit} {job('maintain')} {conf}"),
    ]


try:  # Only define the DAG where Airflow is installed (Airflow 3, or 2.x as a fallback).
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
except ImportError:  # pragma: no cover - Airflow is not a dependency of mtf
    try:
        from airflow import DAG
        from airflow.operators.bash import BashOperator
    except ImportError:
        DAG = None

if DAG is not None:  # pragma: no cover - loaded by Airflow (tests/test_deploy.py, slow)
    with DAG(dag_id="mtf_daily", schedule="@daily", start_date=dt.datetime(2026, 1, 1),
             catchup=False, max_active_runs=1,
             default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10),
                           "depends_on_past": True},
             doc_md=__doc__) as dag:
        previous = None
        for task_id, command in daily_commands(
                "{{ ds }}", f"{{{{ macros.ds_add(ds, -{TRAIN_DAYS - 1}) }}}}",
                conf_file="{{ var.value.mtf_conf_file }}",
                master="{{ var.value.mtf_spark_master }}", mtf_home="{{ var.value.mtf_home }}"):
            task = BashOperator(task_id=task_id, bash_command=command)
            if previous is not None:
                previous >> task
            previous = task
