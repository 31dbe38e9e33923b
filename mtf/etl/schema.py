"""Column names, the input contract the ETL validates against, and the output schemas.

Input (design.md section 2): impression logs, one row per item shown, and a user-profile table.
Output (design.md section 3): the transition table (one row per request) and the quarantine table
(rejected input rows plus a reason). Every stage refers to these constants, never to literals.

The contract is built from the config (the ``pred_<task>`` columns follow ``cfg.fusion``, the
profile columns follow ``cfg.features``), so :func:`impression_contract` and
:func:`profile_contract` are functions. :func:`conform` checks a DataFrame against a contract and
raises :class:`SchemaMismatchError` naming every missing or mistyped column before anything is
written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from mtf.sim.schema import (  # noqa: F401  the input contract lives with its writer
    ACTION_LOGP, APP_SESSION_ID, COMMENTED, DS, DURATION_S, EVENT_ID, EXPLORE_GROUP, FOLLOWED,
    FUSION_WEIGHTS, ITEM_ID, LIKED, PLAY_TIME_S, POSITION, PRED_PREFIX, REQUEST_ID, SHARED, TS,
    USER_ID, pred_column)
from mtf.sim.schema import INTERACTION_COLUMNS as INTERACTIONS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import DataType, StructType

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
    """The impression-log columns for fusion tasks ``task_names`` (design.md section 2)."""
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
        *(ColumnSpec(c, "int", _INTEGRAL) for c in INTERACTIONS),
        ColumnSpec(APP_SESSION_ID, "string"),
    )


def profile_contract(profile_columns: Sequence[str]) -> tuple[ColumnSpec, ...]:
    """user_id + the configured numeric profile columns (cast to double)."""
    numeric = ("float", "int", "bigint", "smallint", "tinyint", "boolean")
    return (ColumnSpec(USER_ID, "string"),
            *(ColumnSpec(c, "double", numeric + ("decimal",)) for c in profile_columns))


class SchemaMismatchError(ValueError):
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
                                  f"(design.md section 2): {'; '.join(problems)}")
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
