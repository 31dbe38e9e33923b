"""``mtf deploy``: act on the offline gate's decision (the last step of the daily loop).

Reads the OPE report of run ``ope.run_id`` (``<lake reports>/<run id>/report.json``, written by
``mtf evaluate``). On GO, the policy the gate selected (highest pessimistic value among the GO
candidates, :func:`mtf.ope.rules.select_policy`) is wrapped in the exploration policy
(:func:`mtf.serving.export.export_exploration`) under ``<lake serving>/<run id>/`` and the
pointer ``<lake serving>/current.json`` is switched to it (an atomic rename: serving reads
either the old or the new deployment). On NO-GO nothing changes: the deployed policy keeps
serving. Re-running a run id gives the same files, so a retried task is harmless.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from mtf.errors import UserError

if TYPE_CHECKING:
    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)

CURRENT = "current.json"     # the serving pointer: which deployment serves now
REPORT_JSON = "report.json"


def read_report(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise UserError(f"no OPE report at {path!r}: run `mtf evaluate` with the same "
                        f"ope.run_id first")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def current_deployment(serving_dir: str) -> dict[str, Any] | None:
    """The pointer written by the last GO (None before the first one: the baseline serves)."""
    path = os.path.join(serving_dir, CURRENT)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def selected_policy(report: dict[str, Any]) -> dict[str, Any] | None:
    """The report's selected policy entry (``policies[]``), or None when nothing got GO."""
    name = report.get("selected")
    if name is None:
        return None
    by_name = {p["name"]: p for p in report.get("policies", [])}
    if name not in by_name:
        raise ValueError(f"report {report.get('run_id')!r} selects {name!r}, which is not "
                         f"among its policies {sorted(by_name)}")
    return by_name[name]


def _module(policy: dict[str, Any], k: int):
    import torch

    from mtf.rl.export import POLICY_FILE
    from mtf.serving.export import ConstantPolicy

    if policy["kind"] == "exported":
        path = os.path.join(policy["source"], POLICY_FILE)
        if not os.path.isfile(path):
            raise UserError(f"the selected policy {policy['name']!r} has no {POLICY_FILE} at "
                            f"{path!r} (moved or deleted since the evaluation?)")
        return torch.jit.load(path, map_location="cpu")
    if policy["kind"] == "fixed":
        action = torch.as_tensor(policy["action"], dtype=torch.float32)
        if action.numel() != k:
            raise ValueError(f"fixed policy {policy['name']!r} has {action.numel()} action "
                             f"dimensions, the fusion config {k}")
        return ConstantPolicy(action)
    raise UserError(f"policy {policy['name']!r} of kind {policy['kind']!r} cannot be deployed "
                    f"from a report (only exported and fixed policies can)")


def deploy(cfg: "MtfConfig") -> dict[str, Any]:
    """Apply the gate of run ``cfg.ope.run_id``; returns ``{"action": "deployed" | "kept",
    "policy", "run_id", "path", "current"}``."""
    import numpy as np

    from mtf.serving.export import export_exploration

    run_id = cfg.ope.run_id
    if not run_id:
        raise UserError("mtf deploy needs ope.run_id=<the evaluation's run id> (the report "
                        "directory under the lake's reports)")
    report_path = os.path.join(cfg.lake.path("reports"), run_id, REPORT_JSON)
    report = read_report(report_path)
    serving_dir = cfg.lake.path("serving")
    current = current_deployment(serving_dir)
    chosen = selected_policy(report)
    if chosen is None:
        reasons = "; ".join(f"{d['policy']}: {d['reason']}" for d in report.get("decisions", []))
        keep = current["policy"] if current else "the logging baseline"
        logger.info("NO-GO (%s): keeping %s", reasons or "no candidate", keep)
        return {"action": "kept", "policy": keep, "run_id": run_id, "path": None,
                "current": current}
    out_dir = os.path.join(serving_dir, run_id)
    module = _module(chosen, cfg.fusion.k)
    export_exploration(module, cfg.serving, np.asarray(cfg.fusion.lo), np.asarray(cfg.fusion.hi),
                       out_dir, meta={"policy": chosen["name"], "source": chosen["source"],
                                      "report": report_path, "run_id": run_id,
                                      "feature_names": report.get("meta", {}).get(
                                          "feature_names")},
                       rays=cfg.fusion.action_space == "ray")
    pointer = {"run_id": run_id, "policy": chosen["name"], "path": out_dir,
               "source": chosen["source"], "report": report_path,
               "deployed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = os.path.join(serving_dir, f".{CURRENT}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(pointer, fh, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(serving_dir, CURRENT))
    logger.info("GO: deployed %s (exploration policy %s; previous: %s)", chosen["name"], out_dir,
                current["policy"] if current else "the logging baseline")
    return {"action": "deployed", "policy": chosen["name"], "run_id": run_id, "path": out_dir,
            "current": pointer}


def run(cfg: "MtfConfig") -> int:
    """Entry point of ``mtf deploy``: 0 for a deployment and for a kept one (NO-GO is a normal
    outcome, not a failure); the outcome is printed as one JSON line."""
    print(json.dumps(deploy(cfg), sort_keys=True))
    return 0
