"""The build job end to end on hand-built logs: exact sessions, steps, rewards, states, flags,
quarantine, summary, table properties; incremental days, idempotent re-runs, failures.

Logs (D1 = 2026-01-01, D2 = 2026-01-02; gap 30 min):

* user a: a1 10:00 (2 items, one liked, logged weights -> action [-1, 1, 0, -.5, .5, 0]),
  a2 10:20 (same session), a3 11:00 (40 min later: new session).
* user b (midnight): b1 D1 23:50, b2 D2 00:10 (same session), b3 D2 23:45 (new session, 15 min
  before the data ends: truncated).
* user c (app session ids): c1 09:00 'A', c2 09:05 'B' (new session despite the short gap),
  c3 09:10 no id (gap rule: continues c2's session).
* bad rows: a duplicate of a1's first impression, a negative play time, fusion weights of the
  wrong length, an unknown explore group.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math

import pytest
from pyspark.sql import functions as F

from mtf.config import load_config
from mtf import contract as S
from mtf.errors import MissingInputError
from mtf.etl.pipeline import run_build_transitions
from mtf.features import FEATURE_VERSION
from tests.etl.logs import DAY1, at, imp, write_logs, write_profiles

D2 = DAY1 + dt.timedelta(days=1)
WEIGHTS_A1 = [0.0, 2.0, 1.0, 0.5, 1.5, 1.0]
GAP_NORM = math.log1p(168.0)
HIST_NORM = math.log1p(500.0)


def good_rows() -> list[dict]:
    return [
        imp("a", "a1", at(DAY1, 10), 0, liked=1, fusion_weights=WEIGHTS_A1,
            explore_group="noise"),
        imp("a", "a1", at(DAY1, 10), 1, fusion_weights=WEIGHTS_A1, explore_group="noise"),
        imp("a", "a2", at(DAY1, 10, 20), play_time_s=30.0, duration_s=20.0),
        imp("a", "a3", at(DAY1, 11), play_time_s=5.0, duration_s=10.0),
        imp("b", "b1", at(DAY1, 23, 50), play_time_s=60.0, duration_s=60.0, action_logp=None),
        imp("b", "b2", at(D2, 0, 10), play_time_s=1.0, duration_s=30.0),
        imp("b", "b3", at(D2, 23, 45)),
        imp("c", "c1", at(DAY1, 9), app_session_id="A", shared=1, commented=1, followed=1,
            explore_group=None),
        imp("c", "c2", at(DAY1, 9, 5), app_session_id="B"),
        imp("c", "c3", at(DAY1, 9, 10)),
    ]


def bad_rows() -> list[dict]:
    return [
        imp("a", "a1", at(DAY1, 10), 0, liked=1, fusion_weights=WEIGHTS_A1,
            explore_group="noise"),                                   # duplicate of a/a1/0
        imp("z", "z1", at(DAY1, 12), play_time_s=-3.0),
        imp("z", "z2", at(D2, 12), fusion_weights=[1.0, 1.0]),
        imp("a", "a9", at(D2, 8), explore_group="greedy"),
    ]


PROFILES = [{"user_id": "a", "age": 0.25, "activity": 0.5, "tenure": 0.75, "gender": 1.0},
            {"user_id": "b", "age": 0.5, "activity": None, "tenure": 2.0, "gender": 0.0}]


def session_id(user: str, ts: dt.datetime, request: str) -> str:
    micros = int(ts.timestamp() * 1_000_000)
    return hashlib.sha256(f"{user}\x1f{micros}\x1f{request}".encode()).hexdigest()[:32]


def overrides(root, *extra: str) -> list[str]:
    return [f"lake.root={root}", *extra]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_logs(spark, good_rows() + bad_rows(), str(root / "raw_impressions"))
    write_profiles(spark, PROFILES, str(root / "user_profiles"))
    return root


@pytest.fixture(scope="module")
def full(spark, lake):
    """One full rebuild of D1..D2 with train_fraction 0.5."""
    cfg = load_config(None, overrides(lake, "etl.train_fraction=0.5"))
    summary = run_build_transitions(spark, cfg)
    rows = spark.read.format("delta").load(cfg.lake.path("transitions")).collect()
    return cfg, summary, {(r.user_id, r.ts.replace(tzinfo=dt.timezone.utc)): r for r in rows}


def row(table, user: str, when: dt.datetime):
    return table[(user, when)]


EXPECTED = [  # user, request ts, session's first request, step, ds, terminal, truncated, reward
    ("a", at(DAY1, 10), ("a", at(DAY1, 10), "a1"), 0, DAY1, False, False, 0.1 * 2 / 6 + 0.1 + 0.3),
    ("a", at(DAY1, 10, 20), ("a", at(DAY1, 10), "a1"), 1, DAY1, True, False, 0.05 + 0.1),
    ("a", at(DAY1, 11), ("a", at(DAY1, 11), "a3"), 0, DAY1, True, False, 0.1 * 5 / 60 + 0.05),
    ("b", at(DAY1, 23, 50), ("b", at(DAY1, 23, 50), "b1"), 0, DAY1, False, False, 0.2),
    ("b", at(D2, 0, 10), ("b", at(DAY1, 23, 50), "b1"), 1, D2, True, False, 0.1 / 60 + 0.1 / 30),
    ("b", at(D2, 23, 45), ("b", at(D2, 23, 45), "b3"), 0, D2, False, True, 0.1 / 6 + 0.05),
    ("c", at(DAY1, 9), ("c", at(DAY1, 9), "c1"), 0, DAY1, True, False, 0.1 / 6 + 0.05 + 1.3),
    ("c", at(DAY1, 9, 5), ("c", at(DAY1, 9, 5), "c2"), 0, DAY1, False, False, 0.1 / 6 + 0.05),
    ("c", at(DAY1, 9, 10), ("c", at(DAY1, 9, 5), "c2"), 1, DAY1, True, False, 0.1 / 6 + 0.05),
]


def test_sessions_steps_flags_rewards(full) -> None:
    _, _, table = full
    assert len(table) == len(EXPECTED)
    for user, when, first, step, ds, terminal, truncated, reward in EXPECTED:
        r = row(table, user, when)
        assert (r.session_id, r.step, r.ds, r.is_terminal, r.is_truncated) == \
            (session_id(*first), step, ds, terminal, truncated), (user, when)
        assert r.reward == pytest.approx(reward, abs=1e-12)
        assert r.reward == pytest.approx(r.reward_stickiness + r.reward_activeness, abs=1e-12)


def test_action_logp_explore_group_and_split(full) -> None:
    _, _, table = full
    a1 = row(table, "a", at(DAY1, 10))
    assert list(a1.action) == [-1.0, 1.0, 0.0, -0.5, 0.5, 0.0]
    assert (a1.action_logp, a1.explore_group) == (-1.0, "noise")
    assert row(table, "b", at(DAY1, 23, 50)).action_logp is None
    assert row(table, "c", at(DAY1, 9)).explore_group is None
    assert row(table, "c", at(DAY1, 9)).reward_activeness == pytest.approx(1.3)
    # Sessions start c1 09:00, c2 09:05, a1 10:00 | a3 11:00, b1 23:50, b3 D2 23:45:
    # train_fraction 0.5 -> the first 3 are train; every step of a session has its split.
    splits = {(u, t): table[(u, t)].split for u, t, *_ in EXPECTED}
    train = {k for k, v in splits.items() if v == S.TRAIN}
    assert train == {("c", at(DAY1, 9)), ("c", at(DAY1, 9, 5)), ("c", at(DAY1, 9, 10)),
                     ("a", at(DAY1, 10)), ("a", at(DAY1, 10, 20))}


def test_states_by_hand(full) -> None:
    cfg, _, table = full
    names = list(cfg.features.feature_names)
    assert len(names) == 25

    def feats(vec) -> dict[str, float]:
        assert len(vec) == len(names)
        return dict(zip(names, vec))

    a1, a2, a3 = (row(table, "a", t) for t in (at(DAY1, 10), at(DAY1, 10, 20), at(DAY1, 11)))
    s1 = feats(a1.state)
    assert [s1[f"profile_{c}"] for c in ("age", "activity", "tenure", "gender")] == \
        [0.25, 0.5, 0.75, 1.0]
    assert s1["hist_count"] == 0.0 and s1["sess_step"] == 0.0 and s1["gap_prev_request"] == 1.0
    assert list(a1.next_state) == list(a2.state)
    s2 = feats(a2.state)
    want2 = {"hist_count": math.log1p(2) / HIST_NORM, "hist_mean_liked": 0.5,
             "hist_mean_play_ratio": 0.5, "hist_mean_play_time_norm": 10 / 60,
             "hist_mean_finished": 0.0, "recent_liked": 0.9 / 1.9, "recent_play_ratio": 0.5,
             "sess_step": 1 / 20, "sess_mean_play_ratio": 0.5, "sess_mean_skipped": 0.0,
             "gap_prev_request": math.log1p(1 / 3) / GAP_NORM}
    assert {k: s2[k] for k in want2} == pytest.approx(want2, abs=1e-6)
    assert list(a2.next_state) == [0.0] * 25            # terminal
    s3 = feats(a3.state)
    want3 = {"hist_count": math.log1p(3) / HIST_NORM, "hist_mean_liked": 1 / 3,
             "hist_mean_finished": 1 / 3, "hist_mean_play_ratio": 2 / 3, "sess_step": 0.0,
             "sess_mean_play_ratio": 0.0, "gap_prev_request": math.log1p(2 / 3) / GAP_NORM}
    assert {k: s3[k] for k in want3} == pytest.approx(want3, abs=1e-6)
    # b3 is truncated: its next state is what a request at the data end (D3 00:00) would see.
    b3 = row(table, "b", at(D2, 23, 45))
    nxt = feats(b3.next_state)
    want_b = {"profile_age": 0.5, "profile_activity": 0.0, "hist_count": math.log1p(3) / HIST_NORM,
              "hist_mean_finished": 1 / 3, "hist_mean_skipped": 1 / 3, "sess_step": 1 / 20,
              "sess_mean_play_ratio": 0.5, "sess_mean_skipped": 0.0,
              "gap_prev_request": math.log1p(0.25) / GAP_NORM}
    assert {k: nxt[k] for k in want_b} == pytest.approx(want_b, abs=1e-6)
    # No profile row for c: profile features 0.
    assert list(row(table, "c", at(DAY1, 9)).state)[:4] == [0.0] * 4


def test_quarantine_and_summary(spark, full) -> None:
    cfg, summary, _ = full
    q = spark.read.format("delta").load(cfg.lake.path("quarantine"))
    got = sorted((r.user_id, r.request_id, r.reject_reason, str(r.run_ds)) for r in q.collect())
    assert got == [("a", "a1", "duplicate_event_id", "2026-01-02"),
                   ("a", "a9", "unknown_explore_group", "2026-01-02"),
                   ("z", "z1", "negative_play_time", "2026-01-02"),
                   ("z", "z2", "fusion_weights_length", "2026-01-02")]
    assert set(q.columns) >= {c.name for c in S.impression_contract(cfg.fusion.names)}
    assert (summary.rows_in, summary.rows_valid, summary.rows_quarantined) == (14, 10, 4)
    assert summary.rejected_by_reason == {"duplicate_event_id": 1, "unknown_explore_group": 1,
                                          "negative_play_time": 1, "fusion_weights_length": 1}
    assert (summary.steps, summary.sessions, summary.terminal_steps, summary.truncated_steps,
            summary.train_steps) == (9, 6, 5, 1, 5)
    assert summary.full_rebuild and (summary.start_ds, summary.end_ds) == ("2026-01-01",
                                                                           "2026-01-02")


def test_table_schema_and_properties(spark, full) -> None:
    from mtf.delta import table_properties

    cfg, _, _ = full
    path = cfg.lake.path("transitions")
    df = spark.read.format("delta").load(path)
    assert df.columns == list(S.TRANSITION_COLUMNS)
    types = dict(df.dtypes)
    assert types[S.STATE] == types[S.NEXT_STATE] == types[S.ACTION] == "array<float>"
    assert (types[S.STEP], types[S.TS], types[S.DS]) == ("int", "timestamp", "date")
    props = table_properties(spark, path)
    assert json.loads(props[S.PROP_FEATURE_NAMES]) == list(cfg.features.feature_names)
    assert props[S.PROP_FEATURE_VERSION] == FEATURE_VERSION
    assert json.loads(props[S.PROP_ACTION_TASKS]) == list(cfg.fusion.names)
    config = json.loads(props[S.PROP_CONFIG])
    assert set(config) == {"etl", "features", "reward", "fusion"}
    assert config["etl"]["train_fraction"] == 0.5 and "start_ds" not in config["etl"]
    assert config["features"]["history_len"] == 500 and config["reward"]["w_like"] == 0.3
    from delta.tables import DeltaTable
    assert DeltaTable.forPath(spark, path).detail().first().partitionColumns == [S.DS]


def test_missing_column_fails_before_writing(spark, tmp_path) -> None:
    from tests.etl.logs import logs_df

    raw = str(tmp_path / "raw_impressions")
    logs_df(spark, good_rows()).drop(S.LIKED).withColumn(S.PLAY_TIME_S, F.lit("10")) \
        .write.format("delta").partitionBy(S.DS).save(raw)
    cfg = load_config(None, overrides(tmp_path))
    with pytest.raises(S.SchemaMismatchError, match="column 'liked' is missing") as err:
        run_build_transitions(spark, cfg)
    assert "column 'play_time_s' has type string, expected double" in str(err.value)
    assert not (tmp_path / "quarantine").exists() and not (tmp_path / "transitions").exists()


def test_missing_profile_table_fails_before_writing(spark, tmp_path) -> None:
    # Zero profile features would silently train a policy that cannot personalise.
    write_logs(spark, good_rows(), str(tmp_path / "raw_impressions"))
    cfg = load_config(None, overrides(tmp_path))
    with pytest.raises(MissingInputError, match="no user-profile table at .*user_profiles.*"
                                         r"features.profile_columns=\[\]"):
        run_build_transitions(spark, cfg)
    assert not (tmp_path / "quarantine").exists() and not (tmp_path / "transitions").exists()
    # Without profile features configured the same logs build, with shorter states.
    cfg = load_config(None, overrides(tmp_path, "features.profile_columns=[]"))
    run_build_transitions(spark, cfg)
    states = spark.read.format("delta").load(cfg.lake.path("transitions")).select("state")
    assert {len(r.state) for r in states.collect()} == {len(cfg.features.feature_names)}
