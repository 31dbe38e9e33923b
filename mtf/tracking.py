"""Optional MLflow run tracking for ``mtf train``, ``mtf evaluate`` and ``mtf pipeline``.

Section ``tracking`` (:class:`TrackingConfig`):

* ``mlflow: false`` (the default): off; mlflow is never imported.
* ``mlflow: auto``: on when the ``mlflow`` package imports, otherwise off with one debug line.
* ``mlflow: true``: on; a job stops at its start with a :class:`mtf.errors.UserError` when
  mlflow is not installed (``pip install -e .[mlflow]``) or no store can be derived.

A run records the resolved config as params (dotted keys, ``train.max_steps``), metrics (each
training record of ``train.log_every`` steps in one batched call; the OPE estimates and gate
decisions; the closed loop's values per day) and artefacts (the exported TorchScript policy,
the OPE report, the loop's summary). The trainings and evaluations that ``mtf pipeline`` runs
are child runs of its run (MLflow's ``mlflow.parentRunId`` tag).

The store is ``tracking.uri`` or, by default, the SQLite database
``<lake.root>/mlruns/mlflow.db`` with artefacts in ``<lake.root>/mlruns/artifacts``: MLflow 3
refuses its file store (``./mlruns``) unless opted in, and SQLite needs no server.

Tracking never fails a job that would otherwise succeed: the first MLflow call that fails logs
a warning and ends tracking for that run; the job goes on. Only rank 0 of a distributed
training creates a run. Everything here talks to one ``MlflowClient`` per run, never to
mlflow's global active-run state.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from mtf import __version__
from mtf.errors import UserError

logger = logging.getLogger(__name__)

STORE_DIR = "mlruns"             # under lake.root: mlflow.db + artifacts/
PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAMS = 100                # MLflow's limits per log_batch call
_MAX_METRICS = 1000
_MAX_PARAM_VALUE = 6000
_BAD_NAME_CHARS = re.compile(r"[^\w./\- :]")   # what MLflow accepts in metric and param keys


@dataclass(frozen=True)
class TrackingConfig:
    """Section ``tracking``: MLflow run tracking of train, evaluate and pipeline runs."""

    mlflow: bool | Literal["auto"] = False   # false | auto (when installed) | true (required)
    uri: str = ""             # "" = sqlite:///<lake.root>/mlruns/mlflow.db (local lake roots)
    experiment: str = "mtf"   # created on first use

    def __post_init__(self) -> None:
        if not self.experiment.strip():
            raise ValueError("tracking.experiment must name an MLflow experiment")


def store_uri(settings: TrackingConfig, lake_root: str) -> str:
    """``tracking.uri``, or the SQLite store under a local ``lake.root``."""
    if settings.uri:
        return settings.uri
    root = lake_root[len("file://"):] if lake_root.startswith("file://") else lake_root
    if "://" in root:
        raise UserError(f"tracking.uri is empty and lake.root {lake_root!r} is not a local "
                        f"path; set tracking.uri (an MLflow server or sqlite:///<file>)")
    return "sqlite:///" + os.path.join(os.path.abspath(root), STORE_DIR, "mlflow.db")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.max_steps": "12"}``: strings as they are, other values
    (numbers, booleans, lists, null) as JSON; an empty mapping is ``"{}"``."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def metric_name(name: str) -> str:
    """``name`` with the characters MLflow rejects in a key replaced by ``_``."""
    return _BAD_NAME_CHARS.sub("_", name)


class Tracker:
    """One MLflow run, or nothing (``Tracker()``): every method is then a no-op.

    Methods never raise: the first failing MLflow call logs a warning and turns the tracker
    off. ``finish`` ends the run once (later calls do nothing); as a context manager it
    finishes with FAILED when the block raises.
    """

    def __init__(self, client: Any = None, run_id: str = "", uri: str = "",
                 experiment_id: str = "") -> None:
        self._client, self.run_id, self.uri = client, run_id, uri
        self.experiment_id = experiment_id

    @property
    def active(self) -> bool:
        return self._client is not None

    def log_params(self, params: Mapping[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(metric_name(k), _truncate(v)) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS):
            self._call("log params", lambda c, part=items[i:i + _MAX_PARAMS]:
                       c.log_batch(self.run_id, params=part))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log ``metrics`` at ``step`` in as few calls as MLflow allows; non-finite values
        (an estimate that does not exist yet) are left out."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, int(step)) for k, v in metrics.items()
                 if v is not None and math.isfinite(float(v))]
        for i in range(0, len(items), _MAX_METRICS):
            self._call("log metrics", lambda c, part=items[i:i + _MAX_METRICS]:
                       c.log_batch(self.run_id, metrics=part))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("set tags", lambda c: c.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Copy a file or a directory (its contents) to the run's artefacts."""
        if os.path.isdir(path):
            self._call(f"log artifacts {path}",
                       lambda c: c.log_artifacts(self.run_id, path, artifact_path))
        else:
            self._call(f"log artifact {path}",
                       lambda c: c.log_artifact(self.run_id, path, artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._call("end run", lambda c: c.set_terminated(self.run_id, status))
        self._client = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish("FAILED" if exc_type is not None else "FINISHED")

    def _call(self, what: str, fn: Any) -> None:
        if self._client is None:
            return
        try:
            fn(self._client)
        except Exception as exc:  # tracking must never fail the job
            logger.warning("MLflow tracking of run %s stopped (%s failed: %s); the job goes "
                           "on untracked", self.run_id, what, exc)
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            self._client = None


# The runs started and not finished in this process, innermost last: a run started while
# another is open (a training inside ``mtf pipeline``) becomes its child.
_ACTIVE: list[Tracker] = []


def start_run(settings: TrackingConfig, *, lake_root: str, kind: str, name: str,
              config: Mapping[str, Any], tags: Mapping[str, str] | None = None,
              enabled: bool = True, start_time: float | None = None) -> Tracker:
    """Start an MLflow run for a ``kind`` job (train, evaluate, pipeline) named ``name``.

    Args:
        lake_root: ``lake.root``; the default store lives under it.
        config: the resolved config as a nested dict (``to_dict(cfg)``), logged as params.
        enabled: False on ranks other than 0 (they only check that mlflow is installed when
            it is required, so every rank stops alike).
        start_time: the run's start (``time.time()``) when it is logged after the work.
    Returns:
        the run's tracker, or an inactive one (tracking off, mlflow missing under ``auto``,
        or the store failed: a warning).
    Raises:
        UserError: ``tracking.mlflow=true`` and mlflow is not installed, or no ``tracking.uri``
            for a lake that is not a local path.
    """
    if settings.mlflow is False:
        return Tracker()
    if not enabled:
        check_available(settings)
        return Tracker()
    try:
        importlib.import_module("mlflow")
    except ImportError:
        if settings.mlflow is True:
            raise UserError(_MISSING) from None
        logger.debug("mlflow is not installed; tracking.mlflow=auto leaves tracking off")
        return Tracker()
    except Exception as exc:   # a broken installation is a tracking error: warn, go on
        logger.warning("mlflow fails to import (%s); this %s run is not tracked", exc, kind)
        return Tracker()
    uri = store_uri(settings, lake_root)
    try:
        tracker = _create_run(uri, settings.experiment, kind, name, dict(tags or {}),
                              start_time)
    except Exception as exc:  # tracking must never fail the job
        logger.warning("MLflow store %s is not usable (%s); this %s run is not tracked",
                       uri, exc, kind)
        return Tracker()
    tracker.log_params(flatten(config))
    if tracker.active:
        _ACTIVE.append(tracker)
    return tracker


def check_available(settings: TrackingConfig) -> None:
    """Raise the UserError of :func:`start_run` early (before a job's work) when
    ``tracking.mlflow=true`` and mlflow is not installed."""
    if settings.mlflow is True and importlib.util.find_spec("mlflow") is None:
        raise UserError(_MISSING)


_MISSING = ("tracking.mlflow=true but mlflow is not installed; install it with "
            "`pip install -e .[mlflow]` or set tracking.mlflow=auto (or false)")


def _create_run(uri: str, experiment: str, kind: str, name: str, tags: dict[str, str],
                start_time: float | None) -> Tracker:
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(uri[len("sqlite:///"):])), exist_ok=True)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = next((t for t in reversed(_ACTIVE) if t.uri == uri), None)
    if parent is not None:
        experiment_id = parent.experiment_id
        tags[PARENT_TAG] = parent.run_id
    else:
        experiment_id = _experiment_id(client, uri, experiment)
    tags = {"mtf.command": kind, "mtf.version": __version__, **tags}
    run = client.create_run(experiment_id, run_name=name, tags=tags,
                            start_time=None if start_time is None else int(start_time * 1000))
    logger.info("MLflow run %s (%s) in experiment %r at %s", run.info.run_id, name, experiment,
                uri)
    return Tracker(client, run.info.run_id, uri, experiment_id)


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """The experiment's id, created on first use (artefacts beside a SQLite store)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            db = os.path.abspath(uri[len("sqlite:///"):])
            location = "file://" + os.path.join(os.path.dirname(db), "artifacts")
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except Exception:  # another job created it meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return str(exp.experiment_id)


def _truncate(value: str) -> str:
    return value if len(value) <= _MAX_PARAM_VALUE else value[:_MAX_PARAM_VALUE - 3] + "..."
