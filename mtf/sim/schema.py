"""The impression-log input contract (design section 2) and the user-profile table, as schemas.

This module is the contract the ETL imports: column-name constants, Spark ``StructType``s and
the matching Arrow schemas (what the simulator's in-process writer and its ``mapInArrow`` job
emit). The ``pred_<task>`` columns follow the configured fusion tasks, so the schemas are built
by functions of the task names; ``IMPRESSION_LOG_SCHEMA`` / ``USER_PROFILE_SCHEMA`` are those
for the default tasks (``mtf.fusion.DEFAULT_TASKS``) and profile columns. pyspark is imported
only when a Spark schema is built, so the in-process simulator runs without it.

Nullability: ``explore_group``, ``action_logp`` and ``app_session_id`` are nullable (pre-
exploration logs, the deterministic exploit group, users without an app session id); every other
column is non-null in what the simulator writes. Delta stores every column of a DataFrame write
as nullable, so readers must not rely on the table's nullability flags.

Example:
    >>> from mtf.sim.schema import impression_log_schema, USER_ID
    >>> schema = impression_log_schema(cfg.fusion.names)   # StructType for these tasks
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa

from mtf.exploration import EXPLORE_GROUPS  # noqa: F401  (exploit / noise / random)
from mtf.fusion import DEFAULT_TASKS

if TYPE_CHECKING:  # pyspark is imported only when a Spark schema is built
    from pyspark.sql.types import DataType, StructType

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
