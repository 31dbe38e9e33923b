"""The table contracts of mtf, in one place: what the jobs read and write (docs/contract.md).

* impression logs (input, docs/contract.md section 1) and the user-profile table (section 4):
  column-name constants, the Spark ``StructType`` and matching Arrow schemas (what the
  simulator emits), and the :class:`ColumnSpec` contract the ETL validates a table against,
  with the other types it accepts and how each is converted (:func:`plan_column`,
  :func:`conform`; section 1.1);
* the transition table (output, section 2): column names, splits and the Delta table
  properties that record the state / action layout;
* the quarantine table (section 5): rejected input rows plus a reason;
* the exploration groups every logged row belongs to.

The simulator, the ETL, the trainer and the OPE all import these names; nothing else defines
them. The ``pred_<task>`` columns follow the configured fusion tasks and the profile columns
the configured features, so schemas and contracts are built by functions. pyspark is imported
only when a Spark schema is built or a DataFrame conformed, so the in-process simulator runs
without it.

Nullability: ``explore_group``, ``action_logp`` and ``app_session_id`` are nullable (pre-
exploration logs, the deterministic exploit group, users without an app session id); every other
column is non-null in what the simulator writes. Delta stores every column of a DataFrame write
as nullable, so readers must not rely on the table's nullability flags.

Example:
    >>> from mtf.contract import impression_log_schema, USER_ID
    >>> schema = impression_log_schema(cfg.fusion.names)   # StructType for these tasks
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import pyarrow as pa

from mtf.errors import UserError
from mtf.fusion import DEFAULT_TASKS

if TYPE_CHECKING:  # pyspark is imported only when a Spark schema is built
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import DataType, StructType

# ---- exploration groups ----------------------------------------------------------------------
# Every logged request belongs to one (null: logs from before exploration, read as exploit).
EXPLORE_GROUPS = ("exploit", "noise", "random")
EXPLOIT, NOISE, RANDOM = range(len(EXPLORE_GROUPS))       # group codes: index into the names
GROUP_CODES = {name: code for code, name in enumerate(EXPLORE_GROUPS)}  # name -> code

# ---- impression logs -------------------------------------------------------------------------
EVENT_ID = "event_id"
USER_ID = "user_id"
REQUEST_ID = "request_id"
TS = "ts"                      # request time, UTC, microseconds
DS = "ds"                      # date(ts) in UTC; partition column
ITEM_ID = "item_id"
POSITION = "position"          # 0-based rank within the page
PRED_PREFIX = "pred_"          # pred_<task>: MTL prediction in [0, 1]
FUSION_WEIGHTS = "fusion_weights"  # alpha actually used, fusion task order
EXPLORE_GROUP = "explore_group"    # exploit / noise / random
ACTION_LOGP = "action_logp"        # log-density of the normalised action in [-1, 1]^k
PLAY_TIME_S = "play_time_s"
DURATION_S = "duration_s"
LIKED = "liked"
SHARED = "shared"
COMMENTED = "commented"
FOLLOWED = "followed"
APP_SESSION_ID = "app_session_id"

INTERACTION_COLUMNS = (LIKED, SHARED, COMMENTED, FOLLOWED)

# ---- user profiles ---------------------------------------------------------------------------
PROFILE_COLUMNS = ("age", "activity", "tenure", "gender")  # numeric, ~[0, 1]
SNAPSHOT_DS = "snapshot_ds"    # optional: the day a profile row describes (point-in-time join)

DEFAULT_TASK_NAMES = tuple(t.name for t in DEFAULT_TASKS)


def pred_column(task: str) -> str:
    """``'click'`` -> ``'pred_click'``."""
    return f"{PRED_PREFIX}{task}"


TS_ARROW = pa.timestamp("us", tz="UTC")

# Column kinds -> (Spark type factory, Arrow type). Spark types are built lazily so that the
# in-process simulator and evaluation run without pyspark installed.
_ARROW = {
    "string": pa.string(), "timestamp": TS_ARROW, "date": pa.date32(), "int": pa.int32(),
    "double": pa.float64(),
    "double_array": pa.list_(pa.field("element", pa.float64(), nullable=False)),
}


def _spark_type(kind: str) -> "DataType":
    from pyspark.sql import types as T

    if kind == "double_array":
        return T.ArrayType(T.DoubleType(), containsNull=False)
    return {"string": T.StringType(), "timestamp": T.TimestampType(), "date": T.DateType(),
            "int": T.IntegerType(), "double": T.DoubleType()}[kind]


def _columns(task_names: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(name, kind, nullable) of every impression-log column, in order."""
    if not task_names:
        raise ValueError("impression_log_schema needs at least one task name")
    cols = [(EVENT_ID, "string", False), (USER_ID, "string", False),
            (REQUEST_ID, "string", False), (TS, "timestamp", False), (DS, "date", False),
            (ITEM_ID, "string", False), (POSITION, "int", False)]
    cols += [(pred_column(t), "double", False) for t in task_names]
    cols += [(FUSION_WEIGHTS, "double_array", False), (EXPLORE_GROUP, "string", True),
             (ACTION_LOGP, "double", True), (PLAY_TIME_S, "double", False),
             (DURATION_S, "double", False), (LIKED, "int", False), (SHARED, "int", False),
             (COMMENTED, "int", False), (FOLLOWED, "int", False),
             (APP_SESSION_ID, "string", True)]
    return cols


