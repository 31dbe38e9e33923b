"""Sessions over a user's requests: app session id when present, else an inactivity gap.

A user's requests, in order, start a new session when

* it is the user's first request in the data read, or
* more than ``gap_s`` seconds passed since the previous request (a gap of exactly ``gap_s``
  continues the session), or
* both requests carry an app session id and the ids differ.

So the app session id splits sessions more finely than the gap, and the gap always ends a
session, with or without an id: a session is decidable as ended ``gap_s`` after its last request,
which is what makes ``is_terminal`` well defined at the end of a day (docs/etl.md).

``session_id`` = first 32 hex digits of sha256(user_id, ts and request_id of the session's first
request): stable across runs, so a session that continues over midnight keeps its id and its
step numbering in the next day's run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mtf.etl import schema as S
from mtf.etl.history import IMP_START, hist_cum_col
from mtf.etl.state import PREV_TS, SESS_IMP_START, sess_cum_col
from mtf.etl.steps import APP_SID_HASH
from mtf.features import SESSION_BEHAVIOURS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

IS_NEW_SESSION = "is_new_session"
SESSION_START_TS = "session_start_ts"
REQ_NO = "req_no"               # 0-based request number within the user
SESSION_ID_HEX = 32             # hex digits kept of the sha256 (128 bits)


def session_id_expr(user_id: "Column", ts: "Column", request_id: "Column") -> "Column":
    """The session id of a session whose first request is (user_id, ts, request_id)."""
    from pyspark.sql import functions as F
    key = F.concat_ws("\u001f", user_id, F.unix_micros(ts).cast("string"), request_id)
    return F.substring(F.sha2(key, 256), 1, SESSION_ID_HEX)


def sessionize(steps: "DataFrame", *, gap_s: int) -> "DataFrame":
    """Assign sessions and 0-based steps to request rows.

    Requires (one row per request): user_id, ts, request_id, ``imp_start`` (orders a user's
    requests), ``app_sid_hash`` (null when the request has no app session id), ``cx_<b>`` for
    the session behaviours. Adds: ``prev_ts`` (ts of the user's previous request), ``req_no``,
    ``is_new_session``, ``session_id``, ``step``, ``session_start_ts``, ``sess_imp_start`` and
    ``sess_cx_<b>`` (values at the session's first request, for the session features).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_user = Window.partitionBy(S.USER_ID).orderBy(IMP_START)
    running = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    prev_ts = F.lag(S.TS, 1).over(by_user)
    prev_sid = F.lag(APP_SID_HASH, 1).over(by_user)
    gap = (F.unix_micros(F.col(S.TS)) - F.unix_micros(prev_ts)).cast("double") / 1e6
    sid = F.col(APP_SID_HASH)
    new = (prev_ts.isNull() | (gap > float(gap_s))
           | (sid.isNotNull() & prev_sid.isNotNull() & (sid != prev_sid)))
    steps = steps.select("*", prev_ts.alias(PREV_TS), new.alias(IS_NEW_SESSION),
                         (F.row_number().over(by_user) - 1).alias(REQ_NO))

    def at_start(c: "Column") -> "Column":
        return F.last(F.when(F.col(IS_NEW_SESSION), c), ignorenulls=True).over(running)

    steps = steps.select(
        "*",
        at_start(session_id_expr(F.col(S.USER_ID), F.col(S.TS), F.col(S.REQUEST_ID)))
        .alias(S.SESSION_ID),
        (F.col(REQ_NO) - at_start(F.col(REQ_NO))).cast("int").alias(S.STEP),
        at_start(F.col(S.TS)).alias(SESSION_START_TS),
        at_start(F.col(IMP_START)).alias(SESS_IMP_START),
        *(at_start(F.col(hist_cum_col(b))).alias(sess_cum_col(b)) for b in SESSION_BEHAVIOURS))
    return steps
