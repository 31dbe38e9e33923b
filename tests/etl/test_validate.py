"""Row rules: every bad-input rule routes the row to one reason; duplicates keep the first."""
from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from mtf import contract as S
from mtf.etl.validate import (DUP_KEY_HASH, REASONS, RowRules, add_reject_reason,
                              add_row_reason, candidate_duplicate_keys, mark_duplicates,
                              ranked_candidate_rows, rows_without_candidates)
from tests.etl.logs import DAY1, at, imp, logs_df

RULES = RowRules(weights_lo=(0.0,) * 6, weights_hi=(2.0,) * 6)
T = at(DAY1, 12)

BAD_ROWS = [
    ({S.EVENT_ID: None}, "null_event_id"),
    ({S.USER_ID: ""}, "null_user_id"),
    ({S.REQUEST_ID: None}, "null_request_id"),
    ({S.ITEM_ID: None}, "null_item_id"),
    ({S.TS: None, S.DS: DAY1}, "null_ts"),
    ({S.POSITION: None}, "null_position"),
    ({S.DS: at(DAY1, 1).date().replace(day=2)}, "ds_mismatch"),
    ({S.DS: None}, "ds_mismatch"),
    ({S.LIKED: None}, "null_feedback"),
    ({S.DURATION_S: None}, "null_feedback"),
    ({S.PLAY_TIME_S: -0.5}, "negative_play_time"),
    ({S.PLAY_TIME_S: 30_000.0, S.DURATION_S: 40_000.0}, "absurd_play_time"),
    ({S.PLAY_TIME_S: math.nan}, "absurd_play_time"),
    ({S.DURATION_S: -1.0}, "invalid_duration"),
    ({S.DURATION_S: math.inf}, "invalid_duration"),
    ({S.PLAY_TIME_S: 250.0, S.DURATION_S: 20.0}, "play_time_exceeds_duration"),
    ({S.SHARED: 2}, "invalid_interaction"),
    ({S.FUSION_WEIGHTS: None}, "null_fusion_weights"),
    ({S.FUSION_WEIGHTS: [1.0] * 5}, "fusion_weights_length"),
    ({S.FUSION_WEIGHTS: [1.0] * 7}, "fusion_weights_length"),
    ({S.FUSION_WEIGHTS: [1.0, 1.0, 2.5, 1.0, 1.0, 1.0]}, "fusion_weights_out_of_range"),
    ({S.FUSION_WEIGHTS: [1.0, 1.0, math.nan, 1.0, 1.0, 1.0]}, "fusion_weights_out_of_range"),
    ({S.FUSION_WEIGHTS: [-0.1, 1.0, 1.0, 1.0, 1.0, 1.0]}, "fusion_weights_out_of_range"),
    ({S.EXPLORE_GROUP: "greedy"}, "unknown_explore_group"),
]


def test_every_rule_gives_its_reason_and_good_rows_pass(spark) -> None:
    rows = [imp("u", f"r{i}", T, **{S.EVENT_ID: f"bad{i}", **kw})
            for i, (kw, _) in enumerate(BAD_ROWS)]
    rows += [imp("u", "ok1", T, event_id="ok1"),
             imp("u", "ok2", T, event_id="ok2", explore_group=None, action_logp=None,
                 play_time_s=200.0, duration_s=20.0, fusion_weights=[0.0, 2.0, 1.0, 1.0, 1.0, 1.0],
                 app_session_id="")]
    got = {r[S.EVENT_ID]: r[S.REJECT_REASON] for r in
           add_reject_reason(logs_df(spark, rows), rules=RULES).collect()}
    want = {f"bad{i}": reason for i, (_, reason) in enumerate(BAD_ROWS)}
    want[None] = "null_event_id"
    del want["bad0"]
    want.update({"ok1": None, "ok2": None})
    assert got == want


def test_reason_order_first_rule_wins(spark) -> None:
    row = imp("u", "r", T, user_id=None, play_time_s=-1.0, explore_group="x")
    got = add_reject_reason(logs_df(spark, [row]), rules=RULES).first()[S.REJECT_REASON]
    assert got == "null_user_id"
    assert REASONS.index("null_user_id") < REASONS.index("negative_play_time")


def _dup_rows() -> list[dict]:
    return [
        imp("u", "r1", T, 0, event_id="e1"),                       # kept (earliest)
        imp("u", "r1", at(DAY1, 12, 0, 5), 0, event_id="e1"),      # later copy -> duplicate
        imp("u", "r1", T, 0, event_id="e1", liked=5),              # invalid: own reason
        imp("u", "r2", T, 0, event_id="e2"),                       # identical copies:
        imp("u", "r2", T, 0, event_id="e2"),                       # one kept, one duplicate
        imp("u", "r3", at(DAY1, 13), 0, event_id="e3"),
        imp("u", "r3", at(DAY1.replace(day=2), 13), 0, event_id="e3"),  # other day: kept
        imp("u", "r4", T, 0, event_id="e4", liked=5),              # copies that are all invalid:
        imp("u", "r4", T, 0, event_id="e4", liked=5),              # a candidate key, no duplicate
    ]


@pytest.mark.parametrize("path", ["window", "broadcast", "broadcast-superset"])
def test_duplicates_keep_one_quarantine_the_others(spark, path: str) -> None:
    df = add_row_reason(logs_df(spark, _dup_rows()), rules=RULES)
    if path == "window":
        out = mark_duplicates(df)
    else:  # as the job: rank the candidate keys' rows only, pass the others through
        candidates = candidate_duplicate_keys(df) if path == "broadcast" else df.select(
            # every key a candidate, as if every hash collided: the result is the same
            F.xxhash64(S.DS, S.EVENT_ID).alias(DUP_KEY_HASH)).distinct()
        out = rows_without_candidates(df, candidates).unionByName(
            ranked_candidate_rows(df, candidates))
    got = sorted((r[S.EVENT_ID], str(r[S.TS]), r[S.LIKED], r[S.REJECT_REASON] or "")
                 for r in out.collect())
    assert got == sorted([
        ("e1", "2026-01-01 12:00:00", 0, ""),
        ("e1", "2026-01-01 12:00:05", 0, "duplicate_event_id"),
        ("e1", "2026-01-01 12:00:00", 5, "invalid_interaction"),
        ("e2", "2026-01-01 12:00:00", 0, ""),
        ("e2", "2026-01-01 12:00:00", 0, "duplicate_event_id"),
        ("e3", "2026-01-01 13:00:00", 0, ""),
        ("e3", "2026-01-02 13:00:00", 0, ""),
        ("e4", "2026-01-01 12:00:00", 5, "invalid_interaction"),
        ("e4", "2026-01-01 12:00:00", 5, "invalid_interaction"),
    ])
    assert out.columns == df.columns
    keys = df.select(S.DS, S.EVENT_ID).distinct().withColumn(
        DUP_KEY_HASH, F.xxhash64(S.DS, S.EVENT_ID))
    assert sorted(tuple(r) for r in keys.join(candidate_duplicate_keys(df), DUP_KEY_HASH).select(
        F.col(S.DS).cast("string"), S.EVENT_ID).collect()) == [("2026-01-01", "e1"),
                                                               ("2026-01-01", "e2"),
                                                               ("2026-01-01", "e4")]
