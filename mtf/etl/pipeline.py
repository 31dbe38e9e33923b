"""The transition build: a pure chain of stages, and the one function that does the I/O.

Pure (``DataFrame -> DataFrame``, no reads, writes or actions):

* :func:`build_requests`: validated impressions of the context days -> one row per request of
  the output days with session, step, state (non-profile part), next state, flags, action and
  reward.
* :func:`finish_transitions`: + profile features, float arrays, decoded explore group.

I/O: :func:`run_build_transitions` reads the logs, checks the schema (raising before anything is
written), writes the quarantine table, builds and writes the transitions (one Delta commit), and
returns a :class:`JobSummary`. docs/etl.md describes the rules and the incremental runs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtf.configtools import to_dict
from mtf.etl import schema as S
from mtf.etl.config import EtlConfig, parse_ds
from mtf.etl.sessionize import SESSION_START_TS, sessionize
from mtf.etl.state import (IS_SENTINEL, STATE_CORE, add_impression_history, add_profile_state,
                           add_state_core)
from mtf.etl.steps import (APP_SID_HASH, EXPLORE_IDX, FEEDBACK, action_array, action_col,
                           add_impression_feedback, add_reward, explore_group_col, fb_col,
                           to_requests)
from mtf.etl.transitions import (NEXT_CORE, add_next_state, add_sentinels, add_split,
                                 fix_previous_rows, select_transitions, zeros)
from mtf.etl.validate import REASONS, RowRules, add_reject_reason
from mtf.features import FEATURE_VERSION

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)

UTC = dt.timezone.utc
# percentile_approx accuracy for the train/test cutoff: exact up to this many sessions starting
# in a run, relative rank error 1/SPLIT_ACCURACY beyond.
SPLIT_ACCURACY = 100_000


@dataclass(frozen=True)
class RunWindow:
    """The days a run (re)builds and the days it reads.

    ``start``..``end`` (inclusive) are the output days. The run reads ``context_start``..``end``
    (``context_start`` None = from the first day in the logs): the days before ``start`` only
    provide history and the beginning of sessions still open at ``start``. ``data_end`` is
    00:00 UTC after ``end``.
    """

    start: dt.date
    end: dt.date
    context_start: dt.date | None
    full_rebuild: bool
    session_gap_s: int

    @classmethod
    def resolve(cls, etl: EtlConfig, first_ds: dt.date | None, last_ds: dt.date | None
                ) -> "RunWindow":
        """From the config; ``first_ds``/``last_ds``: the logs' day range (full rebuild)."""
        if etl.is_full_rebuild:
            if first_ds is None or last_ds is None:
                raise ValueError("the impression logs hold no rows with a ds; nothing to build")
            return cls(first_ds, last_ds, None, True, etl.session_gap_s)
        start = parse_ds(etl.start_ds, "etl.start_ds")
        end = parse_ds(etl.end_ds, "etl.end_ds") if etl.end_ds else start
        context = start - dt.timedelta(days=etl.lookback_days) if etl.lookback_days else None
        return cls(start, end, context, False, etl.session_gap_s)

    @property
    def data_end(self) -> dt.datetime:
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time(), tzinfo=UTC)

    @property
    def previous_day(self) -> dt.date:
        return self.start - dt.timedelta(days=1)

    @property
    def boundary_from(self) -> dt.datetime:
        """Rows of the previous day at/after this instant may have been written truncated."""
        start = dt.datetime.combine(self.start, dt.time(), tzinfo=UTC)
        return start - dt.timedelta(seconds=self.session_gap_s)

    def days_predicate(self) -> str:
        return f"{S.DS} >= DATE'{self.start.isoformat()}' AND {S.DS} <= DATE'{self.end.isoformat()}'"

    def previous_rows_predicate(self) -> str:
        ts = self.boundary_from.strftime("%Y-%m-%d %H:%M:%S")
        return (f"{S.DS} = DATE'{self.previous_day.isoformat()}' "
                f"AND {S.TS} >= TIMESTAMP'{ts}'")


# ---- the pure chain --------------------------------------------------------------------------

