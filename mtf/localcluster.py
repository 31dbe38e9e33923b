"""A real Spark standalone cluster on 127.0.0.1: one master and N workers as separate processes.

Used by the tests (and handy for trying the spark-submit commands of the README) to prove that
jobs run on a cluster exactly as they would on a real one: separate executor JVMs and Python
workers, jars and config shipped by spark-submit, no shared SparkSession.

Example::

    with StandaloneCluster(n_workers=2) as cluster:
        cluster.submit("jobs/build_transitions.py", ["--conf-file", "conf/local.yaml"])

Fault injection: ``submit_async`` starts spark-submit in the background, ``executor_log`` shows
what a worker's executors are doing, and ``kill_worker`` takes a worker down mid-job::

    with StandaloneCluster(n_workers=2) as cluster:
        job = cluster.submit_async("jobs/build_transitions.py", ["lake.root=/tmp/lake"])
        ...                       # wait for "Running task" in cluster.executor_log(0)
        cluster.kill_worker(0)
        assert job.wait(600) == 0, job.output()
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import TracebackType
from typing import Sequence

from mtf.spark import delta_jars

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spark_home() -> str:
    import pyspark
    return os.path.dirname(pyspark.__file__)


class StandaloneCluster:
    """Start/stop a local standalone cluster; always tears down what it started."""

    def __init__(self, n_workers: int = 2, cores_per_worker: int = 1,
                 memory_per_worker: str = "1g", start_timeout_s: float = 90.0) -> None:
        self.n_workers = n_workers
        self.cores_per_worker = cores_per_worker
        self.memory_per_worker = memory_per_worker
        self.start_timeout_s = start_timeout_s
        self.port = _free_port()
        self.ui_port = _free_port()
        self.master_url = f"spark://127.0.0.1:{self.port}"
        self.workdir = tempfile.mkdtemp(prefix="mtf-standalone-")
        self.master: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.submissions: list[Submission] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"SPARK_HOME": spark_home(), "PYSPARK_PYTHON": sys.executable,
                    "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"})
        env.pop("PYSPARK_GATEWAY_PORT", None)
        return env

    def _spark_class(self, cls: str, args: Sequence[str], log_name: str) -> subprocess.Popen[bytes]:
        cmd = [os.path.join(spark_home(), "bin", "spark-class"), cls, *args]
        log = open(os.path.join(self.workdir, log_name), "wb")
        # New session: kill() can take down the JVM and anything it forked.
        return subprocess.Popen(cmd, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start(self) -> "StandaloneCluster":
        self.master = self._spark_class(
            "org.apache.spark.deploy.master.Master",
            ["--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port)],
            "master.log")
        for i in range(self.n_workers):
            self.add_worker(i)
        self.wait_for_workers(self.n_workers)
        logger.info("standalone cluster up at %s with %d workers", self.master_url,
                    self.n_workers)
        return self

    def add_worker(self, i: int) -> None:
        work = os.path.join(self.workdir, f"worker{i}")
        os.makedirs(work, exist_ok=True)
        self.workers.append(self._spark_class(
            "org.apache.spark.deploy.worker.Worker",
            [self.master_url, "--host", "127.0.0.1", "--cores", str(self.cores_per_worker),
             "--memory", self.memory_per_worker, "--work-dir", work, "--webui-port", "0"],
            f"worker{i}.log"))

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/",
                                        timeout=2) as resp:
                state = json.load(resp)
        except OSError:
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def wait_for_workers(self, n: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.master is not None and self.master.poll() is not None:
                raise RuntimeError(f"Spark master exited; see {self.workdir}/master.log:\n"
                                   + self.log("master.log")[-2000:])
            if self.alive_workers() >= n:
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"standalone cluster: {n} workers not alive after "
                           f"{self.start_timeout_s}s; logs in {self.workdir}")

    def kill_worker(self, i: int) -> None:
        """Kill worker ``i`` and its executors hard (SIGKILL), as a machine failure would."""
        proc = self.workers[i]
        _kill_group(proc)

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.workdir, name), errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def executor_log(self, i: int) -> str:
        """stderr of every executor worker ``i`` has launched (all apps), concatenated.

        A worker keeps each executor's output in ``<work-dir>/<app-id>/<executor-id>/stderr``;
        Spark's default log4j settings write ``Running task ...`` lines there, so this shows
        whether (and which) tasks ran on that worker.
        """
        text = []
        pattern = os.path.join(self.workdir, f"worker{i}", "app-*", "*", "stderr")
        for path in sorted(glob.glob(pattern)):
            with open(path, errors="replace") as fh:
                text.append(fh.read())
        return "".join(text)

    def stop(self) -> None:
        procs = [s.proc for s in self.submissions]
        for proc in [*procs, *self.workers, *([self.master] if self.master else [])]:
            _kill_group(proc)
        self.submissions = []
        self.workers = []
        self.master = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    # -- submitting ------------------------------------------------------------------------
    def submit_command(self, app: str, app_args: Sequence[str] = (),
                       conf: dict[str, str] | None = None) -> list[str]:
        cmd = [os.path.join(spark_home(), "bin", "spark-submit"), "--master", self.master_url,
               "--jars", ",".join(delta_jars()),
               "--conf", f"spark.pyspark.python={sys.executable}",
               "--conf", "spark.ui.enabled=false",
               "--executor-memory", "768m",
               "--total-executor-cores", str(self.n_workers * self.cores_per_worker)]
        for key, value in (conf or {}).items():
            cmd += ["--conf", f"{key}={value}"]
        return [*cmd, app, *app_args]

    def submit(self, app: str, app_args: Sequence[str] = (), conf: dict[str, str] | None = None,
               timeout_s: float = 600.0,
               cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """spark-submit ``app`` to this cluster and wait; raises with the output on failure."""
        cmd = self.submit_command(app, app_args, conf)
        proc = subprocess.run(cmd, env=self._env(), capture_output=True, text=True,
                              timeout=timeout_s, cwd=cwd)
        if proc.returncode != 0:
            raise RuntimeError(f"spark-submit failed ({proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return proc

    def submit_async(self, app: str, app_args: Sequence[str] = (),
                     conf: dict[str, str] | None = None,
                     cwd: str | None = None) -> "Submission":
        """spark-submit ``app`` to this cluster in the background and return at once.

        Same command as :meth:`submit` (client deploy mode: the driver runs in the spark-submit
        process on this machine, not on a worker). Its stdout and stderr go to a file in the
        cluster's work dir; use the returned :class:`Submission` to wait for it and read them.
        A submission still running when the cluster stops is killed with it.
        """
        cmd = self.submit_command(app, app_args, conf)
        log_path = os.path.join(self.workdir, f"submit{len(self.submissions)}.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                    cwd=cwd, start_new_session=True)
        submission = Submission(cmd, proc, log_path)
        self.submissions.append(submission)
        return submission


class Submission:
    """A spark-submit started by :meth:`StandaloneCluster.submit_async`."""

    def __init__(self, cmd: list[str], proc: subprocess.Popen[bytes], log_path: str) -> None:
        self.cmd = cmd
        self.proc = proc
        self.log_path = log_path

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float = 600.0) -> int:
        """Wait for spark-submit to exit and return its exit code; on timeout, kill it and raise
        ``subprocess.TimeoutExpired``."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            raise

    def output(self) -> str:
        """spark-submit's stdout and stderr so far (the driver's logs and prints)."""
        with open(self.log_path, errors="replace") as fh:
            return fh.read()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
