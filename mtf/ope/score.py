"""Row scoring and per-session aggregation: plain functions, and their Spark wrappers.

Row scoring (:func:`score_rows`, pure torch/numpy) runs each target policy and its two fitted Q
networks over a batch of transitions and returns, per policy and row, the log importance ratio
and the Q terms the estimators need (:mod:`mtf.ope.estimators`). The Spark job runs exactly
this function inside ``mapInArrow`` (:func:`score_transitions`): the TorchScript bytes travel
in one broadcast variable and are loaded once per partition, before the partition's first
batch (docs/stack.md: mapInArrow was the fastest way to score torch models).

Spark side, after scoring (:func:`session_statistics_df`): a window per (policy, session)
ordered by step gives t and the running log-weight; a groupBy gives the per-session columns of
:data:`mtf.ope.estimators.RAW_COLUMNS` plus the per-step weights for WPDIS;
:func:`bootstrap_sums_df` turns each partition's sessions into Poisson-bootstrap sums
(:mod:`mtf.ope.bootstrap`), reduced by (policy, replicate). Only those ``P x (1 + B)`` sums are
collected to the driver.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from mtf.ope import data as D
from mtf.ope.estimators import RAW_COLUMNS, derived_stats, n_sum_columns, pad_sessions

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame

logger = logging.getLogger(__name__)

POLICY = "policy"
SCORE_COLUMNS = ("log_ratio", "q_sa", "v_s", "v_next", "cv_s")
SCORED_SCHEMA = ("policy string, session_id string, step int, reward double, "
                 "is_terminal boolean, is_truncated boolean, is_exploit boolean, "
                 "log_ratio double, q_sa double, v_s double, v_next double, cv_s double")
SESSIONS_SCHEMA = "policy string, session_id string, raw array<double>, rho array<double>, " \
                  "num array<double>"
SUMS_SCHEMA = "policy string, replicate int, sums array<double>"
ACTIONS_SCHEMA = "action array<float>"


@dataclass(frozen=True)
class PolicyModels:
    """TorchScript bytes of one target policy and of its fitted Q networks."""

    name: str
    policy: bytes        # raw state (B, S) -> action (B, k)
    q_plain: bytes       # FQE (alpha = 0): Q^(s, a) -> (B,)
    q_conservative: bytes  # conservative FQE: Q^c(s, a) -> (B,)


@dataclass(frozen=True)
class ScoringBundle:
    """Everything a worker needs to score rows; pickled once into a broadcast variable."""

    policies: tuple[PolicyModels, ...]
    target_sigma: float
    state_dim: int
    action_dim: int
    # the ray parametrisation's (lo, hi) (fusion.action_space = "ray"); None: the box
    rays: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)


@dataclass(frozen=True)
class LoadedPolicy:
    name: str
    policy: Any
    q_plain: Any
    q_conservative: Any


def load_bundle(bundle: ScoringBundle) -> list[LoadedPolicy]:
    """Deserialise every module of ``bundle`` (CPU, eval mode)."""
    from mtf.ope.policies import load_module

    return [LoadedPolicy(p.name, load_module(p.policy), load_module(p.q_plain),
                         load_module(p.q_conservative)) for p in bundle.policies]


def score_rows(models: Sequence[LoadedPolicy], state: np.ndarray, next_state: np.ndarray,
               action: np.ndarray, action_logp: np.ndarray, target_sigma: float,
               rays: tuple[Sequence[float], Sequence[float]] | None = None
               ) -> dict[str, dict[str, np.ndarray]]:
    """Per policy: ``log_ratio``, ``q_sa``, ``v_s``, ``v_next``, ``cv_s``, float64 ``(N,)``.

    ``log_ratio = log pi_e(a | s) - action_logp`` (NaN where action_logp is NaN/null),
    ``q_sa = Q^(s, a)``, ``v_s = Q^(s, pi(s))``, ``v_next = Q^(s', pi(s'))``,
    ``cv_s = Q^c(s, pi(s))``. With ``rays`` = (lo, hi) the logged actions are made canonical
    (a logged density only where they were: :func:`mtf.ope.data.logged_on_rays`) and pi_e is the
    face density (the policies must already be canonical: ``ray_policies``).
    """
    import torch

    from mtf.ope.policies import face_target_logpdf, truncated_normal_logpdf

    if rays is not None:
        action, action_logp = D.logged_on_rays(action, action_logp, np.asarray(rays[0]),
                                               np.asarray(rays[1]))
    s, s2, a = _tensor(state), _tensor(next_state), _tensor(action)
    target_logpdf = face_target_logpdf if rays is not None else truncated_normal_logpdf
    out: dict[str, dict[str, np.ndarray]] = {}
    with torch.inference_mode():
        for m in models:
            pi_s = m.policy(s)
            pi_next = m.policy(s2)
            logp_e = target_logpdf(a, pi_s, target_sigma).numpy()
            out[m.name] = {
                "log_ratio": logp_e - np.asarray(action_logp, dtype=np.float64),
                "q_sa": m.q_plain(s, a).double().numpy(),
                "v_s": m.q_plain(s, pi_s).double().numpy(),
                "v_next": m.q_plain(s2, pi_next).double().numpy(),
                "cv_s": m.q_conservative(s, pi_s).double().numpy(),
            }
    return out


def _tensor(x: np.ndarray) -> Any:
    """float32 tensor sharing memory with ``x`` when possible (Arrow views are read-only)."""
    import torch

    a = np.ascontiguousarray(x, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _nullable_float(values: np.ndarray) -> "pa.Array":
    import pyarrow as pa

    mask = np.isnan(values)
    return pa.array(values, type=pa.float64(), mask=mask if mask.any() else None)


def _logp_column(batch: "pa.RecordBatch") -> np.ndarray:
    col = batch.column(batch.schema.get_field_index(D.ACTION_LOGP))
    return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN


def score_arrow_batch(batch: "pa.RecordBatch", models: Sequence[LoadedPolicy],
                      bundle: ScoringBundle) -> "pa.RecordBatch":
    """One Arrow batch of transitions -> long-format scores (``SCORED_SCHEMA``), P rows per row.

    Input columns: session_id, step, state, next_state, action, action_logp, reward,
    is_terminal, is_truncated, explore_group.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from mtf.rl.loader import list_column_to_matrix

    def col(name: str) -> Any:
        return batch.column(batch.schema.get_field_index(name))

    n = batch.num_rows
    scores = score_rows(
        models, list_column_to_matrix(col(D.STATE), bundle.state_dim, D.STATE),
        list_column_to_matrix(col(D.NEXT_STATE), bundle.state_dim, D.NEXT_STATE),
        list_column_to_matrix(col(D.ACTION), bundle.action_dim, D.ACTION),
        _logp_column(batch), bundle.target_sigma, bundle.rays)
    exploit = pc.fill_null(pc.equal(col(D.EXPLORE_GROUP), D.EXPLORE_GROUPS[D.EXPLOIT]), False)
    p = len(models)
    names = pa.array(np.repeat(np.array([m.name for m in models], dtype=object), n),
                     pa.string())

    def rep(arr: Any, typ: "pa.DataType") -> "pa.Array":
        return pa.concat_arrays([arr.cast(typ)] * p)

    cols = [names, rep(col(D.SESSION_ID), pa.string()), rep(col(D.STEP), pa.int32()),
            rep(col(D.REWARD), pa.float64()), rep(col(D.IS_TERMINAL), pa.bool_()),
            rep(col(D.IS_TRUNCATED), pa.bool_()), rep(exploit, pa.bool_())]
    for c in SCORE_COLUMNS:
        cols.append(_nullable_float(np.concatenate([scores[m.name][c] for m in models])))
    return pa.RecordBatch.from_arrays(cols, names=[
        POLICY, D.SESSION_ID, D.STEP, D.REWARD, D.IS_TERMINAL, D.IS_TRUNCATED, "is_exploit",
        *SCORE_COLUMNS])


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _input_columns(df: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F

    D.require_columns(df.columns, "transitions DataFrame")
    group = F.col(D.EXPLORE_GROUP) if D.EXPLORE_GROUP in df.columns \
        else F.lit(None).cast("string")
    return df.select(D.SESSION_ID, F.col(D.STEP).cast("int").alias(D.STEP), D.STATE,
                     D.NEXT_STATE, D.ACTION, F.col(D.ACTION_LOGP).cast("double"),
                     F.col(D.REWARD).cast("double"), D.IS_TERMINAL, D.IS_TRUNCATED,
                     group.alias(D.EXPLORE_GROUP))


def score_transitions(df: "DataFrame", bundle: ScoringBundle, udf_threads: int = 1) -> "DataFrame":
    """Long-format row scores (``SCORED_SCHEMA``) of every policy in ``bundle`` over ``df``."""
    bc = df.sparkSession.sparkContext.broadcast(bundle)

    def score_partition(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        _set_threads(udf_threads)
        shipped: ScoringBundle = bc.value
        models = load_bundle(shipped)            # once per partition, before the first batch
        for batch in batches:
            if batch.num_rows:
                yield score_arrow_batch(batch, models, shipped)

    return _input_columns(df).mapInArrow(score_partition, SCORED_SCHEMA)


def policy_actions_df(df: "DataFrame", policy: bytes, state_dim: int,
                      udf_threads: int = 1) -> "DataFrame":
    """``pi(state)`` for every row of ``df`` (column ``action``); the benchmark's scoring job."""
    import pyarrow as pa

    bc = df.sparkSession.sparkContext.broadcast(policy)

    def score_partition(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        import torch

        from mtf.ope.policies import load_module
        from mtf.rl.loader import list_column_to_matrix

        _set_threads(udf_threads)
        module = load_module(bc.value)
        for batch in batches:
            states = list_column_to_matrix(batch.column(0), state_dim, D.STATE)
            with torch.inference_mode():
                act = module(_tensor(states)).numpy()
            k = act.shape[1]
            values = pa.array(act.reshape(-1), pa.float32())
            offsets = pa.array(np.arange(0, act.shape[0] * k + 1, k, dtype=np.int32))
            yield pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(offsets, values)],
                                             names=["action"])

    return df.select(D.STATE).mapInArrow(score_partition, ACTIONS_SCHEMA)


def session_statistics_df(scored: "DataFrame", *, gamma: float,
                          max_weight: float) -> "DataFrame":
    """Per (policy, session): ``raw`` (RAW_COLUMNS order), ``rho`` and ``num`` per step.

    Spark twin of :func:`mtf.ope.estimators.session_statistics` (same formulas, same order of
    the running sum); ``rho`` = rho_{0:t} and ``num`` = gamma^t rho_{0:t} r_t in step order.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_session = Window.partitionBy(POLICY, D.SESSION_ID)
    ordered = by_session.orderBy(D.STEP)
    running = ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    log_max = math.log(max_weight)
    t = F.col("t")
    ok = F.col("eligible") == 1
    rows = (scored
            .withColumn("t", F.row_number().over(ordered) - 1)
            .withColumn("eligible", F.min(F.col("log_ratio").isNotNull().cast("int"))
                        .over(by_session))
            .withColumn("log_w", F.sum("log_ratio").over(running))
            .withColumn("rho", F.when(ok, F.exp(F.least(F.col("log_w"), F.lit(log_max))))
                        .otherwise(F.lit(0.0)))
            .withColumn("clipped", (ok & (F.col("log_w") > F.lit(log_max))).cast("double"))
            .withColumn("disc", F.pow(F.lit(gamma), t.cast("double")))
            .withColumn("num", F.col("disc") * F.col("rho") * F.col(D.REWARD))
            .withColumn("dr_term", F.col("disc") * F.col("rho") * (
                F.col(D.REWARD) + F.lit(gamma) * (1.0 - F.col(D.IS_TERMINAL).cast("double"))
                * F.col("v_next") - F.col("q_sa"))))
    agg = rows.groupBy(POLICY, D.SESSION_ID).agg(
        F.min_by("v_s", "t").alias("v0"),
        F.min_by("cv_s", "t").alias("cv0"),
        F.max("eligible").cast("double").alias("eligible"),
        F.sum("num").alias("pdis"),
        F.sum("dr_term").alias("dr_correction"),
        F.max_by("rho", "t").alias("rho_last"),
        F.min_by("rho", "t").alias("rho_first"),
        F.count(F.lit(1)).cast("double").alias("n_rows"),
        F.sum("clipped").alias("n_clipped"),
        F.max(F.col(D.IS_TRUNCATED).cast("double")).alias("truncated"),
        F.sum(F.col("disc") * F.col(D.REWARD)).alias("mc_return"),
        F.max(F.col("is_exploit").cast("double")).alias("exploit"),
        F.array_sort(F.collect_list(F.struct("t", "rho", "num"))).alias("seq"))
    return agg.select(
        POLICY, D.SESSION_ID, F.array(*[F.col(c).cast("double") for c in RAW_COLUMNS]).alias("raw"),
        F.transform("seq", lambda x: x["rho"]).alias("rho"),
        F.transform("seq", lambda x: x["num"]).alias("num"))


def sessions_to_sums(batch: "pa.RecordBatch", *, horizon: int, n_bootstrap: int, seed: int,
                     initial_share: float) -> dict[str, np.ndarray]:
    """Bootstrap sums ``(1 + B, m)`` per policy of one batch of session rows (SESSIONS_SCHEMA)."""
    import pyarrow as pa

    from mtf.ope.bootstrap import initial_state_mask, session_hashes, weighted_sums

    policies = np.asarray(batch.column(0).to_pylist(), dtype=object)
    out: dict[str, np.ndarray] = {}
    for name in np.unique(policies):
        idx = pa.array(np.flatnonzero(policies == name))
        sub = batch.take(idx)
        ids = sub.column(1).to_pylist()
        raw = sub.column(2).flatten().to_numpy(zero_copy_only=False).reshape(
            sub.num_rows, len(RAW_COLUMNS))
        rho_col, num_col = sub.column(3), sub.column(4)
        lengths = np.diff(rho_col.offsets.to_numpy())
        rho = rho_col.flatten().to_numpy(zero_copy_only=False)
        num = num_col.flatten().to_numpy(zero_copy_only=False)
        num_p, den_p = pad_sessions(rho, num, lengths, horizon)
        hashes = session_hashes(ids)
        stats = derived_stats(raw, num_p, den_p, initial_state_mask(hashes, initial_share, seed))
        out[str(name)] = weighted_sums(hashes, stats, n_bootstrap, seed)
    return out


def bootstrap_sums_df(sessions: "DataFrame", *, horizon: int, n_bootstrap: int, seed: int,
                      initial_share: float) -> "DataFrame":
    """Poisson-bootstrap sums per (policy, replicate), reduced over partitions in Spark.

    Replicate 0 is the full-data sum; 1..B the bootstrap replicates.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F

    m = n_sum_columns(horizon)

    def partition_sums(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        total: dict[str, np.ndarray] = {}
        for batch in batches:
            for name, sums in sessions_to_sums(batch, horizon=horizon, n_bootstrap=n_bootstrap,
                                               seed=seed, initial_share=initial_share).items():
                total[name] = total[name] + sums if name in total else sums
        for name, sums in total.items():
            r = sums.shape[0]
            offsets = pa.array(np.arange(0, r * m + 1, m, dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [pa.array([name] * r, pa.string()), pa.array(np.arange(r, dtype=np.int32)),
                 pa.ListArray.from_arrays(offsets, pa.array(sums.reshape(-1), pa.float64()))],
                names=[POLICY, "replicate", "sums"])

    partial = sessions.select(POLICY, D.SESSION_ID, "raw", "rho", "num") \
        .mapInArrow(partition_sums, SUMS_SCHEMA)
    zero = F.array_repeat(F.lit(0.0), m)
    return partial.groupBy(POLICY, "replicate").agg(
        F.aggregate(F.collect_list("sums"), zero,
                    lambda acc, x: F.zip_with(acc, x, lambda a, b: a + b)).alias("sums"))


def collect_sums(sums_df: "DataFrame", horizon: int) -> dict[str, np.ndarray]:
    """Driver side: ``{policy: (1 + B, m)}`` ordered by replicate."""
    table = sums_df.toArrow()
    m = n_sum_columns(horizon)
    policies = np.asarray(table.column(POLICY).to_pylist(), dtype=object)
    reps = table.column("replicate").to_numpy()
    values = table.column("sums").combine_chunks().flatten().to_numpy(
        zero_copy_only=False).reshape(table.num_rows, m)
    out = {}
    for name in np.unique(policies):
        sel = np.flatnonzero(policies == name)
        order = sel[np.argsort(reps[sel])]
        if not np.array_equal(reps[order], np.arange(order.size)):
            raise RuntimeError(f"bootstrap sums of policy {name!r} miss replicates")
        out[str(name)] = values[order]
    return out
