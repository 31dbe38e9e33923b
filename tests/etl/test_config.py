"""EtlConfig: defaults, validation messages, YAML/override loading."""
from __future__ import annotations

import pytest

from mtf.config import load_config
from mtf.configtools import ConfigError
from mtf.etl.config import EtlConfig


def test_defaults_are_valid_and_full_rebuild() -> None:
    cfg = EtlConfig()
    assert cfg.session_gap_s == 1800
    assert cfg.train_fraction == 0.9
    assert cfg.is_full_rebuild


@pytest.mark.parametrize("kwargs, message", [
    ({"session_gap_s": 0}, "session_gap_s must be > 0"),
    ({"session_gap_s": 86_400}, "session_gap_s must be > 0 and <= 86399"),
    ({"start_ds": "2026-13-01"}, "start_ds must be a date like '2026-01-02'"),
    ({"end_ds": "2026-01-02"}, "end_ds='2026-01-02' needs start_ds too"),
    ({"start_ds": "2026-01-03", "end_ds": "2026-01-02"}, "is before start_ds"),
    ({"lookback_days": -1}, "lookback_days must be >= 0"),
    ({"max_play_time_s": 0.0}, "max_play_time_s and max_play_to_duration must be > 0"),
    ({"explore_groups": ()}, "explore_groups must list non-empty names"),
    ({"train_fraction": 0.0}, r"train_fraction must be in \(0, 1\]"),
    ({"test_start_ts": "yesterday"}, "test_start_ts must be an ISO timestamp"),
    ({"files_per_day": 0}, "files_per_day must be > 0"),
    ({"column_map": {"ts": ""}}, "column_map entries must be non-empty names"),
])
def test_invalid_values_raise_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EtlConfig(**kwargs)


def test_loads_from_overrides_with_section_in_error() -> None:
    cfg = load_config(None, ["etl.start_ds=2026-01-02", "etl.column_map={ts: event_time}",
                             "etl.explore_groups=[a, b]"])
    assert cfg.etl.start_ds == "2026-01-02" and not cfg.etl.is_full_rebuild
    assert cfg.etl.column_map == {"ts": "event_time"}
    assert cfg.etl.explore_groups == ("a", "b")
    with pytest.raises(ConfigError, match="etl: session_gap_s must be > 0"):
        load_config(None, ["etl.session_gap_s=-5"])
    with pytest.raises(ConfigError, match="unknown config key etl.gap"):
        load_config(None, ["etl.gap=5"])
