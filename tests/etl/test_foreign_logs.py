"""The new user's path: impression logs written with pandas through ``deltalake.write_deltalake``
(int64 position and flags, an all-null Int64 app_session_id, naive datetime64 ts) build without
any cast by hand, into the same transitions as the same logs in the canonical types; values that
do not fit the canonical types are quarantined with out_of_range_<column>, and `mtf check-logs`
reports exactly what the build quarantines."""
from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from mtf import contract as S
from mtf.cli import main
from mtf.config import load_config
from mtf.etl.pipeline import run_build_transitions
from tests.etl.logs import (DAY1, at, imp, pandas_logs, write_logs, write_logs_deltalake,
                            write_profiles)
from tests.etl.test_job import D2, PROFILES, bad_rows, good_rows

INT_MAX = 2**31 - 1


def common_rows() -> list[dict]:
    """test_job's logs without app session ids (the new user had none), plus two null ids."""
    rows = [{**r, S.APP_SESSION_ID: None} for r in good_rows() + bad_rows()]
    return rows + [imp("y", "y1", at(DAY1, 13), user_id=None, event_id="y/y1/0"),
                   imp("y", "y2", at(D2, 13), play_time_s=None)]


# Values an int64 column holds and an int column cannot: (row, reason). The last is a second
# copy of a valid event: out of range first, so it is no duplicate and a/a1/1 stays valid.
OUT_OF_RANGE = [
    (imp("z", "z3", at(DAY1, 14), position=INT_MAX + 1), "out_of_range_position"),
    (imp("z", "z4", at(D2, 14), position=-2**40), "out_of_range_position"),
    (imp("z", "z5", at(D2, 15), liked=2**40), "out_of_range_liked"),
    (imp("z", "z6", at(DAY1, 15), followed=-INT_MAX - 2), "out_of_range_followed"),
    (imp("a", "a1", at(DAY1, 10), 1, liked=2**32), "out_of_range_liked"),
]
CANONICAL_REJECTS = {"duplicate_event_id": 1, "unknown_explore_group": 1,
                     "negative_play_time": 1, "fusion_weights_length": 1, "null_user_id": 1,
                     "null_feedback": 1}


def build(spark, root) -> tuple:
    write_profiles(spark, PROFILES, str(root / "user_profiles"))
    cfg = load_config(None, [f"lake.root={root}", "etl.train_fraction=0.5"])
    return cfg, run_build_transitions(spark, cfg)


@pytest.fixture(scope="module")
def lakes(spark, tmp_path_factory):
    """(canonical cfg, summary), (pandas cfg, summary, root): both built, full rebuild."""
    canon_root = tmp_path_factory.mktemp("canonical")
    write_logs(spark, common_rows(), str(canon_root / "raw_impressions"))
    rows = common_rows() + [r for r, _ in OUT_OF_RANGE]
    df = pandas_logs(rows, app_session_id=pd.array([None] * len(rows), dtype="Int64"))
    pandas_root = tmp_path_factory.mktemp("pandas")
    write_logs_deltalake(df, str(pandas_root / "raw_impressions"))
    return build(spark, canon_root), (*build(spark, pandas_root), pandas_root)


def test_pandas_wrote_what_the_new_user_had(spark, lakes) -> None:
    _, (cfg, _, _) = lakes
    types = dict(spark.read.format("delta").load(cfg.lake.path("raw_logs")).dtypes)
    assert {c: types[c] for c in ("position", "liked", "shared", "commented", "followed",
                                  "app_session_id", "ts")} == {
        "position": "bigint", "liked": "bigint", "shared": "bigint", "commented": "bigint",
        "followed": "bigint", "app_session_id": "bigint", "ts": "timestamp_ntz"}


def _rows(spark, path: str, key: tuple[str, ...]) -> list[dict]:
    rows = [r.asDict(recursive=True) for r in spark.read.format("delta").load(path).collect()]
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in key))


def test_same_transitions_as_the_canonical_table(spark, lakes) -> None:
    (canon, canon_summary), (cfg, summary, _) = lakes
    got = _rows(spark, cfg.lake.path("transitions"), (S.SESSION_ID, S.STEP))
    want = _rows(spark, canon.lake.path("transitions"), (S.SESSION_ID, S.STEP))
    assert len(got) == 9 and got == want
    assert (summary.steps, summary.sessions, summary.rows_valid) == \
        (canon_summary.steps, canon_summary.sessions, canon_summary.rows_valid) == (9, 5, 10)