def impression_log_schema(task_names: Sequence[str] = DEFAULT_TASK_NAMES) -> "StructType":
    """Spark schema of the impression logs for fusion tasks ``task_names`` (in order)."""
    from pyspark.sql.types import StructField, StructType

    return StructType([StructField(n, _spark_type(kind), nullable)
                       for n, kind, nullable in _columns(task_names)])


def impression_log_arrow_schema(task_names: Sequence[str] = DEFAULT_TASK_NAMES) -> pa.Schema:
    """Arrow schema matching :func:`impression_log_schema` (what the simulator emits)."""
    return pa.schema([pa.field(n, _ARROW[kind], nullable)
                      for n, kind, nullable in _columns(task_names)])


def user_profile_schema(profile_columns: Sequence[str] = PROFILE_COLUMNS) -> "StructType":
    """Spark schema of the user-profile table: user_id + numeric profile columns."""
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    return StructType([StructField(USER_ID, StringType(), False)]
                      + [StructField(c, DoubleType(), False) for c in profile_columns])


def user_profile_arrow_schema(profile_columns: Sequence[str] = PROFILE_COLUMNS) -> pa.Schema:
    return pa.schema([pa.field(USER_ID, pa.string(), False)]
                     + [pa.field(c, pa.float64(), False) for c in profile_columns])


def __getattr__(name: str) -> Any:
    """``IMPRESSION_LOG_SCHEMA`` / ``USER_PROFILE_SCHEMA``: the Spark schemas for the default
    tasks and profile columns, built on first access (PEP 562) so importing this module does
    not need pyspark."""
    if name == "IMPRESSION_LOG_SCHEMA":
        return impression_log_schema()
    if name == "USER_PROFILE_SCHEMA":
        return user_profile_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- quarantine (output) ---------------------------------------------------------------------
REJECT_REASON = "reject_reason"
RUN_DS = "run_ds"                # last ds of the run that quarantined the row

# ---- transitions (output) --------------------------------------------------------------------
SESSION_ID = "session_id"
STEP = "step"
STATE = "state"
NEXT_STATE = "next_state"
ACTION = "action"
REWARD = "reward"
REWARD_STICKINESS = "reward_stickiness"
REWARD_ACTIVENESS = "reward_activeness"
IS_TERMINAL = "is_terminal"
IS_TRUNCATED = "is_truncated"
SPLIT = "split"
TRAIN, TEST = "train", "test"

TRANSITION_COLUMNS = (SESSION_ID, USER_ID, STEP, TS, DS, STATE, NEXT_STATE, ACTION, ACTION_LOGP,
                      REWARD, REWARD_STICKINESS, REWARD_ACTIVENESS, IS_TERMINAL, IS_TRUNCATED,
                      EXPLORE_GROUP, SPLIT)

# ---- table properties read by the trainer ----------------------------------------------------
PROP_FEATURE_NAMES = "mtf.feature_names"      # JSON list, state layout
PROP_FEATURE_VERSION = "mtf.feature_version"  # mtf.features.FEATURE_VERSION
PROP_ACTION_TASKS = "mtf.action_tasks"        # JSON list, action layout (cfg.fusion.names)
PROP_CONFIG = "mtf.config"                    # JSON of the etl/features/reward/fusion config


