"""Example Airflow DAG: the daily mtf jobs, in order, for the logical date ``ds``.

Copy this file into your Airflow ``dags/`` folder and set the Airflow Variables
``mtf_conf_file`` (a YAML like conf/cluster.yaml), ``mtf_spark_master`` and ``mtf_home`` (where
mtf's jobs/ live on the workers). Each task is idempotent: re-running a date replaces exactly
that date's partitions (build-transitions uses Delta replaceWhere on ds), training uses the run
id ``bcq-<ds>`` (a retried task resumes from its last checkpoint) and the evaluation report is
written under ``daily-<ds>``. Backfills therefore
are just `airflow dags backfill -s 2026-01-01 -e 2026-01-07 mtf_daily`.

The command lines are built by :func:`daily_commands`, a plain function that the tests check
without Airflow installed.
"""
from __future__ import annotations

import datetime as dt

SPARK_SUBMIT = ("spark-submit --master {master} --deploy-mode client "
                "--packages io.delta:delta-spark_4.0_2.13:4.4.0 "
                "--conf spark.pyspark.python=python3")


def daily_commands(ds: str, first_ds: str, *, conf_file: str, master: str, mtf_home: str,
                   nproc: int = 8) -> list[tuple[str, str]]:
    """``[(task_id, bash command), ...]`` for logical date ``ds``, in run order.

    ``first_ds`` is the first day of the training window (the paper retrains daily on the last
    3 days). Both may be Airflow templates (``{{ ds }}``, ``{{ macros.ds_add(ds, -2) }}``).
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
    ]


TRAIN_DAYS = 3

try:  # Only define the DAG where Airflow is installed.
    from airflow import DAG
    from airflow.operators.bash import BashOperator
except ImportError:  # pragma: no cover - Airflow is not a dependency of mtf
    DAG = None

if DAG is not None:  # pragma: no cover
    with DAG(dag_id="mtf_daily", schedule="@daily", start_date=dt.datetime(2026, 1, 1),
             catchup=False, max_active_runs=1,
             default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)}) as dag:
        previous = None
        for task_id, command in daily_commands(
                "{{ ds }}", f"{{{{ macros.ds_add(ds, -{TRAIN_DAYS - 1}) }}}}",
                conf_file="{{ var.value.mtf_conf_file }}",
                master="{{ var.value.mtf_spark_master }}", mtf_home="{{ var.value.mtf_home }}"):
            task = BashOperator(task_id=task_id, bash_command=command)
            if previous is not None:
                previous >> task
            previous = task
