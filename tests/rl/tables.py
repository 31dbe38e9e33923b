"""Synthetic transition tables (the contract of docs/contract.md section 2) for the trainer's
tests.

Rows come from a seeded numpy generator; Spark writes them through mtf.delta.write_delta with
the layout table properties, repartitioned into several files (petastorm shards whole row
groups, one per file here).
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

# The fusion tasks of conf/local.yaml, so `mtf train` with the default config accepts the table.
TASKS = ("click", "like", "share", "finish", "watch_time", "exit")
FEATURE_VERSION = "test-v1"


def feature_names(state_dim: int) -> tuple[str, ...]:
    return tuple(f"f{i}" for i in range(state_dim))


def layout_properties(state_dim: int, tasks: Sequence[str] = TASKS,
                      feature_version: str = FEATURE_VERSION) -> dict[str, str]:
    return {"mtf.feature_names": json.dumps(list(feature_names(state_dim))),
            "mtf.feature_version": feature_version,
            "mtf.action_tasks": json.dumps(list(tasks))}


def transition_rows(n_sessions: int, state_dim: int, action_dim: int, seed: int,
                    test_share: float = 0.2) -> dict[str, np.ndarray]:
    """Sessions of 1-5 steps; the last step of a session is terminal or (1 in 4) truncated."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, size=n_sessions)
    n = int(lengths.sum())
    session = np.repeat(np.arange(n_sessions), lengths)
    step = np.concatenate([np.arange(k) for k in lengths])
    last = np.concatenate([np.arange(k) == k - 1 for k in lengths])
    truncated_session = rng.random(n_sessions) < 0.25
    is_truncated = last & truncated_session[session]
    is_terminal = last & ~truncated_session[session]
    # Features with non-trivial location and scale, so normalisation matters.
    state = (rng.normal(size=(n + 1, state_dim)) * np.linspace(0.5, 3.0, state_dim)
             + np.linspace(-2.0, 5.0, state_dim)).astype(np.float32)
    next_state = state[1:].copy()
    next_state[is_terminal] = 0.0
    action = rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32)
    reward = (state[:n, 0] * 0.1 - (action ** 2).mean(axis=1)).astype(np.float64)
    test_sessions = rng.random(n_sessions) < test_share
    return {"session": session, "step": step, "state": state[:n], "next_state": next_state,
            "action": action, "reward": reward, "is_terminal": is_terminal,
            "is_truncated": is_truncated,
            "split": np.where(test_sessions[session], "test", "train")}


def write_transitions(spark: Any, path: str, *, n_sessions: int = 300, state_dim: int = 5,
                      tasks: Sequence[str] = TASKS, n_files: int = 4, seed: int = 0,
                      test_share: float = 0.2,
                      properties: Mapping[str, str] | None = None,
                      explore_groups: Sequence[str] = ("noise",)) -> int:
    """Write a synthetic transitions table at ``path``; returns its Delta version."""
    import pandas as pd
    from pyspark.sql import functions as F

    from mtf.delta import write_delta

    rows = transition_rows(n_sessions, state_dim, len(tasks), seed, test_share)
    n = len(rows["step"])
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        rows["session"] * 600 + rows["step"] * 30, unit="s")
    pdf = pd.DataFrame({
        "session_id": [f"s{i}" for i in rows["session"]],
        "user_id": [f"u{i % 50}" for i in rows["session"]],
        "step": rows["step"].astype("int32"),
        "ts": ts,
        "state": [list(map(float, r)) for r in rows["state"]],
        "next_state": [list(map(float, r)) for r in rows["next_state"]],
        "action": [list(map(float, r)) for r in rows["action"]],
        "action_logp": np.where(np.arange(n) % 3 == 0, np.nan, -1.5),
        "reward": rows["reward"],
        "reward_stickiness": rows["reward"] * 0.5,
        "reward_activeness": rows["reward"] * 0.5,
        "is_terminal": rows["is_terminal"],
        "is_truncated": rows["is_truncated"],
        "explore_group": np.asarray(explore_groups, dtype=object)[
            rows["session"] % len(explore_groups)],
        "split": rows["split"],
    })
    df = (spark.createDataFrame(pdf, schema=transitions_schema())
          .withColumn("ds", F.to_date("ts"))
          .repartition(n_files))
    props = layout_properties(state_dim, tasks) if properties is None else dict(properties)
    return write_delta(df, path, mode="overwrite", partition_by=["ds"], properties=props)


def transitions_schema() -> Any:
    """The transitions table's Spark schema (docs/contract.md section 2), without ds."""
    from pyspark.sql import types as T

    floats = T.ArrayType(T.FloatType(), False)
    return T.StructType([
        T.StructField("session_id", T.StringType(), False),
        T.StructField("user_id", T.StringType(), False),
        T.StructField("step", T.IntegerType(), False),
        T.StructField("ts", T.TimestampType(), False),
        T.StructField("state", floats, False),
        T.StructField("next_state", floats, False),
        T.StructField("action", floats, False),
        T.StructField("action_logp", T.DoubleType(), True),
        T.StructField("reward", T.DoubleType(), False),
        T.StructField("reward_stickiness", T.DoubleType(), False),
        T.StructField("reward_activeness", T.DoubleType(), False),
        T.StructField("is_terminal", T.BooleanType(), False),
        T.StructField("is_truncated", T.BooleanType(), False),
        T.StructField("explore_group", T.StringType(), True),
        T.StructField("split", T.StringType(), False),
    ])
