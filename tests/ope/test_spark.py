"""The Spark job: one run of ``mtf.ope.job.run`` on a tiny Delta table, checked against the
single-process path, plus the mapInArrow body tested without Spark."""
from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import types
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtf.config import LakeConfig, MtfConfig
from mtf.fusion import FusionConfig, TaskSpec
from mtf.ope.config import REPORTED_ESTIMATORS, OpeConfig
from mtf.ope.evaluate import evaluate_arrays, fit_policies, scoring_bundle
from mtf.ope.policies import baseline_action, fixed_policy, resolve_policies
from mtf.ope.score import load_bundle, score_arrow_batch, score_rows
from tests.ope.tables import arrays_to_frame, sessions, write_delta_table, write_export

FEATURES = ["f0", "f1", "f2"]
OPE = OpeConfig(n_iterations=60, lr=3e-3, batch_size=64, hidden=(16,), target_update_every=20,
                log_every=20, n_bootstrap=40, n_initial_states=100, threads=1,
                fixed_policies={"c": (0.3, -0.2)})


def with_ope(cfg: MtfConfig, ope: OpeConfig) -> Any:
    """``cfg`` with an ``ope`` section (until MtfConfig has the field, a read-only view)."""
    if "ope" in {f.name for f in dataclasses.fields(cfg)}:
        return dataclasses.replace(cfg, ope=ope)  # type: ignore[call-arg]
    return types.SimpleNamespace(**{f.name: getattr(cfg, f.name)
                                    for f in dataclasses.fields(cfg)}, ope=ope)


