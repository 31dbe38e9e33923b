"""Point-in-time user profiles: a profile table with ``snapshot_ds`` (docs/contract.md section 4).

Logs (D1..D4 = 2026-01-01..04, gap 30 min), user p:

* p1 D1 12:00; p2 D1 23:50 -> p3 D2 00:10 (one session across midnight); p4 D2 12:00;
  p5 D3 12:00; p6 D3 23:50 -> p7 D4 00:10 (across midnight); p8 D4 23:50 (open at the end of
  the data: truncated).
* q1 D4 12:00 (q's only snapshot is dated D4: not before the request's day); r1 D4 13:00 (r has
  no profile row).

Snapshots of p (activity): 0.1 dated D1, 0.9 dated D3 (plus a duplicate 0.3: the maximum
wins), 0.5 dated D4, 0.99 dated D5. A request on day D uses the newest snapshot dated strictly
before D: D1 -> none (0), D2 and D3 -> 0.1, D4 -> 0.9; the truncated row's next state (a request
at D5 00:00) -> 0.5. Nothing dated D5 is ever used.
"""
from __future__ import annotations

import datetime as dt

import pytest

from mtf import contract as S
from mtf.config import load_config
from mtf.errors import UserError
from mtf.etl.config import EtlConfig
from mtf.etl.pipeline import read_profiles, run_build_transitions
from mtf.etl.state import VALID_FROM, VALID_UNTIL, profile_intervals
from mtf.features import FeatureConfig
from tests.etl.logs import DAY1, at, page, write_logs

D2, D3, D4, D5 = (DAY1 + dt.timedelta(days=i) for i in range(1, 5))
SPLIT = "etl.test_start_ts=2026-01-02T00:00:00"   # a fixed split: runs are comparable
ACTIVITY = 1                                      # profile_activity's index in the state
COLUMNS = ("age", "activity", "tenure", "gender")

REQUESTS = {"p1": at(DAY1, 12), "p2": at(DAY1, 23, 50), "p3": at(D2, 0, 10), "p4": at(D2, 12),
            "p5": at(D3, 12), "p6": at(D3, 23, 50), "p7": at(D4, 0, 10), "p8": at(D4, 23, 50)}
SNAPSHOTS = [("p", DAY1, 0.1), ("p", D3, 0.9), ("p", D3, 0.3), ("p", D4, 0.5), ("p", D5, 0.99),
             ("q", D4, 0.7)]
# profile_activity of each request's state, and of its next state.
STATE_ACTIVITY = {"p1": 0.0, "p2": 0.0, "p3": 0.1, "p4": 0.1, "p5": 0.1, "p6": 0.1, "p7": 0.9,
                  "p8": 0.9, "q1": 0.0, "r1": 0.0}
NEXT_ACTIVITY = {"p2": 0.1, "p6": 0.9, "p8": 0.5}   # the others are terminal: zeros


def _rows() -> list[dict]:
    rows = [r for req, ts in REQUESTS.items() for r in page("p", req, ts)]
    return rows + page("q", "q1", at(D4, 12)) + page("r", "r1", at(D4, 13))


def _write_snapshots(spark, rows: list[tuple], path: str, day_type: str = "date",
                     day_column: str = S.SNAPSHOT_DS) -> None:
    """Profile rows (user, day, activity); age 0.5, tenure 1, gender null. ``day_type``: date,
    string ('YYYY-MM-DD' or None) or timestamp (noon UTC)."""
    def day(d):
        if d is None or day_type == "date":
            return d
        if day_type == "string":
            return d if isinstance(d, str) else d.isoformat()
        return dt.datetime.combine(d, dt.time(12), tzinfo=dt.timezone.utc)

    ddl = (f"user_id string, `{day_column}` {day_type}, age double, activity double, "
           "tenure double, gender double")
    data = [(u, day(d), 0.5, a, 1.0, None) for u, d, a in rows]
    spark.createDataFrame(data, schema=ddl).write.format("delta").mode("overwrite").save(path)


def _table(spark, path: str) -> dict:
    rows = spark.read.format("delta").load(path).collect()
    return {(r.user_id, r.ts.replace(tzinfo=dt.timezone.utc)): r.asDict() for r in rows}


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """A full rebuild of D1..D4 (lake 'full'); daily runs of D3 then D4 (lake 'daily')."""
    root = tmp_path_factory.mktemp("snapshots")
    raw, profiles = str(root / "raw_impressions"), str(root / "user_profiles")
    write_logs(spark, _rows(), raw)
    _write_snapshots(spark, SNAPSHOTS, profiles)
    base = [f"lake.raw_logs={raw}", f"lake.user_profiles={profiles}", SPLIT]
    full_cfg = load_config(None, [f"lake.root={root}/full", *base])
    run_build_transitions(spark, full_cfg)
    daily_cfg = load_config(None, [f"lake.root={root}/daily", *base])
    for day in (D3, D4):
        run_build_transitions(spark, load_config(None, [f"lake.root={root}/daily", *base,
                                                        f"etl.start_ds={day.isoformat()}"]))
    return {"full": _table(spark, full_cfg.lake.path("transitions")),
            "daily": _table(spark, daily_cfg.lake.path("transitions"))}


