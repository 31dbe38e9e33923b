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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from mtf import contract as S
from mtf.configtools import to_dict
from mtf.delta import (is_delta_table, json_property, read_delta, retry_on_conflict,
                       table_properties, write_delta)
from mtf.errors import InputDataError, MissingInputError, UserError
from mtf.etl.config import EtlConfig, parse_ds
from mtf.etl.ingest import read_raw_logs
from mtf.etl.state import NEXT_CORE, NEXT_DS, PREV_TS, STATE_CORE, add_profile_state
from mtf.etl.steps import (EXPLORE_IDX, action_array, action_col, add_impression_feedback,
                           add_reward, explore_group_col)
from mtf.etl.transitions import (active_users, add_sentinels, add_split, fix_previous_rows,
                                 select_transitions, zeros)
from mtf.etl.user_pass import IS_SENTINEL, SESSION_START_TS, impressions_to_requests
from mtf.etl.validate import (REASONS, RowRules, add_row_reason, candidate_duplicate_keys,
                              mark_duplicates, ranked_candidate_rows, rows_without_candidates)
from mtf.features import FEATURE_VERSION, FeatureConfig
from mtf.fusion import FusionConfig
from mtf.reward import RewardConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)

UTC = dt.timezone.utc
FIRST_IN_WINDOW = "first_in_window"   # first step of its session among the output days
# EtlConfig fields that say which days a run builds, not how: left out of mtf.config.
RUN_FIELDS = ("start_ds", "end_ds")
# At most this many candidate duplicate key hashes (xxhash64 of ds, event_id) are broadcast to
# mark duplicates without shuffling every row; above it every row is ranked (one shuffle).
MAX_BROADCAST_DUPLICATE_KEYS = 1_000_000
# Session settings while a build runs (restored afterwards):
# * constraint propagation (inferring filters from every alias of every projection) is what makes
#   the optimizer slow on the build's wide, deep plan: seconds per query, about 2/3 of all
#   optimizer time. It only prunes or adds redundant filters here, so results are the same.
# * the row rules (one CASE WHEN over 17 rules, in a filter and a projection) make a generated
#   method above HotSpot's 8000-byte JIT limit, so the JVM interprets it: validation ran 4-5x
#   slower. With the limit at 8000 Spark falls back to per-operator code for that stage, which
#   is compiled (Spark's documentation recommends 8000 on HotSpot).
BUILD_SESSION_CONF = {"spark.sql.constraintPropagation.enabled": "false",
                      "spark.sql.codegen.hugeMethodLimit": "8000"}
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
    def start_ts(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time(), tzinfo=UTC)

    @property
    def previous_day(self) -> dt.date:
        return self.start - dt.timedelta(days=1)

    @property
    def boundary_from(self) -> dt.datetime:
        """Rows of the previous day at/after this instant may have been written truncated."""
        return self.start_ts - dt.timedelta(seconds=self.session_gap_s)

    def days_predicate(self) -> str:
        return (f"{S.DS} >= DATE'{self.start.isoformat()}' "
                f"AND {S.DS} <= DATE'{self.end.isoformat()}'")

    def previous_rows_predicate(self) -> str:
        ts = self.boundary_from.strftime("%Y-%m-%d %H:%M:%S")
        return (f"{S.DS} = DATE'{self.previous_day.isoformat()}' "
                f"AND {S.TS} >= TIMESTAMP'{ts}'")


# ---- the pure chain --------------------------------------------------------------------------

def build_requests(valid: "DataFrame", *, etl: EtlConfig, features: FeatureConfig,
                   fusion: FusionConfig, reward: RewardConfig, window: RunWindow,
                   open_users: "DataFrame | None" = None) -> "DataFrame":
    """Validated impressions of the context days -> request rows of the output days.

    Requires the impression-contract columns, valid rows only (``reject_reason`` null).
    ``open_users``: user_id of every user that may have a session open at the window's end
    (default: derived from ``valid``; the job passes a cheaper superset from the raw rows).
    Returns one row per request with ds in the window: user_id, ts, ds, session_id, step,
    ``session_start_ts``, ``prev_ts``, ``state_core`` and ``next_core`` (non-profile state,
    array<double>; next_core null when terminal), is_terminal, is_truncated, ``a_<i>``,
    action_logp, ``explore_idx``, reward parts, ``n_items``, ``dwell_s`` and the ``fb_*`` page
    feedback sums.
    """
    from pyspark.sql import functions as F

    k = fusion.k
    if open_users is None:
        open_users = active_users(valid, data_end=window.data_end, gap_s=etl.session_gap_s)
    first = (S.USER_ID, S.TS, S.DS, IS_SENTINEL, S.ACTION_LOGP, EXPLORE_IDX,
             *(action_col(i) for i in range(k)))
    in_window = (F.col(S.DS) >= F.lit(window.start)) & (F.col(S.DS) <= F.lit(window.end))
    return (valid
            .transform(add_impression_feedback, reward=reward, fusion=fusion,
                       explore_groups=etl.explore_groups)
            .transform(add_sentinels, users=open_users, data_end=window.data_end)
            .transform(impressions_to_requests, features=features,
                       gap_s=etl.session_gap_s, passthrough=first)
            .withColumn(FIRST_IN_WINDOW, (F.col(S.STEP) == 0)
                        | (F.col(PREV_TS) < F.lit(window.start_ts)))
            .where(~F.col(IS_SENTINEL) & in_window)
            .transform(add_reward, reward=reward))


