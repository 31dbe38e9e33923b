"""``mtf evaluate``: conservative OPE of several policies over the transitions table (Spark).

Launch:

    mtf evaluate --conf-file conf/local.yaml ope.n_iterations=5000
    spark-submit --jars "$(mtf jars)" jobs/evaluate.py --conf-file conf/local.yaml

Steps (:func:`evaluate_table`):

1. Pin the transitions table (``ope.table_version`` or the latest) and select ``ope.split``.
2. Resolve the policies: the logging baseline, ``ope.fixed_policies`` and the exported
   policies (``ope.policies`` or every export under the lake's models directory).
3. Collect the split to the driver (subsampled by whole sessions above ``ope.fqe_max_rows``;
   FQE sees at most K x m = 2.6M transitions anyway) and fit plain and conservative FQE per
   policy in this process (torch); with ``ope.fqe_source=stream`` those fits read the whole
   split through petastorm instead (:mod:`mtf.ope.stream`) and the driver's sample only feeds
   the ensemble and the diagnostics.
4. Score every row of the split for every policy in Spark (mapInArrow, models loaded once per
   partition), aggregate per session with window functions, Poisson-bootstrap per partition and
   reduce in Spark; collect only the ``P x (1 + B)`` sums.
5. Estimates, intervals, decisions; with a ``truth`` (:class:`mtf.ope.truth.GroundTruth`, e.g.
   the simulator, passed in by the closed loop or a validation run) the estimates are compared
   with the true values; ``report.json`` + ``report.html`` under ``<lake reports>/<run id>/``.
6. With ``tracking.mlflow`` on, an MLflow run holds the config, the estimates, the decisions
   and the report (:mod:`mtf.tracking`).
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from mtf import __version__
from mtf.configtools import to_dict
from mtf.contract import PROP_ACTION_TASKS, PROP_FEATURE_NAMES
from mtf.delta import delta_snapshot, read_delta, table_properties, table_version
from mtf.errors import MissingInputError, TableVersionError, TableVersionGoneError
from mtf.features import FeatureConfig
from mtf.fusion import FusionConfig
from mtf.ope.config import LOGGING_POLICY, OpeConfig
from mtf.ope.data import (EXPLORE_GROUP, REQUIRED_COLUMNS, SESSION_ID, SPLIT, TransitionArrays,
                          require_columns)
from mtf.ope.evaluate import (assemble, fit_ensemble_policies, fit_policies, initial_share,
                              on_rays, rays_of, scoring_bundle)
from mtf.ope.policies import baseline_action, check_policy, resolve_policies
from mtf.ope.report import write_report
from mtf.ope.results import flat_metrics
from mtf.ope.score import (bootstrap_sums_df, collect_sums, score_transitions,
                           session_statistics_df)
from mtf.ope.truth import compare_with_truth
from mtf.rl.loader import (gone_transitions_version, no_transitions_table,
                           unknown_transitions_version)
from mtf.spark import get_spark
from mtf.tracking import check_available, start_run

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mtf.config import MtfConfig
    from mtf.ope.evaluate import OpeResult, PolicyFits, Rays
    from mtf.ope.policies import TargetPolicy
    from mtf.ope.report import ReportPaths
    from mtf.ope.truth import GroundTruth

logger = logging.getLogger(__name__)


def run(cfg: "MtfConfig") -> int:
    """Entry point of ``mtf evaluate``; returns 0 when the report was written."""
    import torch

    ope = cfg.ope
    ope.resolved_device()   # ope.device=cuda without a GPU stops before any Spark work
    if ope.threads:
        torch.set_num_threads(ope.threads)
    check_available(cfg.tracking)   # a required MLflow that is missing: before Spark starts
    spark = get_spark("mtf-evaluate", cfg.spark)
    result, paths = evaluate_table(spark, cfg, ope)
    go = [d.policy for d in result.decisions if d.go]
    logger.info("OPE report written to %s (json: %s); policies that may go online: %s",
                paths.html, paths.json, go or "none")
    return 0


def _layout(spark: "SparkSession", path: str, version: int, features_cfg: FeatureConfig,
            fusion: FusionConfig) -> tuple[list[str], list[str]]:
    """(feature names, action tasks) of the table version, falling back to the config."""
    props: dict[str, str] = {}
    try:
        props = delta_snapshot(path, version)[2]
    except Exception:  # deltalake cannot read every store; Spark shows the latest properties
        props = table_properties(spark, path)
    try:
        features = json.loads(props[PROP_FEATURE_NAMES])
        tasks = json.loads(props[PROP_ACTION_TASKS])
    except (KeyError, json.JSONDecodeError):
        logger.warning("transitions table %s (version %d) has no valid %s / %s properties; "
                       "assuming the configured features and fusion tasks", path, version,
                       PROP_FEATURE_NAMES, PROP_ACTION_TASKS)
        features, tasks = list(features_cfg.feature_names), list(fusion.names)
    if list(tasks) != list(fusion.names):
        raise ValueError(f"transitions table {path!r} (version {version}) has actions for tasks "
                         f"{tasks} but fusion.tasks is {list(fusion.names)}; fixed policies "
                         f"(the logging baseline) would be misread")
    return list(features), list(tasks)


def split_frame(spark: "SparkSession", path: str, version: int | None,
                split: str) -> tuple["DataFrame", int]:
    """The rows of ``split`` of the pinned table version (``ope.table_version``), and that
    version."""
    from pyspark.sql import functions as F

    try:
        pinned = table_version(spark, path) if version is None else int(version)
        df = read_delta(spark, path, pinned)
    except MissingInputError:
        raise no_transitions_table(path) from None
    except TableVersionGoneError as exc:
        raise gone_transitions_version(path, version, "ope.table_version", exc,
                                       verb="evaluate") from None
    except TableVersionError as exc:
        raise unknown_transitions_version(path, version, exc.latest, "ope.table_version",
                                          verb="evaluate") from None
    require_columns(df.columns, f"transitions table {path!r} (version {pinned})")
    if SPLIT not in df.columns:
        raise ValueError(f"transitions table {path!r} (version {pinned}) has no {SPLIT!r} column")
    return df.where(F.col(SPLIT) == split), pinned


def collect_fit_data(split_df: "DataFrame", n_rows: int, ope: OpeConfig, seed: int,
                     state_dim: int, action_dim: int) -> Any:
    """The split (or a session sample of ``ope.fqe_max_rows`` rows) as TransitionArrays."""
    from pyspark.sql import functions as F

    cols = [*REQUIRED_COLUMNS, *([EXPLORE_GROUP] if EXPLORE_GROUP in split_df.columns else [])]
    df = split_df.select(*cols)
    if n_rows > ope.fqe_max_rows:
        buckets = 1_000_000
        keep = int(buckets * ope.fqe_max_rows / n_rows)
        df = df.where(F.pmod(F.xxhash64(F.lit(seed), F.col(SESSION_ID)), F.lit(buckets)) < keep)
        logger.info("fitting FQE on a session sample of about %d of %d rows", ope.fqe_max_rows,
                    n_rows)
    table = df.toArrow()
    if table.num_rows == 0:
        raise ValueError("the FQE sample of the split is empty")
    return TransitionArrays.from_arrow(table, state_dim, action_dim)


def streamed_fits(split_df: "DataFrame", path: str, version: int, sample: TransitionArrays,
                  policies: Sequence["TargetPolicy"], ope: OpeConfig, *, gamma: float,
                  seed: int, state_dim: int, action_dim: int,
                  rays: "Rays | None" = None) -> dict[str, "PolicyFits"]:
    """Plain and conservative FQE of every policy over the whole split, streamed by petastorm
    from the pinned snapshot (:mod:`mtf.ope.stream`); diagnostics from the driver's sample."""
    from mtf.ope.evaluate import plot_sample, policy_actions, with_actions
    from mtf.ope.fqe import CURVE_STATES
    from mtf.ope.stream import initial_states, split_stats, stream_fits
    from mtf.rl.loader import open_transitions

    table = open_transitions(path, version)
    stats = split_stats(split_df, state_dim, action_dim)
    initial = initial_states(split_df, CURVE_STATES, seed, state_dim)
    logger.info("streaming FQE over %s version %d (%d rows in %d row groups, all splits)",
                path, version, table.n_rows, table.n_row_groups)
    fits = stream_fits(table, policies, ope, stats=stats, initial=initial, gamma=gamma,
                       seed=seed, rays=rays)
    rows = plot_sample(len(sample), ope, seed)
    return {p.name: with_actions(p.name, fits[p.name, "conservative"], fits[p.name, "plain"],
                                 policy_actions(p.module(), sample.state), sample.action, rows)
            for p in policies}


