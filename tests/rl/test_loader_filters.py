"""Training on a window of days and on chosen exploration groups (closed loop, baselines)."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mtf.rl.batch import GROUP_CODES, group_codes
from mtf.rl.config import LoaderConfig, TrainConfig
from mtf.rl.loader import (PetastormSource, load_in_memory, open_transitions, read_split,
                           select_days)
from tests.rl.tables import transition_rows, write_transitions

GROUPS = ("exploit", "noise", "random")


@pytest.fixture(scope="module")
def mixed_path(spark: Any, tmp_path_factory: Any) -> str:
    # 300 sessions, 600 s apart: ds 2026-01-01 .. 2026-01-03; groups cycle per session.
    path = str(tmp_path_factory.mktemp("mixed") / "transitions")
    write_transitions(spark, path, n_sessions=300, n_files=3, seed=4, explore_groups=GROUPS)
    return path


def _expected(seed: int = 4, n_sessions: int = 300) -> dict[str, np.ndarray]:
    rows = transition_rows(n_sessions, 5, 6, seed, 0.2)
    day = (rows["session"] * 600 + rows["step"] * 30) // 86_400
    return {**rows, "day": day, "group": np.asarray(GROUPS)[rows["session"] % 3]}


def test_day_window_keeps_only_those_partitions(mixed_path: str) -> None:
    exp = _expected()
    table = open_transitions(mixed_path, start_ds="2026-01-02", end_ds="2026-01-02")
    assert all("/ds=2026-01-02/" in u for u in table.uris)
    cols, _ = read_split(table, "train")
    want = (exp["day"] == 1) & (exp["split"] == "train")
    assert len(cols["reward"]) == int(want.sum())
    np.testing.assert_allclose(np.sort(cols["reward"]), np.sort(exp["reward"][want]), rtol=1e-6)


def test_group_filter_in_memory_and_petastorm(mixed_path: str) -> None:
    exp = _expected()
    table = open_transitions(mixed_path)
    want = (exp["group"] == "random") & (exp["split"] == "train")
    cols, _ = read_split(table, "train", groups=("random",))
    np.testing.assert_allclose(np.sort(cols["reward"]), np.sort(exp["reward"][want]), rtol=1e-6)
    source = PetastormSource(table, batch_size=16, split="train", seed=0, groups=("random",),
                             cfg=LoaderConfig(workers_count=1, shuffle_buffer_rows=32,
                                              prefetch_batches=0))
    batches = source.batches(0)
    try:
        got = np.concatenate([next(batches).reward.numpy().ravel().astype(float)
                              for _ in range(20)])
    finally:
        batches.close()
    allowed = set(np.round(exp["reward"][want], 4))
    assert set(np.round(got, 4)) <= allowed
    assert len(set(np.round(got, 4))) > 0.5 * len(allowed)


def test_filters_fail_clearly(mixed_path: str) -> None:
    with pytest.raises(ValueError, match=r"no data files for ds in \[2027-01-01, -\]"):
        open_transitions(mixed_path, start_ds="2027-01-01")
    with pytest.raises(ValueError, match=r"no rows with split='train' in exploration groups"):
        read_split(open_transitions(mixed_path), "train", groups=("nobody",))
    with pytest.raises(ValueError, match="not under a ds=YYYY-MM-DD partition"):
        select_days(["file:///t/part-0.parquet"], "2026-01-01", "", where="t")
    with pytest.raises(ValueError, match="train.start_ds must be a date"):
        TrainConfig(start_ds="yesterday")
    with pytest.raises(ValueError, match="is after train.end_ds"):
        TrainConfig(start_ds="2026-01-03", end_ds="2026-01-01")


def test_every_batch_carries_the_rows_explore_group_code(mixed_path: str) -> None:
    # IQL's actor regresses only on some groups, so each row's group must travel with it.
    # A row is identified by its reward and first state value (float32-rounded).
    exp = _expected()
    train = exp["split"] == "train"

    def key(reward: Any, state0: Any) -> tuple[float, float]:
        return float(np.float32(reward)), float(np.float32(state0))

    code_of = {key(r, s0): GROUP_CODES[g] for r, s0, g in
               zip(exp["reward"][train], exp["state"][train][:, 0], exp["group"][train])}
    assert len(code_of) == int(train.sum())
    table = open_transitions(mixed_path)
    assert table.optional_columns == ("explore_group",)
    cols, _ = read_split(table, "train", columns=("reward", "state", "group"))
    assert len(cols["group"]) == int(train.sum())
    assert [code_of[key(r, s[0])] for r, s in zip(cols["reward"], cols["state"])] \
        == cols["group"].tolist()
    memory = load_in_memory(table, "train")
    assert [code_of[key(r, s[0])] for r, s in zip(memory.reward.ravel(), memory.state)] \
        == memory.group.ravel().tolist()
    source = PetastormSource(table, batch_size=16, split="train", seed=0,
                             cfg=LoaderConfig(workers_count=1, shuffle_buffer_rows=32,
                                              prefetch_batches=0))
    batches = source.batches(0)
    try:
        got = [next(batches) for _ in range(20)]
    finally:
        batches.close()
    pairs = [(code_of[key(r, s[0])], float(g)) for b in got
             for r, s, g in zip(b.reward.ravel(), b.state, b.group.ravel())]
    assert {g for _, g in pairs} == {0.0, 1.0, 2.0}
    assert all(want == g for want, g in pairs)


def test_group_codes_of_names_and_nulls() -> None:
    codes = group_codes(np.array(["random", None, "noise", "exploit"], dtype=object))
    assert codes.tolist() == [2.0, 0.0, 1.0, 0.0]


def test_tables_without_explore_group_read_as_exploit_and_refuse_group_selection(
        mixed_path: str) -> None:
    # As a table written before exploration existed: its files have no explore_group column.
    table = dataclasses.replace(open_transitions(mixed_path), optional_columns=())
    cols, _ = read_split(table, "train", columns=("reward", "group"))
    assert len(cols["group"]) > 0 and not cols["group"].any()
    message = r"has no 'explore_group' column to select exploration groups \['random'\]"
    with pytest.raises(ValueError, match=message):
        read_split(table, "train", groups=("random",))
    with pytest.raises(ValueError, match=message):
        PetastormSource(table, batch_size=16, split="train", seed=0, groups=("random",))
