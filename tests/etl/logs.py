"""Hand-built impression logs for the ETL tests: readable rows with defaults, written to Delta."""
from __future__ import annotations

import datetime as dt
from typing import Any, Sequence

from mtf import contract as S

TASKS = ("click", "like", "share", "finish", "watch_time", "exit")
UTC = dt.timezone.utc
DAY1 = dt.date(2026, 1, 1)


def at(day: dt.date, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC)


def imp(user: str, request: str, when: dt.datetime, pos: int = 0, **kw: Any) -> dict:
    """One impression row with contract defaults (valid, weights 1.0 -> action 0); ``kw``
    overrides any column."""
    row = {
        S.EVENT_ID: f"{user}/{request}/{pos}", S.USER_ID: user, S.REQUEST_ID: request,
        S.TS: when, S.DS: when.astimezone(UTC).date(),
        S.ITEM_ID: f"item{pos}", S.POSITION: pos,
        **{S.pred_column(t): 0.5 for t in TASKS},
        S.FUSION_WEIGHTS: [1.0] * len(TASKS), S.EXPLORE_GROUP: "exploit", S.ACTION_LOGP: -1.0,
        S.PLAY_TIME_S: 10.0, S.DURATION_S: 20.0,
        S.LIKED: 0, S.SHARED: 0, S.COMMENTED: 0, S.FOLLOWED: 0, S.APP_SESSION_ID: None,
    }
    row.update(kw)
    return row


def page(user: str, request: str, when: dt.datetime, n: int = 2, **kw: Any) -> list[dict]:
    """A request showing ``n`` items (positions 0..n-1), same feedback on each."""
    return [imp(user, request, when, p, **kw) for p in range(n)]


def logs_df(spark: Any, rows: Sequence[dict], tasks: Sequence[str] = TASKS) -> Any:
    contract = S.impression_contract(tasks)
    names = [c.name for c in contract]
    return spark.createDataFrame([tuple(r.get(n) for n in names) for r in rows],
                                 schema=S.contract_ddl(contract))


def write_logs(spark: Any, rows: Sequence[dict], path: str, mode: str = "overwrite",
               tasks: Sequence[str] = TASKS) -> None:
    (logs_df(spark, rows, tasks).write.format("delta").mode(mode).partitionBy(S.DS)
     .save(path))


def write_profiles(spark: Any, rows: Sequence[dict], path: str,
                   columns: Sequence[str] = ("age", "activity", "tenure", "gender")) -> None:
    ddl = ", ".join([f"{S.USER_ID} string", *(f"{c} double" for c in columns)])
    spark.createDataFrame([tuple(r.get(c) for c in (S.USER_ID, *columns)) for r in rows],
                          schema=ddl).write.format("delta").mode("overwrite").save(path)


def pandas_logs(rows: Sequence[dict], **columns: Any) -> Any:
    """``rows`` as pandas makes them from Python values, the way other tools write logs: int64
    integers, naive ``datetime64[ns]`` ts (the UTC wall clock), NaN for a missing float.
    ``columns`` replace whole columns (e.g. ``app_session_id=pd.array([None] * n, "Int64")``)."""
    import pandas as pd

    df = pd.DataFrame(list(rows))
    df[S.TS] = pd.to_datetime(df[S.TS], utc=True).dt.tz_localize(None)
    for name, values in columns.items():
        df[name] = values
    return df


def write_logs_deltalake(df: Any, path: str) -> None:
    """A pandas frame -> a Delta table, written by ``deltalake`` (delta-rs), not Spark."""
    from deltalake import write_deltalake

    write_deltalake(path, df, partition_by=[S.DS], mode="overwrite")