def evaluate_table(spark: "SparkSession", cfg: "MtfConfig", ope: OpeConfig | None = None, *,
                   policies: Sequence["TargetPolicy"] | None = None,
                   out_dir: str | None = None, where: str | None = None,
                   logging_name: str = LOGGING_POLICY, truth: "GroundTruth | None" = None,
                   truth_sessions: int = 0) -> tuple["OpeResult", "ReportPaths"]:
    """Evaluate policies on the lake's transitions table and write the report.

    Args:
        policies: evaluate these instead of resolving them from the config.
        out_dir: report directory; default ``<lake reports>/<ope.run_id or UTC time>``.
        where: an extra Spark SQL filter on the split's rows (e.g. ``"ds <= '2026-01-03'"``).
        logging_name: the policy the go / no-go rule compares with.
        truth: true policy values (e.g. :class:`mtf.sim.truth.SimulatorTruth`) to compare the
            estimates with, over ``truth_sessions`` sessions per policy; None = no comparison.
    Returns:
        (the result, the paths of report.json and report.html).
    """
    from pyspark.sql import functions as F

    ope = ope or cfg.ope
    check_available(cfg.tracking)   # a required MLflow that is missing stops before the work
    t0, started = time.perf_counter(), time.time()
    gamma = cfg.mdp.gamma
    path = cfg.lake.path("transitions")
    split_df, version = split_frame(spark, path, ope.table_version, ope.split)
    if where:
        split_df = split_df.where(where)
    features, tasks = _layout(spark, path, version, cfg.features, cfg.fusion)
    counts = split_df.agg(F.count(F.lit(1)).alias("n"),
                          F.countDistinct(SESSION_ID).alias("s")).first()
    n_rows, n_sessions = int(counts["n"]), int(counts["s"])
    if n_rows == 0:
        raise ValueError(f"transitions table {path!r} (version {version}) has no rows with "
                         f"split={ope.split!r}; set ope.split")
    logger.info("OPE on %s version %d split %r: %d rows, %d sessions", path, version, ope.split,
                n_rows, n_sessions)
    if policies is None:
        policies = resolve_policies(ope, cfg.lake.path("models"),
                                    baseline_action(cfg.fusion, cfg.serving), features, tasks)
    else:
        for p in policies:
            check_policy(p, features, tasks)
    logger.info("evaluating %d policies: %s", len(policies), [p.name for p in policies])

    if ope.fqe_source == "stream" and where:
        raise ValueError("ope.fqe_source=stream fits on the whole split of the pinned table "
                         "version and cannot apply a row filter; use ope.fqe_source=sample")
    rays = rays_of(cfg.fusion)
    fit_data = collect_fit_data(split_df, n_rows, ope, cfg.seed, len(features), len(tasks))
    # the ray parametrisation: canonical logged actions and policies (the streamed fits and
    # the Spark scoring below make the table's actions canonical themselves)
    fit_data, policies = on_rays(fit_data, policies, rays)
    t_collect = time.perf_counter()
    if ope.fqe_source == "stream":
        fits = streamed_fits(split_df, path, version, fit_data, policies, ope,
                             gamma=gamma, seed=cfg.seed, state_dim=len(features),
                             action_dim=len(tasks), rays=rays)
    else:
        fits = fit_policies(fit_data, policies, ope, gamma=gamma, seed=cfg.seed)
    ensemble = fit_ensemble_policies(fit_data, policies, ope, gamma=gamma, seed=cfg.seed)
    t_fit = time.perf_counter()
    bundle = scoring_bundle(policies, fits, ope, len(features), len(tasks), rays)
    scored = score_transitions(split_df, bundle, ope.udf_threads)
    sessions = session_statistics_df(scored, gamma=gamma, max_weight=ope.max_weight)
    sums_df = bootstrap_sums_df(sessions, horizon=ope.wpdis_horizon, n_bootstrap=ope.n_bootstrap,
                                seed=cfg.seed, initial_share=initial_share(ope, n_sessions))
    sums = collect_sums(sums_df, ope.wpdis_horizon)
    t_spark = time.perf_counter()
    missing = [p.name for p in policies if p.name not in sums]
    if missing:
        raise RuntimeError(f"Spark returned no sums for policies {missing}")

    meta = {"path": "spark", "table_path": path, "table_version": version, "split": ope.split,
            "where": where,
            "n_rows": n_rows, "n_sessions": n_sessions, "fqe_source": ope.fqe_source,
            "fit_rows": n_rows if ope.fqe_source == "stream" else len(fit_data),
            "sample_rows": len(fit_data),
            "gamma": gamma, "seed": cfg.seed, "feature_names": features, "action_tasks": tasks,
            "spark_master": spark.sparkContext.master, "mtf_version": __version__,
            "seconds": {"collect": t_collect - t0, "fqe_fit": t_fit - t_collect,
                        "spark_score_aggregate": t_spark - t_fit},
            "fusion": to_dict(cfg.fusion)}
    result = assemble(policies, fits, sums, fit_data, ope, logging_name=logging_name,
                      meta=meta, ensemble=ensemble)
    if truth is not None and truth_sessions > 0:
        values = truth.values({p.name: p.numpy_policy() for p in policies},
                              n_sessions=truth_sessions, seed=cfg.seed + 1)
        result = replace(result, truth=values, validation=compare_with_truth(
            result.results, values, result.decisions, truth.note, reference=logging_name))
    run_id = ope.run_id or (f"ope-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-"
                            f"{uuid.uuid4().hex[:6]}")
    out_dir = out_dir or os.path.join(cfg.lake.path("reports"), run_id)
    result.meta["seconds"]["total"] = time.perf_counter() - t0
    paths = write_report(result, ope, out_dir, run_id=run_id)
    _track(cfg, ope, result, paths, run_id, started=started)
    return result, paths


def _track(cfg: "MtfConfig", ope: OpeConfig, result: "OpeResult", paths: "ReportPaths",
           run_id: str, started: float) -> None:
    """Log the run to MLflow when ``tracking`` asks for it (:mod:`mtf.tracking`): the
    resolved config, every estimate and the gate's decisions, the report."""
    tracker = start_run(cfg.tracking, lake_root=cfg.lake.root, kind="evaluate", name=run_id,
                        config=to_dict(replace(cfg, ope=ope)), start_time=started,
                        tags={"mtf.report_dir": paths.directory, "mtf.gate": ope.gate,
                              "mtf.table_version": str(result.meta["table_version"]),
                              "mtf.go": ",".join(d.policy for d in result.decisions if d.go)
                              or "none"})
    with tracker:
        tracker.log_metrics(flat_metrics(result.results, result.decisions))
        tracker.log_artifact(paths.json, "report")
        tracker.log_artifact(paths.html, "report")