# ---- input contracts: accepted types and how they are converted (docs/contract.md section 1) -
INTEGER_RANGES = {"tinyint": (-2**7, 2**7 - 1), "smallint": (-2**15, 2**15 - 1),
                  "int": (-2**31, 2**31 - 1), "bigint": (-2**63, 2**63 - 1)}
INTEGER_TYPES = tuple(INTEGER_RANGES)
TS_UNITS = ("s", "ms", "us", "ns")             # units of an integer epoch ts (etl.ts_unit)
# Spark's supported timestamps, 0001-01-01 00:00 to 9999-12-31 23:59:59.999999 UTC (micros).
MIN_TS_MICROS = -62_135_596_800_000_000
MAX_TS_MICROS = 253_402_300_799_999_999
# The impression columns whose accepted types can hold values their canonical type cannot
# (a bigint position, an epoch ts past year 9999): such a row is quarantined with
# out_of_range_<column> (docs/contract.md section 5) instead of being wrapped or failing the job.
RANGE_CHECKED_COLUMNS = (TS, POSITION, *INTERACTION_COLUMNS)
CAST_REJECT_REASON = "cast_reject_reason"    # added by conform when a range check applies

# What conform does with a column, by the type it finds.
AS_IS, CAST, RANGE_CHECKED, FATAL = "as-is", "cast", "cast with range check", "fatal"


def out_of_range_reason(column: str) -> str:
    """``'position'`` -> ``'out_of_range_position'``: the reject reason of a failed range check."""
    return f"out_of_range_{column}"


@dataclass(frozen=True)
class ColumnSpec:
    """One required input column: canonical type, the other types accepted, nullability."""

    name: str
    type_ddl: str                       # canonical Spark type, DDL ('double', 'array<double>')
    also_accepted: tuple[str, ...] = ()  # other DDL types converted to the canonical one
                                        # ('decimal': any precision); how: plan_column
    nullable: bool = False              # nulls allowed here (the row rules do not reject them);
                                        # a void (all-null) column is then accepted as nulls


@dataclass(frozen=True)
class TsSettings:
    """How a ``ts`` that is not a UTC timestamp is read (``etl.ts_timezone``, ``etl.ts_unit``)."""

    timezone: str = "UTC"   # zone of a timestamp_ntz wall clock
    unit: str = ""          # unit of an integer epoch (s, ms, us, ns); "" = refuse an epoch


@dataclass(frozen=True)
class ColumnPlan:
    """What :func:`conform` does with one contract column of a given table."""

    spec: ColumnSpec
    source: str              # the column's name in the table (etl.column_map)
    found: str | None        # its type as read (DDL), 'void' for a declared all-null column;
                             # None when missing
    action: str              # AS_IS, CAST, RANGE_CHECKED or FATAL
    how: str = ""            # the conversion, or (FATAL) the problem, naming the column

    @property
    def label(self) -> str:
        return (self.spec.name if self.source == self.spec.name
                else f"{self.spec.name} (mapped from {self.source!r})")


_INTS = INTEGER_TYPES
_FLOATS = ("float", "double")
_TO_DOUBLE = ("float", *INTEGER_TYPES, "decimal")
# Integer columns as pandas writes them when a value is missing (float64 with NaN).
_INT_LIKE = (*INTEGER_TYPES, *_FLOATS)