def finish_transitions(requests: "DataFrame", profiles: "DataFrame | None", *,
                       etl: EtlConfig, features: FeatureConfig, fusion: FusionConfig,
                       window: RunWindow | None = None) -> "DataFrame":
    """Request rows -> transition columns (+ ``session_start_ts``; no split yet).

    Prepends the profile features to state and next state (as of the request's ds and the
    next request's ds: point-in-time when the profiles have snapshots; ``window``, when given,
    prunes the snapshots to those its days can use), casts them to array<float> (next_state of
    a terminal step: zeros), builds the action array, decodes explore_group.
    """
    from pyspark.sql import functions as F

    n = len(features.feature_names)
    # Lookup days: the output days, and the day after for the truncated rows' next state.
    days = (window.start, window.data_end.date()) if window is not None else None
    steps = (requests.withColumnRenamed(STATE_CORE, S.STATE)
             .withColumnRenamed(NEXT_CORE, S.NEXT_STATE)
             .transform(add_profile_state, profiles, features=features,
                        state_days={S.STATE: S.DS, S.NEXT_STATE: NEXT_DS}, days=days))
    return steps.select(
        S.SESSION_ID, S.USER_ID, S.STEP, S.TS, S.DS,
        F.col(S.STATE).cast("array<float>").alias(S.STATE),
        F.coalesce(F.col(S.NEXT_STATE).cast("array<float>"), zeros(n)).alias(S.NEXT_STATE),
        action_array(fusion.k).alias(S.ACTION),
        S.ACTION_LOGP, S.REWARD, S.REWARD_STICKINESS, S.REWARD_ACTIVENESS,
        S.IS_TERMINAL, S.IS_TRUNCATED,
        explore_group_col(etl.explore_groups).alias(S.EXPLORE_GROUP),
        SESSION_START_TS, FIRST_IN_WINDOW)


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


