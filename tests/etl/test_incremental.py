"""Daily runs: day 2 continues day 1's open session, fixes day 1's truncated row, equals a full
rebuild; a re-run replaces exactly its day; a failed write leaves the table as it was; the CLI.

Same logs as test_job (user b's session b1 D1 23:50 -> b2 D2 00:10 spans midnight).
"""
from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

import mtf.etl.pipeline as pipeline
from mtf.config import load_config
from mtf import contract as S
from mtf.etl.pipeline import run_build_transitions
from tests.etl.logs import DAY1, at, write_logs, write_profiles
from tests.etl.test_job import D2, PROFILES, bad_rows, good_rows, session_id

SPLIT = "etl.test_start_ts=2026-01-01T10:30:00"   # a fixed split: runs are comparable


def _table(spark, path: str) -> dict:
    rows = spark.read.format("delta").load(path).collect()
    return {(r.user_id, r.ts.replace(tzinfo=dt.timezone.utc)): r.asDict() for r in rows}


def _version(spark, path: str) -> int:
    from mtf.delta import table_version
    return table_version(spark, path)


@pytest.fixture(scope="module")
def daily(spark, tmp_path_factory):
    """D1 run, D2 run, D2 re-run on one lake; a full rebuild of the same logs on another."""
    root = tmp_path_factory.mktemp("daily")
    raw = str(root / "raw_impressions")
    write_logs(spark, good_rows() + bad_rows(), raw)
    write_profiles(spark, PROFILES, str(root / "user_profiles"))
    base = [f"lake.root={root}", SPLIT]
    path = load_config(None, base).lake.path("transitions")
    out = {"path": path, "root": root}
    out["s1"] = run_build_transitions(spark, load_config(None, [*base, "etl.start_ds=2026-01-01"]))
    out["day1"], out["v1"] = _table(spark, path), _version(spark, path)
    out["s2"] = run_build_transitions(spark, load_config(None, [*base, "etl.start_ds=2026-01-02"]))
    out["day2"], out["v2"] = _table(spark, path), _version(spark, path)
    out["s2b"] = run_build_transitions(spark, load_config(None, [*base, "etl.start_ds=2026-01-02"]))
    out["day2b"], out["v2b"] = _table(spark, path), _version(spark, path)
    full_cfg = load_config(None, [f"lake.root={root}/full", f"lake.raw_logs={raw}",
                                  f"lake.user_profiles={root}/user_profiles", SPLIT])
    run_build_transitions(spark, full_cfg)
    out["full"] = _table(spark, full_cfg.lake.path("transitions"))
    return out


def test_day1_marks_the_session_open_at_midnight_truncated(daily) -> None:
    day1 = daily["day1"]
    assert {k[1].date() for k in day1} == {DAY1}
    b1 = day1[("b", at(DAY1, 23, 50))]
    assert (b1["is_truncated"], b1["is_terminal"]) == (True, False)
    # Its bootstrap state: a request at D2 00:00 (10 min later), step 1, after b1's item.
    assert b1["next_state"][21] == pytest.approx(1 / 20)                       # sess_step
    assert b1["next_state"][24] == pytest.approx(math.log1p(1 / 6) / math.log1p(168))
    assert daily["s1"].rows_in == 10 and daily["s1"].truncated_steps == 1


def test_day2_continues_the_session_and_fixes_day1(daily) -> None:
    day1, day2 = daily["day1"], daily["day2"]
    b1, b2 = day2[("b", at(DAY1, 23, 50))], day2[("b", at(D2, 0, 10))]
    sid = session_id("b", at(DAY1, 23, 50), "b1")
    assert (b1["session_id"], b2["session_id"], b1["step"], b2["step"]) == (sid, sid, 0, 1)
    assert (b1["is_truncated"], b1["is_terminal"]) == (False, False)
    assert b1["next_state"] == b2["state"]
    assert b1["state"] == day1[("b", at(DAY1, 23, 50))]["state"]
    assert daily["s2"].previous_rows_rewritten == 1
    # Finished sessions of day 1 are untouched.
    for key, r in day1.items():
        if key != ("b", at(DAY1, 23, 50)):
            assert day2[key] == r, key


def test_incremental_days_equal_a_full_rebuild(daily) -> None:
    day2, full = daily["day2"], daily["full"]
    assert day2.keys() == full.keys() and len(full) == 9
    for key in full:
        assert day2[key] == full[key], key


def test_rerun_of_a_day_is_idempotent(spark, daily) -> None:
    assert daily["day2b"] == daily["day2"]
    assert daily["v2b"] > daily["v2"]
    s2, s2b = daily["s2"], daily["s2b"]
    assert (s2b.rows_in, s2b.steps, s2b.rejected_by_reason) == \
        (s2.rows_in, s2.steps, s2.rejected_by_reason)
    q = spark.read.format("delta").load(str(daily["root"] / "quarantine"))
    assert sorted(r.reject_reason for r in q.collect()) == sorted(
        ["duplicate_event_id", "negative_play_time", "fusion_weights_length",
         "unknown_explore_group"])


def test_failed_write_leaves_the_previous_version(spark, daily, monkeypatch) -> None:
    path = daily["path"]
    before_version, before = _version(spark, path), _table(spark, path)
    real = pipeline.select_transitions

    def poisoned(df):  # a row that fails while the transitions are being written
        out = real(df)
        return out.withColumn(S.REWARD, F.when(F.col(S.STEP) == 1, F.raise_error(
            F.lit("poisoned row"))).otherwise(F.col(S.REWARD)))

    monkeypatch.setattr(pipeline, "select_transitions", poisoned)
    cfg = load_config(None, [f"lake.root={daily['root']}", SPLIT, "etl.start_ds=2026-01-02"])
    with pytest.raises(Exception, match="poisoned row"):
        run_build_transitions(spark, cfg)
    assert _version(spark, path) == before_version
    assert _table(spark, path) == before


def test_cli_build_transitions_in_process(spark, tmp_path, capsys) -> None:
    from mtf.cli import main

    write_logs(spark, good_rows(), str(tmp_path / "raw_impressions"))
    args = ["build-transitions", f"lake.root={tmp_path}", "etl.start_ds=2026-01-02",
            "etl.lookback_days=1"]
    assert main(args) == 2   # fatal, nothing written
    assert "error: no user-profile table" in capsys.readouterr().err
    assert not (tmp_path / "transitions").exists()
    write_profiles(spark, PROFILES, str(tmp_path / "user_profiles"))
    assert main(args) == 0
    df = spark.read.format("delta").load(str(tmp_path / "transitions"))
    assert sorted((str(r.ts), r.step) for r in df.collect()) == [("2026-01-02 00:10:00", 1),
                                                                 ("2026-01-02 23:45:00", 0)]
    assert main(["build-transitions", f"lake.root={tmp_path}", "etl.session_gap_s=0"]) == 2
    assert "etl: session_gap_s must be > 0" in capsys.readouterr().err