def test_out_of_range_rows_are_quarantined_with_their_reason(spark, lakes) -> None:
    (canon, canon_summary), (cfg, summary, _) = lakes
    assert canon_summary.rejected_by_reason == CANONICAL_REJECTS
    want = Counter(CANONICAL_REJECTS) + Counter(reason for _, reason in OUT_OF_RANGE)
    assert summary.rejected_by_reason == dict(want)
    assert (summary.rows_in, summary.rows_quarantined) == (21, 11)
    key = (S.EVENT_ID, S.REJECT_REASON, S.POSITION)
    got = _rows(spark, cfg.lake.path("quarantine"), key)
    canonical = _rows(spark, canon.lake.path("quarantine"), key)
    assert [r for r in got if not r[S.REJECT_REASON].startswith("out_of_range_")] == canonical
    out = {(r[S.USER_ID], r[S.REQUEST_ID], r[S.REJECT_REASON]): r for r in got
           if r[S.REJECT_REASON].startswith("out_of_range_")}
    assert sorted(out) == sorted((r[S.USER_ID], r[S.REQUEST_ID], reason)
                                 for r, reason in OUT_OF_RANGE)
    # The value that does not fit is null in the quarantine, never wrapped; the rest is kept.
    z3 = out[("z", "z3", "out_of_range_position")]
    assert (z3[S.POSITION], z3[S.LIKED], z3[S.PLAY_TIME_S]) == (None, 0, 10.0)
    assert out[("z", "z5", "out_of_range_liked")][S.LIKED] is None
    assert out[("z", "z6", "out_of_range_followed")][S.FOLLOWED] is None


def test_check_logs_counts_what_the_build_quarantined(spark, lakes, tmp_path, capsys) -> None:
    _, (cfg, summary, root) = lakes
    out = tmp_path / "check.json"
    before = sorted(p.name for p in root.iterdir())
    assert main(["check-logs", f"lake.root={root}", "spark.shuffle_partitions=2",
                 f"check.json_out={out}"]) == 0
    report = json.loads(out.read_text())
    assert report["buildable"] and report["error"] == ""
    assert report["rejected_by_reason"] == summary.rejected_by_reason
    assert (report["rows_checked"], report["rows_valid"], report["rows_rejected"]) == \
        (summary.rows_in, summary.rows_valid, summary.rows_quarantined) == (21, 10, 11)
    columns = {c["column"]: c for c in report["columns"]}
    assert {n: (columns[n]["found"], columns[n]["action"]) for n in
            ("position", "liked", "app_session_id", "ts", "event_id")} == {
        "position": ("bigint", "cast with range check"),
        "liked": ("bigint", "cast with range check"),
        "app_session_id": ("bigint", "cast"), "ts": ("timestamp_ntz", "cast"),
        "event_id": ("string", "as-is")}
    assert (columns["user_id"]["nulls"], columns["play_time_s"]["nulls"],
            columns["position"]["nulls"], columns["app_session_id"]["nulls"]) == (1, 1, 0, None)
    text = capsys.readouterr().out
    assert "rows checked: 21, valid: 10, would be quarantined: 11 (52.38%)" in text
    assert "  out_of_range_liked     2" in text.splitlines()
    assert sorted(p.name for p in root.iterdir()) == before          # wrote nothing

    # One output day: the build's quarantine rows of that day, per reason.
    assert main(["check-logs", f"lake.root={root}", "spark.shuffle_partitions=2",
                 f"etl.start_ds={D2}", "check.print_json=true"]) == 0
    day = json.loads(capsys.readouterr().out)
    q = spark.read.format("delta").load(cfg.lake.path("quarantine")).where(f"ds = '{D2}'")
    want = Counter(r[S.REJECT_REASON] for r in q.collect())
    assert (day["start_ds"], day["end_ds"], day["full_rebuild"]) == (str(D2), str(D2), False)
    assert day["rejected_by_reason"] == dict(want) and day["rows_rejected"] == 5