def build_requests(valid: "DataFrame", *, cfg: "MtfConfig", window: RunWindow) -> "DataFrame":
    """Validated impressions of the context days -> request rows of the output days.

    Requires the impression-contract columns, valid rows only (``reject_reason`` null).
    Returns one row per request with ds in the window: user_id, ts, request_id, ds,
    session_id, step, ``session_start_ts``, ``state_core`` and ``next_core`` (non-profile
    state, array<double>; next_core null when terminal), is_terminal, is_truncated, ``a_<i>``,
    action_logp, ``explore_idx``, reward parts, ``n_items``, ``dwell_s`` and the ``fb_*`` page
    feedback sums.
    """
    from pyspark.sql import functions as F

    k = cfg.fusion.k
    keep = [S.USER_ID, S.TS, S.REQUEST_ID, S.POSITION, S.EVENT_ID, S.DS, S.ACTION_LOGP,
            S.PLAY_TIME_S, S.DURATION_S, *S.INTERACTIONS, IS_SENTINEL, EXPLORE_IDX,
            APP_SID_HASH, *(fb_col(f) for f in FEEDBACK), *(action_col(i) for i in range(k))]
    imps = (valid
            .transform(add_impression_feedback, reward=cfg.reward, fusion=cfg.fusion,
                       explore_groups=cfg.etl.explore_groups)
            .transform(add_sentinels, data_end=window.data_end,
                       gap_s=cfg.etl.session_gap_s)
            .select(*keep)
            .transform(add_impression_history, features=cfg.features))
    in_window = (F.col(S.DS) >= F.lit(window.start)) & (F.col(S.DS) <= F.lit(window.end))
    return (imps
            .transform(to_requests, k=k)
            .transform(sessionize, gap_s=cfg.etl.session_gap_s)
            .transform(add_state_core, features=cfg.features)
            .transform(add_next_state)
            .where(~F.col(IS_SENTINEL) & in_window)
            .transform(add_reward, reward=cfg.reward))


def finish_transitions(requests: "DataFrame", profiles: "DataFrame | None", *,
                       cfg: "MtfConfig") -> "DataFrame":
    """Request rows -> transition columns (+ ``session_start_ts``; no split yet).

    Prepends the profile features to state and next state, casts them to array<float>
    (next_state of a terminal step: zeros), builds the action array, decodes explore_group.
    """
    from pyspark.sql import functions as F

    n = len(cfg.features.feature_names)
    steps = (requests.withColumnRenamed(STATE_CORE, S.STATE)
             .withColumnRenamed(NEXT_CORE, S.NEXT_STATE)
             .transform(add_profile_state, profiles, features=cfg.features,
                        state_cols=(S.STATE, S.NEXT_STATE)))
    return steps.select(
        S.SESSION_ID, S.USER_ID, S.STEP, S.TS, S.DS,
        F.col(S.STATE).cast("array<float>").alias(S.STATE),
        F.coalesce(F.col(S.NEXT_STATE).cast("array<float>"), zeros(n)).alias(S.NEXT_STATE),
        action_array(cfg.fusion.k).alias(S.ACTION),
        S.ACTION_LOGP, S.REWARD, S.REWARD_STICKINESS, S.REWARD_ACTIVENESS,
        S.IS_TERMINAL, S.IS_TRUNCATED,
        explore_group_col(cfg.etl.explore_groups).alias(S.EXPLORE_GROUP),
        SESSION_START_TS)


# ---- I/O -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobSummary:
    """What a build did; logged as JSON and returned by :func:`run_build_transitions`."""

    start_ds: str
    end_ds: str
    full_rebuild: bool
    rows_in: int                      # impression rows of the output days
    rows_valid: int                   # of which passed validation (went into steps)
    rows_quarantined: int             # of which were quarantined
    rejected_by_reason: dict[str, int]
    steps: int                        # transition rows written for the output days
    sessions: int                     # distinct sessions among them
    terminal_steps: int
    truncated_steps: int
    train_steps: int
    previous_rows_rewritten: int      # rows of the day before start re-derived (incremental)
    quarantine_version: int
    transitions_version: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def table_properties_for(cfg: "MtfConfig") -> dict[str, str]:
    """The Delta table properties of the transitions table (read by the trainer)."""
    from mtf.delta import json_property

    config = {"etl": to_dict(cfg.etl), "features": to_dict(cfg.features),
              "reward": to_dict(cfg.reward), "fusion": to_dict(cfg.fusion)}
    return {S.PROP_FEATURE_NAMES: json_property(list(cfg.features.feature_names)),
            S.PROP_FEATURE_VERSION: FEATURE_VERSION,
            S.PROP_ACTION_TASKS: json_property(list(cfg.fusion.names)),
            S.PROP_CONFIG: json_property(config)}