def impression_contract(task_names: Sequence[str]) -> tuple[ColumnSpec, ...]:
    """The impression-log columns for fusion tasks ``task_names`` (docs/contract.md section 1)."""
    if not task_names:
        raise ValueError("impression_contract needs at least one fusion task name")
    return (
        ColumnSpec(EVENT_ID, "string", _INTS),
        ColumnSpec(USER_ID, "string", _INTS),
        ColumnSpec(REQUEST_ID, "string", _INTS),
        ColumnSpec(TS, "timestamp", ("timestamp_ntz", *_INTS)),
        ColumnSpec(DS, "date", ("string",)),
        ColumnSpec(ITEM_ID, "string", _INTS),
        ColumnSpec(POSITION, "int", _INT_LIKE),
        # The ETL does not use the predictions: nulls are not checked.
        *(ColumnSpec(pred_column(t), "double", _TO_DOUBLE, nullable=True) for t in task_names),
        ColumnSpec(FUSION_WEIGHTS, "array<double>", ("array<float>",)),
        ColumnSpec(EXPLORE_GROUP, "string", nullable=True),
        ColumnSpec(ACTION_LOGP, "double", _TO_DOUBLE, nullable=True),
        ColumnSpec(PLAY_TIME_S, "double", _TO_DOUBLE),
        ColumnSpec(DURATION_S, "double", _TO_DOUBLE),
        *(ColumnSpec(c, "int", (*_INT_LIKE, "boolean")) for c in INTERACTION_COLUMNS),
        ColumnSpec(APP_SESSION_ID, "string", _INTS, nullable=True),
    )


def profile_contract(profile_columns: Sequence[str], *,
                     snapshots: bool = False) -> tuple[ColumnSpec, ...]:
    """user_id (+ ``snapshot_ds``, a date, when ``snapshots``; mtf.etl.pipeline.read_profiles
    reads text and timestamps as dates) + the configured numeric profile columns (cast to
    double; null gives 0). docs/contract.md section 4."""
    snapshot = (ColumnSpec(SNAPSHOT_DS, "date"),) if snapshots else ()
    return (ColumnSpec(USER_ID, "string", _INTS), *snapshot,
            *(ColumnSpec(c, "double", (*_TO_DOUBLE, "boolean"), nullable=True)
              for c in profile_columns))


class SchemaMismatchError(UserError, ValueError):
    """A required input column is missing or has the wrong type; nothing was written."""


def _ddl(dtype: "DataType") -> str:
    return dtype.simpleString()


def _listed(spec: ColumnSpec, found: str) -> bool:
    # decimal(p,s) prints with its precision; any is accepted when 'decimal' is listed.
    return found in spec.also_accepted or ("decimal" in spec.also_accepted
                                           and found.startswith("decimal"))


