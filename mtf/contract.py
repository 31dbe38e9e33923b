"""The table contracts of mtf, in one place: what the jobs read and write (docs/contract.md).

* impression logs (input, docs/contract.md section 1) and the user-profile table (section 4):
  column-name constants, the Spark ``StructType`` and matching Arrow schemas (what the
  simulator emits), and the :class:`ColumnSpec` contract the ETL validates a table against;
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
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pyarrow as pa

from mtf.errors import UserError
from mtf.fusion import DEFAULT_TASKS

if TYPE_CHECKING:  # pyspark is imported only when a Spark schema is built
    from pyspark.sql import DataFrame
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


@dataclass(frozen=True)
class ColumnSpec:
    """One required input column: canonical type and the types accepted (and cast) instead."""

    name: str
    type_ddl: str                       # canonical Spark type, DDL ('double', 'array<double>')
    also_accepted: tuple[str, ...] = ()  # other DDL types cast losslessly to the canonical one


_INTEGRAL = ("tinyint", "smallint")
_NUMERIC = ("float", "int", "bigint", "smallint", "tinyint")


def impression_contract(task_names: Sequence[str]) -> tuple[ColumnSpec, ...]:
    """The impression-log columns for fusion tasks ``task_names`` (docs/contract.md section 1)."""
    if not task_names:
        raise ValueError("impression_contract needs at least one fusion task name")
    return (
        ColumnSpec(EVENT_ID, "string"),
        ColumnSpec(USER_ID, "string"),
        ColumnSpec(REQUEST_ID, "string"),
        ColumnSpec(TS, "timestamp", ("timestamp_ntz",)),
        ColumnSpec(DS, "date"),
        ColumnSpec(ITEM_ID, "string"),
        ColumnSpec(POSITION, "int", _INTEGRAL),
        *(ColumnSpec(pred_column(t), "double", _NUMERIC) for t in task_names),
        ColumnSpec(FUSION_WEIGHTS, "array<double>", ("array<float>",)),
        ColumnSpec(EXPLORE_GROUP, "string"),
        ColumnSpec(ACTION_LOGP, "double", ("float",)),
        ColumnSpec(PLAY_TIME_S, "double", _NUMERIC),
        ColumnSpec(DURATION_S, "double", _NUMERIC),
        *(ColumnSpec(c, "int", _INTEGRAL) for c in INTERACTION_COLUMNS),
        ColumnSpec(APP_SESSION_ID, "string"),
    )


def profile_contract(profile_columns: Sequence[str], *,
                     snapshots: bool = False) -> tuple[ColumnSpec, ...]:
    """user_id (+ ``snapshot_ds``, a date, when ``snapshots``; mtf.etl.pipeline.read_profiles
    reads text and timestamps as dates) + the configured numeric profile columns (cast to
    double). docs/contract.md section 4."""
    numeric = ("float", "int", "bigint", "smallint", "tinyint", "boolean")
    snapshot = (ColumnSpec(SNAPSHOT_DS, "date"),) if snapshots else ()
    return (ColumnSpec(USER_ID, "string"), *snapshot,
            *(ColumnSpec(c, "double", numeric + ("decimal",)) for c in profile_columns))


class SchemaMismatchError(UserError, ValueError):
    """A required input column is missing or has the wrong type; nothing was written."""


def _ddl(dtype: "DataType") -> str:
    return dtype.simpleString()


def _accepts(spec: ColumnSpec, found: str) -> bool:
    if found == spec.type_ddl or found in spec.also_accepted:
        return True
    # decimal(p,s) prints with its precision; accept any when 'decimal' is listed.
    return "decimal" in spec.also_accepted and found.startswith("decimal")


def schema_problems(schema: "StructType", contract: Sequence[ColumnSpec],
                    column_map: Mapping[str, str] | None = None) -> list[str]:
    """Human-readable problems of ``schema`` against ``contract`` ([] when it conforms)."""
    column_map = column_map or {}
    have = {f.name: _ddl(f.dataType) for f in schema.fields}
    problems = []
    for spec in contract:
        source = column_map.get(spec.name, spec.name)
        label = spec.name if source == spec.name else f"{spec.name} (mapped from {source!r})"
        if source not in have:
            problems.append(f"column '{label}' is missing (expected {spec.type_ddl})")
        elif not _accepts(spec, have[source]):
            problems.append(f"column '{label}' has type {have[source]}, expected {spec.type_ddl}")
    return problems


def conform(df: "DataFrame", contract: Sequence[ColumnSpec], *, where: str,
            column_map: Mapping[str, str] | None = None, keep_extra: bool = False) -> "DataFrame":
    """Rename mapped columns, check the contract, cast accepted types to the canonical ones.

    Args:
        df: the table as read.
        contract: required columns (:func:`impression_contract`, :func:`profile_contract`).
        where: what the table is (used in the error message), e.g. ``"raw_logs at /lake/x"``.
        column_map: contract name -> column name in ``df``.
        keep_extra: keep columns that are not in the contract (after the contract columns).
    Returns:
        ``df`` with exactly the contract columns (in contract order, canonical types), plus the
        others when ``keep_extra``.
    Raises:
        SchemaMismatchError: naming every missing or mistyped column, expected vs found type.
    """
    from pyspark.sql import functions as F

    column_map = dict(column_map or {})
    problems = schema_problems(df.schema, contract, column_map)
    if problems:
        raise SchemaMismatchError(f"{where}: schema does not match the input contract "
                                  f"(docs/contract.md section 1): {'; '.join(problems)}")
    have = {f.name: _ddl(f.dataType) for f in df.schema.fields}
    cols = []
    for spec in contract:
        source = column_map.get(spec.name, spec.name)
        col = F.col(f"`{source}`")
        if have[source] != spec.type_ddl:
            col = col.cast(spec.type_ddl)
        cols.append(col.alias(spec.name))
    if keep_extra:
        used = {column_map.get(s.name, s.name) for s in contract} | {s.name for s in contract}
        cols += [F.col(f"`{c}`") for c in df.columns if c not in used]
    return df.select(*cols)


def contract_ddl(contract: Sequence[ColumnSpec]) -> str:
    """The contract as a DDL schema string (canonical types), e.g. for ``createDataFrame``."""
    return ", ".join(f"`{c.name}` {c.type_ddl}" for c in contract)