@pytest.fixture(scope="module")
def job(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two table versions (the job must read the pinned first one), an exported policy, and
    one run of the job."""
    from mtf.ope.job import run

    torch.set_num_threads(1)
    root = str(tmp_path_factory.mktemp("ope-lake"))
    path = os.path.join(root, "transitions")
    data = sessions(160, seed=5)
    frame = arrays_to_frame(data, split="test")
    train = arrays_to_frame(sessions(40, seed=6), split="train")   # must be ignored
    import pandas as pd

    version = write_delta_table(spark, path, pd.concat([frame, train]), FEATURES)
    newer = write_delta_table(spark, path, arrays_to_frame(sessions(20, seed=7)), FEATURES,
                              n_files=1, append=True)   # 20 more test sessions, not pinned
    assert newer > version
    write_export(os.path.join(root, "models", "bc-run1", "export"))
    cfg = MtfConfig(lake=LakeConfig(root=root),
                    fusion=FusionConfig(tasks=(TaskSpec("click"), TaskSpec("like"))))
    ope = dataclasses.replace(OPE, table_version=version, run_id="test-run")
    assert run(with_ope(cfg, ope)) == 0
    with open(os.path.join(root, "reports", "test-run", "report.json")) as fh:
        report = json.load(fh)
    return types.SimpleNamespace(root=root, cfg=cfg, ope=ope, data=data, report=report,
                                 version=version)


def test_job_reads_the_pinned_version_and_the_split(job) -> None:
    t = job.report["table"]
    assert (t["table_version"], t["split"], t["n_rows"], t["n_sessions"]) == \
        (job.version, "test", len(job.data), 160)


def test_job_evaluates_logging_fixed_and_exported_policies(job) -> None:
    assert [p["name"] for p in job.report["policies"]] == ["logging", "c", "bc"]
    assert [p["kind"] for p in job.report["policies"]] == ["fixed", "fixed", "exported"]
    assert [d["policy"] for d in job.report["decisions"]] == ["c", "bc"]
    for r in job.report["results"]:
        assert set(r["estimates"]) == set(REPORTED_ESTIMATORS)   # the ensemble is on by default
        assert r["diagnostics"]["n_sessions_excluded_is"] > 0   # exploit sessions
        assert r["diagnostics"]["n_truncated_sessions"] > 0


def test_spark_and_single_process_paths_agree(job) -> None:
    """Same data, same seed: the single-process path refits identical Q networks and must
    reproduce every estimate, interval and diagnostic of the Spark job's report."""
    policies = resolve_policies(job.ope, job.cfg.lake.path("models"),
                                baseline_action(job.cfg.fusion, job.cfg.serving), FEATURES,
                                ["click", "like"])
    local = evaluate_arrays(job.data, policies, job.ope, gamma=0.95, seed=job.cfg.seed)
    spark_results = {r["policy"]: r for r in job.report["results"]}
    assert [r.policy for r in local.results] == list(spark_results)
    for r in local.results:
        s = spark_results[r.policy]
        for est, e in r.estimates.items():
            got = s["estimates"][est]
            for field in ("value", "ci_low", "ci_high", "std_err"):
                assert got[field] == pytest.approx(getattr(e, field), rel=1e-6, abs=1e-9), \
                    (r.policy, est, field)
        for key, v in r.diagnostics.items():
            assert s["diagnostics"][key] == pytest.approx(v, rel=1e-6, abs=1e-6), key
    for d in local.decisions:
        got = next(x for x in job.report["decisions"] if x["policy"] == d.policy)
        assert got["go"] == d.go and got["diff_low"] == pytest.approx(d.diff_low, rel=1e-6)


def test_report_html_has_the_decision_tables_and_plots(job) -> None:
    html = open(os.path.join(job.root, "reports", "test-run", "report.html")).read()
    for text in ("Decision", "Conservative FQE (decision)", "ESS (trajectory)", "bc", "c",
                 "How to read this report"):
        assert text in html
    assert html.count("data:image/png;base64,") == 4     # no ground truth in this run
    assert ("GO" in html) and glob.glob(os.path.join(job.root, "reports", "test-run", "*")) == \
        sorted(glob.glob(os.path.join(job.root, "reports", "test-run", "report.*")))


def test_the_mapinarrow_body_equals_score_rows_without_spark() -> None:
    torch.set_num_threads(1)
    data = sessions(30, seed=9)
    ope = dataclasses.replace(OPE, n_iterations=5)
    policies = [fixed_policy("logging", [0.0, 0.0]), fixed_policy("c", [0.5, 0.5])]
    fits = fit_policies(data, policies, ope, gamma=0.9, seed=0)
    bundle = scoring_bundle(policies, fits, ope, 3, 2)
    models = load_bundle(bundle)
    frame = arrays_to_frame(data)
    batch = pa.RecordBatch.from_pandas(frame.assign(
        state=[np.asarray(x, np.float32) for x in frame["state"]],
        next_state=[np.asarray(x, np.float32) for x in frame["next_state"]],
        action=[np.asarray(x, np.float32) for x in frame["action"]]), preserve_index=False)
    out = score_arrow_batch(batch, models, bundle)
    want = score_rows(models, data.state, data.next_state, data.action, data.action_logp, 0.1)
    n = len(data)
    assert out.num_rows == 2 * n
    assert out.column("policy").to_pylist() == ["logging"] * n + ["c"] * n
    for j, name in enumerate(("logging", "c")):
        part = out.slice(j * n, n)
        for col in ("q_sa", "v_s", "v_next", "cv_s"):
            np.testing.assert_allclose(part.column(col).to_numpy(), want[name][col], rtol=1e-6)
        lr = part.column("log_ratio")
        assert lr.null_count == int(np.isnan(data.action_logp).sum())
        np.testing.assert_allclose(lr.to_numpy(zero_copy_only=False), want[name]["log_ratio"],
                                   rtol=1e-9)
    assert out.column("is_exploit").to_pylist() == list(data.is_exploit) * 2


class KnownTruth:
    """A ground truth with hand-set values (mtf.ope.truth.GroundTruth), recording its calls."""

    note = "hand-set true values"

    def __init__(self, means: dict[str, float]) -> None:
        self.means, self.calls = means, []

    def values(self, policies, n_sessions, seed):
        self.calls.append((sorted(policies), n_sessions, seed))
        for policy in policies.values():   # numpy policies: raw states -> actions in [-1, 1]
            actions = policy(np.zeros((4, len(FEATURES)), np.float32))
            assert actions.shape == (4, 2) and np.all(np.abs(actions) <= 1.0)
        return {name: {"mean": m, "ci_low": m - 0.1, "ci_high": m + 0.1, "std_err": 0.05,
                       "n_sessions": n_sessions, "mean_session_length": 3.0, "ci_level": 0.95}
                for name, m in self.means.items()}


def test_closed_loop_entry_point_names_the_reference_and_filters_days(spark, job) -> None:
    from mtf.ope.gate import evaluate_policies

    cfg = with_ope(job.cfg, job.ope)
    export = os.path.join(job.root, "models", "bc-run1", "export")
    out_dir = os.path.join(job.root, "reports", "loop-day")
    truth = KnownTruth({"baseline": 1.0, "bcq-new": 1.5})
    out = evaluate_policies(spark, cfg, {"baseline": None, "bcq-new": export},
                            day=datetime.date(2026, 1, 3), out_dir=out_dir, truth=truth,
                            truth_sessions=30)
    assert set(out["estimates"]) == {"baseline", "bcq-new"}
    assert set(out["decisions"]) == {"bcq-new"} and isinstance(out["decisions"]["bcq-new"], bool)
    assert out["table_version"] == job.version
    with open(out["report_json"]) as fh:
        report = json.load(fh)
    # sessions start one hour apart from 2026-01-01 (tables.arrays_to_frame): 3 of ~7 days
    assert 0 < report["table"]["n_rows"] < len(job.data)
    assert report["meta"]["where"] == "ds <= DATE'2026-01-03'"
    # The ground truth passed in reaches the report, compared against the named reference.
    assert truth.calls == [(["baseline", "bcq-new"], 30, cfg.seed + 1)]
    assert {k: v["mean"] for k, v in report["truth"].items()} == {"baseline": 1.0, "bcq-new": 1.5}
    validation = report["validation"]
    assert validation["policies"] == ["baseline", "bcq-new"] and validation["truth"] == [1.0, 1.5]
    assert validation["note"] == "hand-set true values"
    (decision,) = validation["decisions"]
    assert decision["policy"] == "bcq-new" and decision["true_diff"] == pytest.approx(0.5)
    assert decision["true_go"] is True and decision["go"] == out["decisions"]["bcq-new"]
    with pytest.raises(ValueError, match="exactly one logging baseline"):
        evaluate_policies(spark, cfg, {"a": export})