def epoch_bounds(unit: str) -> tuple[int, int]:
    """The integer epochs in ``unit`` that lie within Spark's timestamps (year 1 to 9999)."""
    if unit == "ns":
        return MIN_TS_MICROS * 1000, MAX_TS_MICROS * 1000 + 999
    per = {"s": 1_000_000, "ms": 1_000, "us": 1}[unit]
    return -(-MIN_TS_MICROS // per), MAX_TS_MICROS // per


def _range_action(found: str, lo: int, hi: int) -> str:
    """CAST when every value of integer type ``found`` lies in [lo, hi], else RANGE_CHECKED."""
    flo, fhi = INTEGER_RANGES[found]
    return CAST if lo <= flo and fhi <= hi else RANGE_CHECKED


def plan_column(spec: ColumnSpec, source: str, found: str | None, *,
                ts_settings: TsSettings = TsSettings(), declared_void: bool = False
                ) -> ColumnPlan:
    """How column ``source`` of type ``found`` (DDL; None = not in the table) meets ``spec``.

    ``declared_void``: the Delta table declares the column void (every value null); Spark
    leaves such a column out of what it reads, so it arrives as missing.
    """
    want = spec.type_ddl
    label = ColumnPlan(spec, source, found, FATAL).label

    def plan(action: str, how: str = "", found: str | None = found) -> ColumnPlan:
        return ColumnPlan(spec, source, found, action, how)

    if found is None or found == "void":
        if spec.nullable and (declared_void or found == "void"):
            return plan(CAST, "void: every value null", found="void")
        if found is None:
            why = ": the table declares it void (every value null)" if declared_void else ""
            return plan(FATAL, f"column '{label}' is missing (expected {want}){why}")
        return plan(FATAL, f"column '{label}' has type void (every value null), expected {want}")
    if found == want:
        return plan(AS_IS)
    if not _listed(spec, found):
        hint = ""
        if want == "timestamp":
            hint = " (convert it to a timestamp, or to an integer epoch read with etl.ts_unit)"
        return plan(FATAL, f"column '{label}' has type {found}, expected {want}{hint}")
    if want == "timestamp" and found in INTEGER_RANGES:
        if not ts_settings.unit:
            return plan(FATAL, f"column '{label}' has type {found}, an epoch: set etl.ts_unit to "
                               f"its unit ({', '.join(TS_UNITS)})")
        action = _range_action(found, *epoch_bounds(ts_settings.unit))
        beyond = (f"; outside years 1-9999 -> {out_of_range_reason(spec.name)}"
                  if action == RANGE_CHECKED else "")
        return plan(action, f"epoch in {ts_settings.unit} -> UTC timestamp{beyond}")
    if want == "timestamp":                       # timestamp_ntz
        return plan(CAST, f"wall clock read in {ts_settings.timezone} (etl.ts_timezone)")
    if want == "date":                            # string
        return plan(CAST, "text YYYY-MM-DD -> date; other text -> null")
    if want in INTEGER_RANGES and found in INTEGER_RANGES:
        action = _range_action(found, *INTEGER_RANGES[want])
        return plan(action, f"outside the {want} range -> {out_of_range_reason(spec.name)}"
                    if action == RANGE_CHECKED else "")
    if want in INTEGER_RANGES and found in _FLOATS:
        return plan(RANGE_CHECKED, f"whole numbers cast, NaN -> null; a fraction, an infinity or "
                                   f"outside the {want} range -> {out_of_range_reason(spec.name)}")
    if found == "boolean":
        return plan(CAST, "true -> 1, false -> 0")
    if want == "string":                          # an integer
        return plan(CAST, "integer -> its decimal text")
    return plan(CAST)


def plan_columns(schema: "StructType", contract: Sequence[ColumnSpec],
                 column_map: Mapping[str, str] | None = None, *,
                 ts_settings: TsSettings = TsSettings(),
                 void_columns: Collection[str] = ()) -> list[ColumnPlan]:
    """:func:`plan_column` for every contract column, in contract order.

    ``void_columns``: columns the Delta table declares void (:func:`mtf.delta.void_columns`).
    """
    column_map = column_map or {}
    have = {f.name: _ddl(f.dataType) for f in schema.fields}
    plans = []
    for spec in contract:
        source = column_map.get(spec.name, spec.name)
        plans.append(plan_column(spec, source, have.get(source), ts_settings=ts_settings,
                                 declared_void=source in void_columns))
    return plans


def schema_problems(schema: "StructType", contract: Sequence[ColumnSpec],
                    column_map: Mapping[str, str] | None = None, *,
                    ts_settings: TsSettings = TsSettings(),
                    void_columns: Collection[str] = ()) -> list[str]:
    """Human-readable problems of ``schema`` against ``contract`` ([] when it conforms)."""
    return [p.how for p in plan_columns(schema, contract, column_map, ts_settings=ts_settings,
                                        void_columns=void_columns) if p.action == FATAL]


def schema_error(where: str, plans: Sequence[ColumnPlan]) -> SchemaMismatchError:
    """The one-line error naming every FATAL column of ``plans``."""
    problems = [p.how for p in plans if p.action == FATAL]
    return SchemaMismatchError(f"{where}: schema does not match the input contract "
                               f"(docs/contract.md section 1): {'; '.join(problems)}")


def _converted(plan: ColumnPlan, ts_settings: TsSettings) -> tuple["Column", "Column | None"]:
    """(the canonical value, the out-of-range condition or None) of a non-FATAL plan."""
    from pyspark.sql import functions as F

    want, found = plan.spec.type_ddl, plan.found
    if found == "void":
        return F.lit(None).cast(want), None
    src = F.col(f"`{plan.source}`")
    if plan.action == AS_IS:
        return src, None
    if want == "timestamp" and found in INTEGER_RANGES:
        return _epoch_to_timestamp(src, plan, ts_settings.unit)
    if want == "timestamp":
        # ntz -> timestamp takes the wall clock as UTC (mtf sessions run in UTC); then shift it
        # from the configured zone (DST gaps move forward, overlaps take the earlier instant).
        wall = src.cast("timestamp")
        return (wall if ts_settings.timezone == "UTC"
                else F.to_utc_timestamp(wall, ts_settings.timezone)), None
    if want == "date":
        # Only the exact form: a plain cast would also read '2026-01-02 junk' as a date.
        return F.when(src.rlike(r"^\d{4}-\d{2}-\d{2}$"), src.try_cast("date")), None
    if plan.action == RANGE_CHECKED and found in _FLOATS:
        lo, hi = INTEGER_RANGES[want]
        # NaN is pandas' missing value: null, so the row meets the column's null rule. floor()
        # keeps an infinity, which then fails the range test.
        number = F.when(~F.isnan(src), src.cast("double"))
        bad = (number != F.floor(number)) | (number < F.lit(lo)) | (number > F.lit(hi))
        return F.when(~bad, number.cast(want)), bad
    if plan.action == RANGE_CHECKED:
        lo, hi = INTEGER_RANGES[want]
        bad = (src < F.lit(lo)) | (src > F.lit(hi))
        # Checked explicitly: a plain cast wraps (ANSI off) or fails the job (ANSI on).
        return F.when(~bad, src.try_cast(want)), bad
    return src.cast(want), None


def _epoch_to_timestamp(src: "Column", plan: ColumnPlan, unit: str
                        ) -> tuple["Column", "Column | None"]:
    from pyspark.sql import functions as F

    n = src.cast("bigint")
    if unit == "s":
        value = F.timestamp_seconds(n)
    elif unit == "ms":
        value = F.timestamp_millis(n)
    elif unit == "us":
        value = F.timestamp_micros(n)
    else:  # ns: floor division to micros in integers (a double would round)
        value = F.timestamp_micros(F.call_function("div", n, F.lit(1000))
                                   - F.when(n % 1000 < 0, 1).otherwise(0))
    if plan.action != RANGE_CHECKED:
        return value, None
    lo, hi = epoch_bounds(unit)
    bad = (n < F.lit(lo)) | (n > F.lit(hi))
    return F.when(~bad, value), bad


def conform(df: "DataFrame", contract: Sequence[ColumnSpec], *, where: str,
            column_map: Mapping[str, str] | None = None, keep_extra: bool = False,
            ts_settings: TsSettings = TsSettings(),
            void_columns: Collection[str] = ()) -> "DataFrame":
    """Rename mapped columns, check the contract, convert accepted types to the canonical ones.

    Args:
        df: the table as read.
        contract: required columns (:func:`impression_contract`, :func:`profile_contract`).
        where: what the table is (used in the error message), e.g. ``"raw_logs at /lake/x"``.
        column_map: contract name -> column name in ``df``.
        keep_extra: keep columns that are not in the contract (after the contract columns).
        ts_settings: how a timestamp_ntz or integer-epoch ``ts`` is read.
        void_columns: columns the table declares void (all null; Spark does not read them).
    Returns:
        ``df`` with exactly the contract columns (in contract order, canonical types), then
        ``cast_reject_reason`` when a range-checked cast applies (string: the
        ``out_of_range_<column>`` of the row's first value outside its canonical type, whose
        value is then null; null when every value fits), then the others when ``keep_extra``.
    Raises:
        SchemaMismatchError: naming every missing or mistyped column, expected vs found type.
    """
    from pyspark.sql import functions as F

    column_map = dict(column_map or {})
    plans = plan_columns(df.schema, contract, column_map, ts_settings=ts_settings,
                         void_columns=void_columns)
    if any(p.action == FATAL for p in plans):
        raise schema_error(where, plans)
    cols, checks = [], []
    for plan in plans:
        value, bad = _converted(plan, ts_settings)
        cols.append(value.alias(plan.spec.name))
        if bad is not None:
            checks.append((bad, out_of_range_reason(plan.spec.name)))
    if checks:
        reason = F.when(checks[0][0], F.lit(checks[0][1]))
        for bad, name in checks[1:]:
            reason = reason.when(bad, F.lit(name))
        cols.append(reason.otherwise(F.lit(None).cast("string")).alias(CAST_REJECT_REASON))
    if keep_extra:
        used = {p.source for p in plans} | {s.name for s in contract} | {CAST_REJECT_REASON}
        cols += [F.col(f"`{c}`") for c in df.columns if c not in used]
    return df.select(*cols)


def contract_ddl(contract: Sequence[ColumnSpec]) -> str:
    """The contract as a DDL schema string (canonical types), e.g. for ``createDataFrame``."""
    return ", ".join(f"`{c.name}` {c.type_ddl}" for c in contract)
