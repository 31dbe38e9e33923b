"""Which versions of which tables consumers still need ("pins").

Two kinds (docs/maintenance.md):

* configured: ``train.table_version`` and ``ope.table_version`` pin the transitions table,
  ``maintenance.pinned_versions`` any lake table (for consumers outside mtf);
* recorded (``maintenance.pin_models``): every training run (``run.json``), checkpoint and
  exported policy (``policy.json``) under ``lake.models`` records the transitions table and
  version it trained on (:class:`mtf.rl.layout.TableLayout`); those younger than
  ``maintenance.pin_models_days`` pin it. The deployed policy (``<lake serving>/current.json``
  -> its export) pins its version whatever its age: it is the one serving.

A record that cannot be read stops the job (it may pin a version): deleting files a model still
needs cannot be undone, a failed maintenance run can simply be repeated.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from mtf.errors import UserError
from mtf.serving.deploy import CURRENT

if TYPE_CHECKING:
    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pin:
    table: str       # the table's path, normalised (:func:`table_key`)
    version: int
    source: str      # who needs it: a config key or a file
    configured: bool  # a config key (a version the table must have) rather than a record


def table_key(path: str) -> str:
    """One spelling per table: ``file:`` URIs and relative local paths become absolute paths;
    other URIs (s3a://...) are kept as given, without a trailing slash."""
    for prefix in ("file://", "file:"):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    if "://" in path:
        return path.rstrip("/")
    return os.path.normpath(os.path.abspath(path))


def configured_pins(cfg: "MtfConfig") -> list[Pin]:
    """The versions the config pins."""
    transitions = table_key(cfg.lake.path("transitions"))
    pins = [Pin(transitions, int(v), key, True)
            for key, v in (("train.table_version", cfg.train.table_version),
                           ("ope.table_version", cfg.ope.table_version)) if v is not None]
    for name, versions in sorted(cfg.maintenance.pinned_versions.items()):
        pins += [Pin(table_key(cfg.lake.path(name)), int(v),
                     f"maintenance.pinned_versions.{name}", True) for v in versions]
    return pins


def recorded_pins(models_dir: str, serving_dir: str, max_age_days: float,
                  now: float | None = None) -> list[Pin]:
    """The versions recorded under ``models_dir`` by records younger than ``max_age_days``
    (0: all), and the deployed policy's version (any age)."""
    now = time.time() if now is None else now
    pins = []
    for path, (table, version) in _records(models_dir):
        age_days = (now - os.path.getmtime(path)) / 86_400
        if max_age_days and age_days > max_age_days:
            continue
        pins.append(Pin(table_key(table), version, path, False))
    deployed = _deployed(serving_dir)
    if deployed is not None:
        path, (table, version) = deployed
        pins.append(Pin(table_key(table), version, f"the deployed policy ({path})", False))
    return pins


def _records(models_dir: str) -> Iterator[tuple[str, tuple[str, int]]]:
    """(file, (table, version)) of every run file, export sidecar and checkpoint of every run
    directory ``<models_dir>/<run id>/``."""
    if not os.path.isdir(models_dir):
        return
    from mtf.rl.checkpoint import CHECKPOINT_DIR, load_checkpoint   # torch: only when needed
    from mtf.rl.export import SIDECAR_FILE
    from mtf.rl.job import EXPORT_DIR
    from mtf.rl.train import RUN_FILE

    for path in sorted(glob.glob(os.path.join(models_dir, "*", RUN_FILE))):
        yield path, _layout_version(_read_json(path).get("layout"), path)
    for path in sorted(glob.glob(os.path.join(models_dir, "*", EXPORT_DIR, SIDECAR_FILE))):
        yield path, _layout_version(_read_json(path), path)
    for path in sorted(glob.glob(os.path.join(models_dir, "*", CHECKPOINT_DIR, "step_*.pt"))):
        try:
            layout = load_checkpoint(path).layout
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint stops the job
            raise _unreadable(path, exc) from exc
        yield path, (layout.table_path, layout.table_version)


def _deployed(serving_dir: str) -> tuple[str, tuple[str, int]] | None:
    """The deployed export's sidecar and its (table, version); None when a fixed policy (or
    nothing) is deployed."""
    pointer = os.path.join(serving_dir, CURRENT)
    if not os.path.isfile(pointer):
        return None
    from mtf.rl.export import SIDECAR_FILE

    source = _read_json(pointer).get("source")
    sidecar = os.path.join(str(source), SIDECAR_FILE) if source else ""
    if not sidecar or not os.path.isfile(sidecar):
        return None
    return sidecar, _layout_version(_read_json(sidecar), sidecar)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(data, dict):
        raise _unreadable(path, ValueError("not a JSON object"))
    return data


def _layout_version(record: Any, path: str) -> tuple[str, int]:
    try:
        return str(record["table_path"]), int(record["table_version"])
    except (TypeError, KeyError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: str, exc: BaseException) -> UserError:
    return UserError(f"cannot read the table version recorded in {path!r} "
                     f"({type(exc).__name__}: {exc}), so it may pin a version VACUUM would "
                     f"delete; repair or remove it, or set maintenance.pin_models=false")