def _by_request(table: dict) -> dict[str, dict]:
    times = {**REQUESTS, "q1": at(D4, 12), "r1": at(D4, 13)}
    return {req: table[(req[0], ts)] for req, ts in times.items()}


def test_each_day_sees_the_newest_snapshot_strictly_before_it(built) -> None:
    got = _by_request(built["full"])
    assert {req: row["state"][ACTIVITY] for req, row in got.items()} == pytest.approx(
        STATE_ACTIVITY)
    # The other columns come from the same snapshot row, null gender -> 0; none before: zeros.
    assert got["p3"]["state"][:4] == pytest.approx([0.5, 0.1, 1.0, 0.0])
    assert got["p1"]["state"][:4] == [0.0] * 4 and got["q1"]["state"][:4] == [0.0] * 4


def test_next_state_uses_the_next_request_day(built) -> None:
    got = _by_request(built["full"])
    assert {req: row["next_state"][ACTIVITY] for req, row in got.items()} == pytest.approx(
        {req: NEXT_ACTIVITY.get(req, 0.0) for req in got})
    # Across midnight the next state is exactly the next request's state (new snapshot there).
    assert (got["p2"]["is_terminal"], got["p6"]["is_terminal"]) == (False, False)
    assert got["p2"]["next_state"] == got["p3"]["state"]
    assert got["p6"]["next_state"] == got["p7"]["state"]
    # The last row is open at the end of the data: its next state is a request at D5 00:00,
    # which sees the snapshot dated D4.
    assert (got["p8"]["is_truncated"], got["p8"]["is_terminal"]) == (True, False)


def test_daily_runs_equal_the_full_rebuild(built) -> None:
    daily, full = built["daily"], built["full"]
    want = {k: v for k, v in full.items() if k[1].date() in (D3, D4)}
    assert daily.keys() == want.keys() and len(want) == 6
    for key in want:
        assert daily[key] == want[key], key
    # The D3 run wrote p6 truncated; the D4 run re-derived it from p7's state (0.9).
    assert daily[("p", REQUESTS["p6"])]["next_state"][ACTIVITY] == pytest.approx(0.9)


def test_intervals_are_pruned_to_the_lookup_days(spark) -> None:
    profiles = spark.createDataFrame(
        [("p", d, a) for _, d, a in SNAPSHOTS if _ == "p"],
        schema=f"user_id string, {S.SNAPSHOT_DS} date, activity double")

    def rows(df) -> list[tuple]:
        return sorted((r[VALID_FROM], r[VALID_UNTIL], r.activity) for r in df.collect())

    d6 = D5 + dt.timedelta(days=1)
    # Duplicates of (p, D3) resolve to the maximum (0.9, not 0.3).
    assert rows(profile_intervals(profiles, ("activity",))) == [
        (D2, D4, 0.1), (D4, D5, 0.9), (D5, d6, 0.5), (d6, None, 0.99)]
    # A run of D4 (lookups D4..D5): the D1 interval ends before D4, D5's snapshot never applies.
    assert rows(profile_intervals(profiles, ("activity",), days=(D4, D5))) == [
        (D4, D5, 0.9), (D5, None, 0.5)]


@pytest.mark.parametrize("day_type", ["string", "timestamp"])
def test_snapshot_day_as_text_or_timestamp_mapped_by_column_map(spark, tmp_path,
                                                                day_type: str) -> None:
    path = str(tmp_path / "profiles")
    _write_snapshots(spark, [("p", D3, 0.9)], path, day_type=day_type, day_column="as_of")
    etl = EtlConfig(column_map={S.SNAPSHOT_DS: "as_of"})
    got = read_profiles(spark, path, FeatureConfig(profile_columns=COLUMNS), etl).collect()
    assert [r.asDict() for r in got] == [{S.USER_ID: "p", S.SNAPSHOT_DS: D3, "age": 0.5,
                                         "activity": 0.9, "tenure": 1.0, "gender": None}]


@pytest.mark.parametrize("bad_day", [None, "2026-01-0x"])
def test_a_snapshot_without_a_day_is_refused(spark, tmp_path, bad_day) -> None:
    path = str(tmp_path / "profiles")
    _write_snapshots(spark, [("p", D3, 0.9), ("q", bad_day, 0.1)], path, day_type="string")
    with pytest.raises(UserError, match=r"null \(or not YYYY-MM-DD\) snapshot_ds"):
        read_profiles(spark, path, FeatureConfig(profile_columns=COLUMNS), EtlConfig())


def test_a_static_table_has_no_snapshot_column(spark, tmp_path) -> None:
    from tests.etl.logs import write_profiles

    path = str(tmp_path / "profiles")
    write_profiles(spark, [{"user_id": "p", "age": 0.5, "activity": 0.1, "tenure": 1.0,
                            "gender": 0.0}], path)
    got = read_profiles(spark, path, FeatureConfig(profile_columns=COLUMNS), EtlConfig())
    assert got.columns == [S.USER_ID, *COLUMNS]
