"""The offline gate: named policies in, pessimistic values, go / no-go and a choice out.

What the closed loop (:mod:`mtf.loop.closed_loop`) and a daily job call before deploying;
:func:`mtf.ope.rules.select_policy` picks among several candidates (seeds, checkpoints,
settings) without a simulator.

Example:
    >>> out = evaluate_policies(spark, cfg, {"baseline": None, "bcq-2026-01-03": export_dir},
    ...                         day=dt.date(2026, 1, 3), out_dir="lake/reports/ope-2026-01-03")
    >>> out["decisions"]["bcq-2026-01-03"], out["estimates"]["bcq-2026-01-03"]
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

from mtf.ope.job import evaluate_table
from mtf.ope.policies import baseline_action, fixed_policy, load_exported
from mtf.ope.rules import pessimistic_value, select_policy

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from mtf.config import MtfConfig
    from mtf.ope.results import Decision, PolicyEstimates
    from mtf.ope.truth import GroundTruth


def evaluate_policies(spark: "SparkSession", cfg: "MtfConfig",
                      policies: Mapping[str, str | None], *, day: dt.date | None = None,
                      out_dir: str | None = None, truth: "GroundTruth | None" = None,
                      truth_sessions: int = 0) -> dict[str, Any]:
    """Conservative OPE (+ reference estimators, report) of ``policies`` on the test split.

    Args:
        policies: name -> export directory (``policy.pt`` + ``policy.json``), or None for the
            logging baseline (the decision's reference; exactly one is required).
        day: evaluate the rows with ``ds <= day`` (the data available on that day); None = all.
        out_dir: report directory (default under the lake's reports).
        truth, truth_sessions: optional true values to compare with (see ``evaluate_table``).
    Returns:
        ``{"estimates": {name: V}, "pessimistic": {name: value the gate ranks by},
        "lower_bounds": {candidate: lower bound of V - V(baseline)}, "decisions": {candidate:
        go}, "chosen": the GO candidate with the highest pessimistic value or None,
        "reasons": {candidate: str}, "warnings": {candidate: [str]}, "gate": ope.gate,
        "report_json": path, "report_html": path, "table_version": int}``; V is the gate's
        estimator (``ope.gate``: conservative FQE or the FQE ensemble).
    """
    refs = [name for name, path in policies.items() if path is None]
    if len(refs) != 1:
        raise ValueError(f"evaluate_policies needs exactly one logging baseline (a name mapped "
                         f"to None) as the decision's reference, got {refs}")
    ope = cfg.ope
    targets = [fixed_policy(name, baseline_action(cfg.fusion, cfg.serving), "logging baseline")
               if path is None else load_exported(path, name=name)
               for name, path in policies.items()]
    if out_dir is not None:
        ope = replace(ope, run_id=os.path.basename(os.path.normpath(out_dir)))
    where = f"ds <= DATE'{day.isoformat()}'" if day is not None else None
    result, paths = evaluate_table(spark, cfg, ope, policies=targets, out_dir=out_dir,
                                   where=where, logging_name=refs[0], truth=truth,
                                   truth_sessions=truth_sessions)
    return {
        "estimates": {r.policy: r.estimates[ope.gate].value for r in result.results},
        "pessimistic": {r.policy: pessimistic_value(r, ope.gate) for r in result.results},
        "lower_bounds": {d.policy: d.diff_low for d in result.decisions},
        "decisions": {d.policy: d.go for d in result.decisions},
        "chosen": select_policy(result.results, result.decisions),
        "gate": ope.gate,
        "reasons": {d.policy: d.reason for d in result.decisions},
        "warnings": {d.policy: list(d.warnings) for d in result.decisions},
        "report_json": paths.json, "report_html": paths.html,
        "table_version": result.meta["table_version"],
    }