def check_compatible(existing: dict[str, str], wanted: dict[str, str], path: str) -> None:
    """Refuse to add days to a table built with another state/action layout or reward."""
    problems = []
    for key in (S.PROP_FEATURE_NAMES, S.PROP_FEATURE_VERSION, S.PROP_ACTION_TASKS):
        if key in existing and existing[key] != wanted[key]:
            problems.append(f"{key}: table has {existing[key]}, this config gives {wanted[key]}")
    if S.PROP_CONFIG in existing:
        old, new = json.loads(existing[S.PROP_CONFIG]), json.loads(wanted[S.PROP_CONFIG])
        for section in ("features", "reward"):
            if old.get(section) != new.get(section):
                problems.append(f"{S.PROP_CONFIG} section '{section}': table has "
                                f"{old.get(section)}, this config gives {new.get(section)}")
    if problems:
        raise ValueError(f"transitions table {path!r} was built with a different layout or "
                         f"reward, so new days would not match the old ones: "
                         f"{'; '.join(problems)}. Rebuild every day (etl.start_ds='') or write "
                         f"to another lake.transitions path.")


def _day_range(raw: "DataFrame") -> tuple[dt.date | None, dt.date | None]:
    from pyspark.sql import functions as F
    row = raw.agg(F.min(S.DS).alias("lo"), F.max(S.DS).alias("hi")).first()
    return (row["lo"], row["hi"]) if row is not None else (None, None)


def read_profiles(spark: "SparkSession", cfg: "MtfConfig") -> "DataFrame | None":
    """The profile table conformed to its contract, one row per user (None if absent)."""
    from pyspark.sql import functions as F

    from mtf.delta import is_delta_table, read_delta

    cols = list(cfg.features.profile_columns)
    path = cfg.lake.path("user_profiles")
    if not cols:
        return None
    if not is_delta_table(path):
        logger.warning("no user-profile table at %s: profile features %s are 0 for every user",
                       path, cols)
        return None
    prof = S.conform(read_delta(spark, path), S.profile_contract(cols),
                     where=f"user_profiles {path!r}", column_map=cfg.etl.column_map)
    # One row per user: duplicates (if any) resolve to the per-column max, deterministically.
    return prof.groupBy(S.USER_ID).agg(*(F.max(c).alias(c) for c in cols))