def table_properties_for(etl: EtlConfig, features: FeatureConfig, reward: RewardConfig,
                         fusion: FusionConfig) -> dict[str, str]:
    """The Delta table properties of the transitions table (read by the trainer)."""
    build = {k: v for k, v in to_dict(etl).items() if k not in RUN_FIELDS}
    config = {"etl": build, "features": to_dict(features),
              "reward": to_dict(reward), "fusion": to_dict(fusion)}
    return {S.PROP_FEATURE_NAMES: json_property(list(features.feature_names)),
            S.PROP_FEATURE_VERSION: FEATURE_VERSION,
            S.PROP_ACTION_TASKS: json_property(list(fusion.names)),
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
        raise InputDataError(f"transitions table {path!r} was built with a different layout "
                             f"or reward, so new days would not match the old ones: "
                             f"{'; '.join(problems)}. Rebuild every day (etl.start_ds='') or "
                             f"write to another lake.transitions path.")


def day_range(raw: "DataFrame", ds_column: str) -> tuple[dt.date | None, dt.date | None]:
    """First and last ds in the logs: from the snapshot's partition paths when the table is
    partitioned by ds (no scan), else by an aggregation."""
    import re

    from pyspark.sql import functions as F

    pattern = re.compile(rf"/{re.escape(ds_column)}=(\d{{4}}-\d{{2}}-\d{{2}})/")
    files = raw.inputFiles()
    days = [pattern.search(f) for f in files]
    if files and all(days):
        found = sorted({dt.date.fromisoformat(m.group(1)) for m in days if m})
        return found[0], found[-1]
    row = raw.agg(F.min(S.DS).alias("lo"), F.max(S.DS).alias("hi")).first()
    return (row["lo"], row["hi"]) if row is not None else (None, None)


def read_profiles(spark: "SparkSession", path: str, features: FeatureConfig,
                  etl: EtlConfig) -> "DataFrame | None":
    """The profile table at ``path`` conformed to its contract (None when no profile columns are
    configured; a missing table is an error): user_id, ``snapshot_ds`` when the table has one
    (or etl.column_map maps it), the profile columns. Duplicates are resolved by
    :func:`mtf.etl.state.add_profile_state` (docs/contract.md section 4).

    Raises:
        UserError: a ``snapshot_ds`` is null (or text that is not YYYY-MM-DD).
    """
    from pyspark.sql import functions as F

    cols = list(features.profile_columns)
    if not cols:
        return None
    if not is_delta_table(path):
        # Fatal, not a warning: zero profile features train a policy that cannot personalise
        # and then sees real profiles at serving time (it happened to the closed loop).
        raise MissingInputError(
            f"no user-profile table at {path!r}, but features.profile_columns={cols} need it: "
            "write the table (mtf simulate writes it for simulated logs), point "
            "lake.user_profiles at it, or set features.profile_columns=[] to build states "
            "without profile features")
    table = read_delta(spark, path)
    source = etl.column_map.get(S.SNAPSHOT_DS, S.SNAPSHOT_DS)
    snapshots = source in table.columns or S.SNAPSHOT_DS in etl.column_map
    kind, day = dict(table.dtypes).get(source), F.col(f"`{source}`")
    if snapshots and kind in ("timestamp", "timestamp_ntz"):
        table = table.withColumn(source, F.to_date(day))       # its day (sessions run in UTC)
    elif snapshots and kind == "string":                      # exactly YYYY-MM-DD, else null
        table = table.withColumn(source, F.when(day.rlike(r"^\d{4}-\d{2}-\d{2}$"),
                                                day.try_cast("date")))
    prof = S.conform(table, S.profile_contract(cols, snapshots=snapshots),
                     where=f"user_profiles {path!r}", column_map=etl.column_map)
    # A snapshot without a day cannot be placed in time: refuse it rather than guess (cheap:
    # Delta's null counts skip every file of a date column without nulls).
    if snapshots and prof.where(F.col(S.SNAPSHOT_DS).isNull()).limit(1).count():
        raise UserError(f"user_profiles {path!r}: rows with a null (or not YYYY-MM-DD) "
                        f"{source} cannot be placed in time; fill in the day each row "
                        f"describes, or drop the column for a static table")
    return prof


def validation_context(raw: "DataFrame", window: RunWindow) -> "DataFrame":
    """The rows a run reads: the output days and the look-back days before them."""
    from pyspark.sql import functions as F

    if window.full_rebuild:
        return raw
    context = raw.where(F.col(S.DS) <= F.lit(window.end))
    if window.context_start is not None:
        context = context.where(F.col(S.DS) >= F.lit(window.context_start))
    return context


class Validator:
    """Row rules + duplicates, with the candidate duplicate keys of the context computed once.

    Duplicates are rare, so the candidate key hashes are found first with a narrow aggregation
    (:func:`mtf.etl.validate.candidate_duplicate_keys`); when there are none, validation is a
    per-row filter and no row is shuffled for it.
    """

    def __init__(self, context: "DataFrame", rules: RowRules) -> None:
        self.rules = rules
        self.keys = candidate_duplicate_keys(context).persist()
        self.n_keys = self.keys.count()
        self.copies: "DataFrame | None" = None
        if self.n_keys:
            logger.info("%d (ds, event_id) key hashes have more than one row", self.n_keys)
        if 0 < self.n_keys <= MAX_BROADCAST_DUPLICATE_KEYS:
            # The candidate keys' rows, flagged and ranked once (a few rows, one extra scan):
            # each later pass then reads the logs once, not once per branch of the union.
            self.copies = ranked_candidate_rows(add_row_reason(context, rules=rules),
                                                self.keys).persist()
            self.copies.count()

    def flag(self, df: "DataFrame", days: "Column | None" = None) -> "DataFrame":
        """``df`` (the context), or its rows where ``days``, with ``reject_reason``."""
        if days is not None:
            df = df.where(days)
        flagged = add_row_reason(df, rules=self.rules)
        if not self.n_keys:
            return flagged
        if self.copies is None:          # too many candidates to broadcast: rank every row
            return mark_duplicates(flagged)
        copies = self.copies if days is None else self.copies.where(days)
        return rows_without_candidates(flagged, self.keys).unionByName(copies)

    def close(self) -> None:
        self.keys.unpersist()
        if self.copies is not None:
            self.copies.unpersist()


def warn_if_later_days(spark: "SparkSession", path: str, window: RunWindow) -> None:
    """Warn when the table already holds days after the run's: this run replaces its last
    day's rows, so the sessions open at its end stay truncated until the next day is re-run
    (only a run of day D + 1 fixes day D's open sessions; docs/etl.md, concurrent runs)."""
    from pyspark.sql import functions as F

    later = read_delta(spark, path).where(F.col(S.DS) > F.lit(window.end)).select(S.DS).limit(1)
    if later.count():
        following = window.end + dt.timedelta(days=1)
        logger.warning("the transitions table already holds days after %s: re-run %s after "
                       "this run so that the sessions open at the end of %s are continued",
                       window.end, following, window.end)


def _write_quarantine(flagged: "DataFrame", path: str, window: RunWindow
                      ) -> tuple[int, int, dict[str, int]]:
    """Write the rejected rows of the output days; (version, rows_in, count per reason)."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    obs = Observation("mtf_quarantine")
    observed = flagged.observe(
        obs, F.count(F.lit(1)).alias("rows_in"),
        *(F.sum(F.when(F.col(S.REJECT_REASON) == r, 1).otherwise(0)).alias(r) for r in REASONS))
    bad = observed.where(F.col(S.REJECT_REASON).isNotNull()) \
        .withColumn(S.RUN_DS, F.lit(window.end))
    version = write_delta(bad, path, mode="overwrite", partition_by=[S.DS],
                          replace_where=None if window.full_rebuild else window.days_predicate())
    counts = {k: int(v or 0) for k, v in obs.get.items()}
    rows_in = counts.pop("rows_in")
    return version, rows_in, {r: n for r, n in counts.items() if n}


def _train_until(cutoff: dt.datetime | None, window: RunWindow) -> dt.datetime:
    if cutoff is None:  # no session starts in the run: nothing to split
        return window.data_end
    return cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=UTC)


def _test_from(etl: EtlConfig) -> dt.datetime | None:
    if not etl.test_start_ts:
        return None
    ts = dt.datetime.fromisoformat(etl.test_start_ts)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@contextmanager
def session_conf(spark: "SparkSession", conf: Mapping[str, str]) -> Iterator[None]:
    """Set ``conf`` on the session for the duration of the block, then restore it."""
    old = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def run_build_transitions(spark: "SparkSession", cfg: "MtfConfig") -> JobSummary:
    """Validate the logs, write the quarantine and the transitions, return the summary.

    Order: schema checks (raise before anything is written) -> quarantine table (one commit)
    -> transitions table (one commit, replacing exactly the run's days and the previous day's
    last ``session_gap_s``; the table properties are part of it in a full rebuild, and follow
    in a second commit in an incremental run only when they change).

    Raises:
        FileNotFoundError: no impression-log table.
        SchemaMismatchError: a required column is missing or mistyped (nothing written).
        ValueError: the existing transitions table has another layout (incremental run).
        RuntimeError: the row accounting does not add up (rows_in != valid + quarantined).
    """
    def attempt() -> JobSummary:
        with session_conf(spark, BUILD_SESSION_CONF):
            return _build_transitions(spark, cfg)

    # Two daily runs on one lake (a backfill beside the scheduled day) can collide in Delta's
    # optimistic commit; the loser's commit changed nothing, so it re-runs on the new version.
    return retry_on_conflict(attempt, what="build-transitions",
                             retries=cfg.etl.commit_retries)


def _build_transitions(spark: "SparkSession", cfg: "MtfConfig") -> JobSummary:
    from pyspark import StorageLevel
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    raw_path = cfg.lake.path("raw_logs")
    trans_path = cfg.lake.path("transitions")
    raw = read_raw_logs(spark, raw_path, cfg.fusion.names, cfg.etl)
    profiles = read_profiles(spark, cfg.lake.path("user_profiles"), cfg.features, cfg.etl)
    first_ds, last_ds = (day_range(raw, cfg.etl.column_map.get(S.DS, S.DS))
                         if cfg.etl.is_full_rebuild else (None, None))
    window = RunWindow.resolve(cfg.etl, first_ds, last_ds)
    props = table_properties_for(cfg.etl, cfg.features, cfg.reward, cfg.fusion)
    existing = table_properties(spark, trans_path) if is_delta_table(trans_path) else {}
    incremental_on_table = not window.full_rebuild and bool(existing)
    if incremental_on_table:
        check_compatible(existing, props, trans_path)
        warn_if_later_days(spark, trans_path, window)
    logger.info("building transitions for %s..%s (%s) from %s", window.start, window.end,
                "full rebuild" if window.full_rebuild else
                f"context from {window.context_start or 'the first day'}", raw_path)
    days = F.col(S.DS).between(F.lit(window.start), F.lit(window.end))
    context = validation_context(raw, window)
    validator = Validator(context, RowRules.from_config(cfg.etl, cfg.fusion))
    current = None
    try:
        # 1. Quarantine: every row of the output days is checked; the bad ones are written.
        q_version, rows_in, rejected = _write_quarantine(
            validator.flag(raw, None if window.full_rebuild else days),
            cfg.lake.path("quarantine"), window)

        # 2. Transitions: context days -> valid rows -> steps, cached for the split cutoff.
        v_obs = Observation("mtf_valid")
        valid = (validator.flag(context).where(F.col(S.REJECT_REASON).isNull())
                 .drop(S.REJECT_REASON)
                 .observe(v_obs, F.sum(F.when(days, 1).otherwise(0)).alias("rows_valid")))
        # Sentinel users from the raw rows: no second validation pass (a superset is fine).
        open_users = active_users(context, data_end=window.data_end,
                                  gap_s=cfg.etl.session_gap_s)
        requests = build_requests(valid, etl=cfg.etl, features=cfg.features, fusion=cfg.fusion,
                                  reward=cfg.reward, window=window, open_users=open_users)
        current = finish_transitions(requests, profiles, etl=cfg.etl, features=cfg.features,
                                     fusion=cfg.fusion, window=window) \
            .persist(StorageLevel.MEMORY_AND_DISK)
        stats = current.agg(
            F.count(F.lit(1)).alias("steps"),
            F.sum(F.col(FIRST_IN_WINDOW).cast("int")).alias("sessions"),
            F.sum(F.col(S.IS_TERMINAL).cast("int")).alias("terminal"),
            F.sum(F.col(S.IS_TRUNCATED).cast("int")).alias("truncated"),
            F.percentile_approx(F.when(F.col(S.STEP) == 0, F.col(SESSION_START_TS)),
                                cfg.etl.train_fraction, SPLIT_ACCURACY).alias("cutoff"),
        ).first()
        rows_valid = int(v_obs.get.get("rows_valid") or 0)

        # 3. Split, the previous day's open rows, one commit.
        previous = None
        replace = None if window.full_rebuild else window.days_predicate()
        if incremental_on_table:
            previous = read_delta(spark, trans_path).where(window.previous_rows_predicate())
            replace = f"({replace}) OR ({window.previous_rows_predicate()})"
        test_from = _test_from(cfg.etl)
        with_split = add_split(current, previous=previous, test_from=test_from,
                               train_until=None if test_from else
                               _train_until(stats["cutoff"], window))
        s_obs, p_obs = Observation("mtf_split"), Observation("mtf_previous")
        out = select_transitions(with_split).observe(
            s_obs, F.sum(F.when(F.col(S.SPLIT) == S.TRAIN, 1).otherwise(0)).alias("train"))
        if previous is not None:
            fixed = fix_previous_rows(previous, select_transitions(with_split),
                                      state_dim=len(cfg.features.feature_names))
            out = out.unionByName(fixed.observe(p_obs, F.count(F.lit(1)).alias("n")))
        out = out.repartition(cfg.etl.files_per_day, S.SESSION_ID, S.STEP)
        changed = any(existing.get(k) != v for k, v in props.items())
        t_version = write_delta(out, trans_path, mode="overwrite", partition_by=[S.DS],
                                replace_where=replace, properties=props if changed else None,
                                max_rows_per_file=cfg.etl.max_rows_per_file)
        train_steps = int(s_obs.get.get("train") or 0)
        n_previous = int(p_obs.get.get("n") or 0) if previous is not None else 0
    finally:
        validator.close()
        if current is not None:
            current.unpersist()
    rows_quarantined = sum(rejected.values())
    summary = JobSummary(
        start_ds=window.start.isoformat(), end_ds=window.end.isoformat(),
        full_rebuild=window.full_rebuild, rows_in=rows_in, rows_valid=rows_valid,
        rows_quarantined=rows_quarantined, rejected_by_reason=rejected,
        steps=int(stats["steps"]), sessions=int(stats["sessions"] or 0),
        terminal_steps=int(stats["terminal"] or 0), truncated_steps=int(stats["truncated"] or 0),
        train_steps=train_steps, previous_rows_rewritten=n_previous,
        quarantine_version=q_version, transitions_version=t_version)
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
