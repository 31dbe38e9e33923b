"""The impression-log input contract (design section 2) and the user-profile table, as schemas.

This module is the contract the ETL imports: column-name constants, Spark ``StructType``s and
the matching Arrow schemas (what the simulator's in-process writer and its ``mapInArrow`` job
emit). The ``pred_<task>`` columns follow the configured fusion tasks, so the schemas are built
by functions of the task names; the ``*_SCHEMA`` constants are those for the default tasks
(``mtf.fusion.DEFAULT_TASKS``).

Nullability: ``explore_group``, ``action_logp`` and ``app_session_id`` are nullable (pre-
exploration logs, the deterministic exploit group, users without an app session id); every other
column is non-null in what the simulator writes. Delta stores every column of a DataFrame write
as nullable, so readers must not rely on the table's nullability flags.

Example:
    >>> from mtf.sim.schema import impression_log_schema, USER_ID
    >>> schema = impression_log_schema(cfg.fusion.names)   # StructType for these tasks
"""
from __future__ import annotations

from typing import Sequence

import pyarrow as pa
from pyspark.sql.types import (ArrayType, DataType, DateType, DoubleType, IntegerType,
                               StringType, StructField, StructType, TimestampType)

from mtf.fusion import DEFAULT_TASKS

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

EXPLORE_GROUPS = ("exploit", "noise", "random")
INTERACTION_COLUMNS = (LIKED, SHARED, COMMENTED, FOLLOWED)

# ---- user profiles ---------------------------------------------------------------------------
PROFILE_COLUMNS = ("age", "activity", "tenure", "gender")  # numeric, ~[0, 1]

DEFAULT_TASK_NAMES = tuple(t.name for t in DEFAULT_TASKS)


def pred_column(task: str) -> str:
    """``'click'`` -> ``'pred_click'``."""
    return f"{PRED_PREFIX}{task}"


TS_ARROW = pa.timestamp("us", tz="UTC")


def _columns(task_names: Sequence[str]) -> list[tuple[str, DataType, pa.DataType, bool]]:
    """(name, Spark type, Arrow type, nullable) of every impression-log column, in order."""
    if not task_names:
        raise ValueError("impression_log_schema needs at least one task name")
    cols: list[tuple[str, DataType, pa.DataType, bool]] = [
        (EVENT_ID, StringType(), pa.string(), False),
        (USER_ID, StringType(), pa.string(), False),
        (REQUEST_ID, StringType(), pa.string(), False),
        (TS, TimestampType(), TS_ARROW, False),
        (DS, DateType(), pa.date32(), False),
        (ITEM_ID, StringType(), pa.string(), False),
        (POSITION, IntegerType(), pa.int32(), False),
    ]
    cols += [(pred_column(t), DoubleType(), pa.float64(), False) for t in task_names]
    cols += [
        (FUSION_WEIGHTS, ArrayType(DoubleType(), containsNull=False),
         pa.list_(pa.field("element", pa.float64(), nullable=False)), False),
        (EXPLORE_GROUP, StringType(), pa.string(), True),
        (ACTION_LOGP, DoubleType(), pa.float64(), True),
        (PLAY_TIME_S, DoubleType(), pa.float64(), False),
        (DURATION_S, DoubleType(), pa.float64(), False),
        (LIKED, IntegerType(), pa.int32(), False),
        (SHARED, IntegerType(), pa.int32(), False),
        (COMMENTED, IntegerType(), pa.int32(), False),
        (FOLLOWED, IntegerType(), pa.int32(), False),
        (APP_SESSION_ID, StringType(), pa.string(), True),
    ]
    return cols


def impression_log_schema(task_names: Sequence[str] = DEFAULT_TASK_NAMES) -> StructType:
    """Spark schema of the impression logs for fusion tasks ``task_names`` (in order)."""
    return StructType([StructField(n, st, nullable) for n, st, _, nullable in _columns(task_names)])


def impression_log_arrow_schema(task_names: Sequence[str] = DEFAULT_TASK_NAMES) -> pa.Schema:
    """Arrow schema matching :func:`impression_log_schema` (what the simulator emits)."""
    return pa.schema([pa.field(n, at, nullable) for n, _, at, nullable in _columns(task_names)])


def user_profile_schema(profile_columns: Sequence[str] = PROFILE_COLUMNS) -> StructType:
    """Spark schema of the user-profile table: user_id + numeric profile columns."""
    return StructType([StructField(USER_ID, StringType(), False)]
                      + [StructField(c, DoubleType(), False) for c in profile_columns])


def user_profile_arrow_schema(profile_columns: Sequence[str] = PROFILE_COLUMNS) -> pa.Schema:
    return pa.schema([pa.field(USER_ID, pa.string(), False)]
                     + [pa.field(c, pa.float64(), False) for c in profile_columns])


IMPRESSION_LOG_SCHEMA = impression_log_schema()
USER_PROFILE_SCHEMA = user_profile_schema()
