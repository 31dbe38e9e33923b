"""A job submitted with spark-submit to a real standalone cluster (master + 2 workers).

One cluster serves the module; the fault-injection test kills one of its workers, so it is the
module's last test.
"""
from __future__ import annotations

import glob
import json
import os
import re
import time

import pytest

from mtf.localcluster import StandaloneCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    """Two workers of one core each (the last test kills worker 0)."""
    with StandaloneCluster(n_workers=2, cores_per_worker=1) as c:
        yield c


def test_simulate_and_build_transitions_jobs_on_standalone_cluster(spark, tmp_path,
                                                                   cluster) -> None:
    """The real spark-submit entry points, as a scheduler would run them: they keep the
    master spark-submit gives (tasks run on both workers' executors) and write Delta tables
    that a local session reads."""
    from mtf.delta import read_delta

    assert cluster.alive_workers() == 2
    lake = [f"lake.root={tmp_path}", "sim.n_users=200", "sim.users_per_shard=100",
            "sim.n_days=2", "etl.files_per_day=2"]
    cluster.submit(os.path.join(ROOT, "jobs", "simulate.py"), lake, conf=SMALL_JOB_CONF, cwd=ROOT)
    cluster.submit(os.path.join(ROOT, "jobs", "build_transitions.py"), lake, conf=SMALL_JOB_CONF,
                   cwd=ROOT)
    raw = read_delta(spark, str(tmp_path / "raw_impressions"))
    tr = read_delta(spark, str(tmp_path / "transitions"))
    n_requests = raw.select("request_id").distinct().count()
    assert n_requests > 0
    assert tr.count() == n_requests          # one transition per request (no bad rows)
    assert {r["ds"].isoformat() for r in tr.select("ds").distinct().collect()} <= {
        "2026-01-01", "2026-01-02"}
    # Not local mode: both workers' executors ran tasks of these jobs.
    assert all(_running_tasks(cluster, i) > 0 for i in (0, 1))


def test_cluster_is_torn_down(tmp_path) -> None:
    cluster = StandaloneCluster(n_workers=1).start()
    procs = [cluster.master, *cluster.workers]
    cluster.cleanup()
    assert all(p is not None and p.poll() is not None for p in procs)


# Small shuffles for a 2-core cluster (the job's own spark.* config is not applied under
# spark-submit); the default 200 shuffle partitions make the build several times slower. The
# driver's and executors' JVMs live for one short job on tiny data: the client JIT only and
# the serial collector take much less CPU than the defaults.
SHORT_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
SMALL_JOB_CONF = {"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "2",
                  "spark.databricks.delta.snapshotPartitions": "2", "spark.locality.wait": "0s",
                  "spark.driver.extraJavaOptions": SHORT_JVM,
                  "spark.executor.extraJavaOptions": SHORT_JVM}


def _running_tasks(cluster: StandaloneCluster, i: int) -> int:
    return cluster.executor_log(i).count("Running task")


def _executor_logs(cluster: StandaloneCluster, i: int) -> set[str]:
    """The stderr files of every executor worker ``i`` has launched (all apps)."""
    return set(glob.glob(os.path.join(cluster.workdir, f"worker{i}", "app-*", "*", "stderr")))


def _sorted_rows(df) -> list:
    return sorted(df.collect(), key=lambda r: (r["session_id"], r["step"]))


def test_build_transitions_survives_a_worker_killed_mid_job(spark, tmp_path, cluster) -> None:
    """SIGKILL one worker (and its executor) while jobs/build_transitions.py runs on both.

    The kill is timed from the job's own progress, not a sleep: after the driver has logged the
    quarantine commit (step 1 of 3) and worker 0's executor has started a task of the
    transitions phase after it; the transitions commit (step 3) must not exist yet. Spark
    re-runs the lost tasks and shuffle outputs on the surviving worker (the driver runs in the
    spark-submit process, client mode), the job exits 0, and the table gets exactly one new
    commit with the same rows as a local-mode build of the same logs.

    It runs on the module's cluster, after the other tests' jobs: the task counts and executor
    logs of those earlier (finished) apps are taken before the job and left out.
    """
    from mtf.config import load_config
    from mtf.delta import read_delta
    from mtf.etl.pipeline import run_build_transitions
    from mtf.sim.job import simulate_to_delta

    assert cluster.alive_workers() == 2
    lake = [f"lake.root={tmp_path}", "sim.n_users=100", "sim.users_per_shard=50",
            "sim.n_days=1", "etl.files_per_day=2"]
    cfg = load_config(None, lake)
    simulate_to_delta(spark, cfg)
    reference = run_build_transitions(spark, cfg)  # local mode, same lake
    trans_path, quarantine_path = cfg.lake.path("transitions"), cfg.lake.path("quarantine")
    next_commit = os.path.join(trans_path, "_delta_log",
                               f"{reference.transitions_version + 1:020d}.json")

    earlier_tasks_1 = _running_tasks(cluster, 1)
    earlier_executors = _executor_logs(cluster, 0)
    job = cluster.submit_async(os.path.join(ROOT, "jobs", "build_transitions.py"), lake,
                               conf=SMALL_JOB_CONF, cwd=ROOT)
    quarantined_at = None  # worker 0's task count when the quarantine commit was logged
    deadline = time.monotonic() + 300
    while True:
        assert job.running(), f"job ended before the kill:\n{job.output()[-5000:]}"
        assert time.monotonic() < deadline, f"job never got going:\n{job.output()[-5000:]}"
        if quarantined_at is None:
            if f"wrote Delta table {quarantine_path} " in job.output():
                quarantined_at = _running_tasks(cluster, 0)
        elif (_running_tasks(cluster, 0) > quarantined_at
              and _running_tasks(cluster, 1) > earlier_tasks_1):
            break
        time.sleep(0.2)
    cluster.kill_worker(0)
    assert not os.path.exists(next_commit), "the transitions commit landed before the kill"
    survivor_tasks = _running_tasks(cluster, 1)

    rc = job.wait(600)
    out = job.output()
    assert rc == 0, out[-5000:]
    killed = re.findall(r"/app-[^/]+/(\d+)/stderr",
                        " ".join(_executor_logs(cluster, 0) - earlier_executors))
    assert len(killed) == 1
    assert re.search(rf"Lost executor {killed[0]}\b", out), out[-5000:]
    assert cluster.alive_workers() == 1
    assert _running_tasks(cluster, 1) > survivor_tasks  # the rest ran on the other worker

    summary = json.loads(out.split("build-transitions summary: ", 1)[1].splitlines()[0])
    assert summary["transitions_version"] == reference.transitions_version + 1
    assert summary["steps"] == reference.steps
    # Exactly one commit for the run (a plain WRITE: the table properties are unchanged) ...
    history = [(h["version"], h["operation"]) for h in spark.sql(
        f"DESCRIBE HISTORY delta.`{trans_path}`").orderBy("version").collect()]
    assert [v for v, _ in history] == list(range(reference.transitions_version + 2))
    assert history[-1] == (reference.transitions_version + 1, "WRITE")
    # ... holding exactly the local-mode build's rows: one transition per request.
    before = _sorted_rows(spark.read.format("delta").option(
        "versionAsOf", reference.transitions_version).load(trans_path))
    after = _sorted_rows(read_delta(spark, trans_path))
    n_requests = read_delta(spark, cfg.lake.path("raw_logs")) \
        .select("request_id").distinct().count()
    assert len(after) == reference.steps == n_requests > 0
    assert after == before
