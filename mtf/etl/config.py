"""ETL configuration (EtlConfig). Owned by mtf.etl.

Every field has a real default; the YAML section ``etl:`` of ``conf/*.yaml`` mirrors it key by
key. Units are in the names (``_s`` seconds, ``_days`` days). See docs/etl.md for the rules these
values drive.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from mtf.contract import EXPLORE_GROUPS, TS_UNITS

# The largest inactivity gap we accept: a session must be decidable as ended within one day, so
# that a daily run only ever has to revisit the previous day's last rows (docs/etl.md).
MAX_SESSION_GAP_S = 86_399


def _check_zone(name: str) -> None:
    """ValueError unless ``name`` is a time-zone name (IANA, e.g. 'Europe/Paris', or 'UTC')."""
    import zoneinfo

    if name == "UTC":
        return
    try:
        zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        if zoneinfo.available_timezones():   # without a zone database nothing can be checked
            raise ValueError(f"ts_timezone must be a time-zone name like 'UTC' or "
                             f"'Europe/Paris', got {name!r}") from None


def parse_ds(value: str, key: str) -> dt.date:
    """``'2026-01-02'`` -> date, or ValueError naming config key ``key``."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{key} must be a date like '2026-01-02', got {value!r}") from None


@dataclass(frozen=True)
class EtlConfig:
    # --- sessions (docs/method.md section 3) ---
    session_gap_s: int = 1800          # inactivity gap (s) that ends a session; also ends one
                                       # that carries an app_session_id (docs/etl.md, sessions)
    # --- which days to build ---
    start_ds: str = ""                 # first ds (YYYY-MM-DD) to (re)build; "" = every day in
                                       # the logs (full rebuild, the table is overwritten)
    end_ds: str = ""                   # last ds to (re)build, inclusive; "" = start_ds
    lookback_days: int = 14            # days before start_ds read as context (history, sessions
                                       # continuing from earlier days); 0 = all earlier days.
                                       # >= 7 keeps gap_prev_request exact (capped at 168 h).
    # --- row rules -> quarantine (docs/etl.md, validation) ---
    max_play_time_s: float = 21_600.0  # play time above this (6 h) is absurd
    max_play_to_duration: float = 10.0  # play_time_s > this * duration_s is implausible (loops)
    explore_groups: tuple[str, ...] = EXPLORE_GROUPS  # allowed (null allowed too)
    weight_tolerance: float = 1e-6     # slack on fusion weights outside the task's [lo, hi]
    warn_reject_fraction: float = 0.05  # log a warning when more rows than this are quarantined
    # --- output ---
    train_fraction: float = 0.9        # first fraction of sessions by start time -> 'train'
                                       # (paper: 90%), over the sessions starting in the run
    test_start_ts: str = ""            # if set (ISO UTC, e.g. '2026-01-03T00:00:00'), sessions
                                       # starting at/after it are 'test' and train_fraction is
                                       # ignored: a split that is stable across daily runs
    files_per_day: int = 8             # output Parquet files per ds partition (trainer shards)
    max_rows_per_file: int = 100_000   # ... split further above this many rows, so row groups,
                                       # and with them the trainer's read-ahead memory, stop
                                       # growing with the daily volume; 0 = no cap
    commit_retries: int = 3            # re-runs after a Delta commit conflict with a concurrent
                                       # job on the same lake (docs/etl.md, concurrent runs)
    # --- input ---
    column_map: dict[str, str] = field(default_factory=dict)  # contract name -> column name in
                                       # the logs, e.g. {ts: event_time}; unmapped = same name
    ts_timezone: str = "UTC"           # zone of a timestamp_ntz ts (a wall clock), IANA name
    ts_unit: str = ""                  # unit of an integer epoch ts: s, ms, us or ns; "" =
                                       # refuse an integer ts (docs/contract.md section 1)
    # --- reward calibration (mtf.etl.calibrate) ---
    calibration_drop_last_step: bool = True  # leave out each session's last step (its future
                                             # dwell is 0 by construction or unknown)

    def __post_init__(self) -> None:
        if not 0 < self.session_gap_s <= MAX_SESSION_GAP_S:
            raise ValueError(f"session_gap_s must be > 0 and <= {MAX_SESSION_GAP_S} "
                             f"(less than a day), got {self.session_gap_s}")
        if self.end_ds and not self.start_ds:
            raise ValueError(f"end_ds={self.end_ds!r} needs start_ds too")
        if self.start_ds:
            start = parse_ds(self.start_ds, "start_ds")
            end = parse_ds(self.end_ds, "end_ds") if self.end_ds else start
            if end < start:
                raise ValueError(f"end_ds {self.end_ds!r} is before start_ds {self.start_ds!r}")
        if self.lookback_days < 0:
            raise ValueError(f"lookback_days must be >= 0 (0 = all history), "
                             f"got {self.lookback_days}")
        if self.max_play_time_s <= 0 or self.max_play_to_duration <= 0:
            raise ValueError("max_play_time_s and max_play_to_duration must be > 0, got "
                             f"{self.max_play_time_s} and {self.max_play_to_duration}")
        if not self.explore_groups or any(not g for g in self.explore_groups):
            raise ValueError(f"explore_groups must list non-empty names, "
                             f"got {list(self.explore_groups)}")
        if self.weight_tolerance < 0:
            raise ValueError(f"weight_tolerance must be >= 0, got {self.weight_tolerance}")
        if not 0.0 <= self.warn_reject_fraction <= 1.0:
            raise ValueError(f"warn_reject_fraction must be in [0, 1], "
                             f"got {self.warn_reject_fraction}")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.test_start_ts:
            try:
                dt.datetime.fromisoformat(self.test_start_ts)
            except ValueError:
                raise ValueError(f"test_start_ts must be an ISO timestamp like "
                                 f"'2026-01-03T00:00:00', got {self.test_start_ts!r}") from None
        if self.max_rows_per_file < 0:
            raise ValueError(f"max_rows_per_file must be >= 0, got {self.max_rows_per_file}")
        if self.files_per_day <= 0:
            raise ValueError(f"files_per_day must be > 0, got {self.files_per_day}")
        if self.commit_retries < 0:
            raise ValueError(f"commit_retries must be >= 0, got {self.commit_retries}")
        if self.ts_unit not in ("", *TS_UNITS):
            raise ValueError(f"ts_unit must be one of {list(TS_UNITS)} or '' (no epoch ts), "
                             f"got {self.ts_unit!r}")
        _check_zone(self.ts_timezone)
        bad = {k: v for k, v in self.column_map.items() if not k or not v}
        if bad:
            raise ValueError(f"column_map entries must be non-empty names, got {bad}")

    @property
    def is_full_rebuild(self) -> bool:
        """True when no day range is given: every day in the logs is (re)built."""
        return not self.start_ds


@dataclass(frozen=True)
class CheckConfig:
    """``mtf check-logs`` (mtf.etl.check): where its report goes besides the console."""

    json_out: str = ""        # also write the report as JSON to this file ("" = none)
    print_json: bool = False  # print the report as JSON on stdout instead of the text report