def run_build_transitions(spark: "SparkSession", cfg: "MtfConfig") -> JobSummary:
    """Validate the logs, write the quarantine and the transitions, return the summary.

    Raises:
        FileNotFoundError: no impression-log table.
        SchemaMismatchError: a required column is missing or mistyped (nothing written).
        ValueError: the existing transitions table has another layout (incremental run).
        RuntimeError: the row accounting does not add up (rows_in != valid + quarantined).
    """
    from pyspark import StorageLevel
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from mtf.delta import is_delta_table, read_delta, table_properties, write_delta

    raw_path = cfg.lake.path("raw_logs")
    trans_path = cfg.lake.path("transitions")
    q_path = cfg.lake.path("quarantine")
    raw = S.conform(read_delta(spark, raw_path), S.impression_contract(cfg.fusion.names),
                    where=f"raw_logs {raw_path!r}", column_map=cfg.etl.column_map)
    profiles = read_profiles(spark, cfg)
    first_ds, last_ds = _day_range(raw) if cfg.etl.is_full_rebuild else (None, None)
    window = RunWindow.resolve(cfg.etl, first_ds, last_ds)
    props = table_properties_for(cfg)
    incremental_on_table = not window.full_rebuild and is_delta_table(trans_path)
    if incremental_on_table:
        check_compatible(table_properties(spark, trans_path), props, trans_path)
    logger.info("building transitions for %s..%s (%s) from %s", window.start, window.end,
                "full rebuild" if window.full_rebuild else
                f"context from {window.context_start or 'the first day'}", raw_path)
    rules = RowRules.from_config(cfg)
    days = F.col(S.DS).between(F.lit(window.start), F.lit(window.end))

    # 1. Quarantine: every row of the output days gets checked; bad ones are written.
    out_days = raw if window.full_rebuild else raw.where(days)
    q_obs = Observation("mtf_quarantine")
    flagged = out_days.transform(add_reject_reason, rules=rules).observe(
        q_obs, F.count(F.lit(1)).alias("rows_in"),
        *(F.sum(F.when(F.col(S.REJECT_REASON) == r, 1).otherwise(0)).alias(r)
          for r in REASONS))
    bad = flagged.where(F.col(S.REJECT_REASON).isNotNull()) \
        .withColumn(S.RUN_DS, F.lit(window.end))
    q_version = write_delta(bad, q_path, mode="overwrite", partition_by=[S.DS],
                            replace_where=None if window.full_rebuild
                            else window.days_predicate())
    q_counts = {k: int(v or 0) for k, v in q_obs.get.items()}
    rows_in = q_counts.pop("rows_in")
    rejected = {r: n for r, n in q_counts.items() if n}

    # 2. Transitions: context days -> validated -> steps -> one commit.
    context = raw.where(F.col(S.DS) <= F.lit(window.end))
    if window.context_start is not None:
        context = context.where(F.col(S.DS) >= F.lit(window.context_start))
    v_obs = Observation("mtf_valid")
    valid = (context.transform(add_reject_reason, rules=rules)
             .where(F.col(S.REJECT_REASON).isNull()).drop(S.REJECT_REASON)
             .observe(v_obs, F.sum(F.when(days, 1).otherwise(0)).alias("rows_valid")))
    current = finish_transitions(build_requests(valid, cfg=cfg, window=window), profiles,
                                 cfg=cfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        # (No distinct aggregate here: next to percentile_approx it makes Spark merge digests
        # per row.)
        stats = current.agg(
            F.count(F.lit(1)).alias("steps"),
            F.sum(F.col(S.IS_TERMINAL).cast("int")).alias("terminal"),
            F.sum(F.col(S.IS_TRUNCATED).cast("int")).alias("truncated"),
            F.percentile_approx(F.when(F.col(S.STEP) == 0, F.col(SESSION_START_TS)),
                                cfg.etl.train_fraction, SPLIT_ACCURACY).alias("cutoff"),
        ).first()
        n_sessions = current.select(S.SESSION_ID).distinct().count()
        rows_valid = int(v_obs.get.get("rows_valid") or 0)
        previous = None
        if incremental_on_table:
            previous = read_delta(spark, trans_path).where(window.previous_rows_predicate())
        if cfg.etl.test_start_ts:
            test_from = dt.datetime.fromisoformat(cfg.etl.test_start_ts)
            test_from = test_from if test_from.tzinfo else test_from.replace(tzinfo=UTC)
            with_split = add_split(current, train_until=None, test_from=test_from,
                                   previous=previous)
        else:
            cutoff = stats["cutoff"] or window.data_end  # no session starts: all train
            cutoff = cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=UTC)
            with_split = add_split(current, train_until=cutoff, test_from=None,
                                   previous=previous)
        s_obs = Observation("mtf_split")
        out = select_transitions(with_split).observe(
            s_obs, F.sum(F.when(F.col(S.SPLIT) == S.TRAIN, 1).otherwise(0)).alias("train"))
        p_obs = Observation("mtf_previous")
        replace = None if window.full_rebuild else window.days_predicate()
        if previous is not None:
            fixed = fix_previous_rows(previous, select_transitions(with_split),
                                      state_dim=len(cfg.features.feature_names))
            out = out.unionByName(fixed.observe(p_obs, F.count(F.lit(1)).alias("n")))
            replace = f"({replace}) OR ({window.previous_rows_predicate()})"
        out = out.repartition(cfg.etl.files_per_day, S.SESSION_ID, S.STEP)
        t_version = write_delta(out, trans_path, mode="overwrite", partition_by=[S.DS],
                                replace_where=replace, properties=props)
        train_steps = int(s_obs.get.get("train") or 0)
    finally:
        current.unpersist()
    n_prev = int(p_obs.get.get("n") or 0) if previous is not None else 0
    rows_quarantined = sum(rejected.values())
    summary = JobSummary(
        start_ds=window.start.isoformat(), end_ds=window.end.isoformat(),
        full_rebuild=window.full_rebuild, rows_in=rows_in, rows_valid=rows_valid,
        rows_quarantined=rows_quarantined, rejected_by_reason=rejected,
        steps=int(stats["steps"]), sessions=n_sessions,
        terminal_steps=int(stats["terminal"] or 0), truncated_steps=int(stats["truncated"] or 0),
        train_steps=train_steps,
        previous_rows_rewritten=n_prev, quarantine_version=q_version,
        transitions_version=t_version)
    logger.info("build-transitions summary: %s", json.dumps(summary.to_dict(), sort_keys=True))
    if rows_in != rows_valid + rows_quarantined:
        raise RuntimeError(f"row accounting failed for {window.start}..{window.end}: rows_in="
                           f"{rows_in} != rows_valid={rows_valid} + rows_quarantined="
                           f"{rows_quarantined}; a stage dropped or duplicated rows")
    if rows_in and rows_quarantined / rows_in > cfg.etl.warn_reject_fraction:
        logger.warning("%.1f%% of impression rows quarantined (above %.1f%%): %s",
                       100.0 * rows_quarantined / rows_in, 100.0 * cfg.etl.warn_reject_fraction,
                       rejected)
    return summary
