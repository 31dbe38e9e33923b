"""Loading transitions: pinned Delta snapshot, petastorm batches, sharding, in-memory source."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from pyspark.sql import functions as F

from mtf.delta import write_delta
from mtf.errors import InputDataError
from mtf.rl.batch import STATE, TransitionBatch
from mtf.rl.config import LoaderConfig
from mtf.rl.distributed import DistInfo
from mtf.rl.loader import (InMemorySource, PetastormSource, list_column_to_matrix,
                           load_in_memory, open_transitions, read_split)
from tests.rl.tables import TASKS, layout_properties, transitions_schema, write_transitions

FAST = LoaderConfig(workers_count=1, shuffle_buffer_rows=64, prefetch_batches=2)


def _keys(states: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(np.round(r, 5)) for r in states}


def _collect(source: PetastormSource, n_batches: int) -> np.ndarray:
    batches = source.batches(0)
    try:
        return np.concatenate([next(batches).state.numpy() for _ in range(n_batches)])
    finally:
        batches.close()


def test_open_transitions_pins_version_and_reads_the_layout(transitions_path: str) -> None:
    table = open_transitions(transitions_path)
    assert table.layout.feature_names == ("f0", "f1", "f2", "f3", "f4")
    assert table.layout.action_tasks == TASKS
    assert table.layout.feature_version == "test-v1"
    assert table.layout.table_version == 0   # data and layout properties in one commit
    assert all(u.startswith("file://") and u.endswith(".parquet") for u in table.uris)
    assert table.n_row_groups >= 4 and table.n_rows > 500


def test_table_without_layout_properties_is_a_clear_error(spark: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "transitions")
    write_transitions(spark, path, n_sessions=20, properties={})
    with pytest.raises(ValueError, match=r"lacks table properties \['mtf.feature_names'"):
        open_transitions(path)


def test_missing_table_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match="no transitions table at .*mtf build-transitions"):
        open_transitions(str(tmp_path / "nope"))


def test_unknown_version_is_a_clear_error(transitions_path: str) -> None:
    with pytest.raises(ValueError, match="cannot open transitions table .* at version 99"):
        open_transitions(transitions_path, version=99)


def test_empty_table_is_a_clear_error(spark: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "empty")
    empty = spark.createDataFrame([], transitions_schema()).withColumn("ds", F.to_date("ts"))
    write_delta(empty, path, mode="overwrite", partition_by=["ds"],
                properties=layout_properties(2))
    with pytest.raises(ValueError, match=r"is empty"):
        open_transitions(path)


def test_petastorm_batches_hold_only_training_rows_of_the_right_shape(
        transitions_path: str) -> None:
    table = open_transitions(transitions_path)
    train_rows = _keys(read_split(table, "train", columns=(STATE,))[0][STATE])
    test_rows = _keys(read_split(table, "test", columns=(STATE,))[0][STATE])
    source = PetastormSource(table, batch_size=32, split="train", seed=0, cfg=FAST)
    batches = source.batches(0)
    first = next(batches)
    assert isinstance(first, TransitionBatch)
    assert first.state.shape == (32, 5) and first.next_state.shape == (32, 5)
    assert first.action.shape == (32, 6)
    assert first.reward.shape == (32, 1) and first.is_terminal.shape == (32, 1)
    assert all(t.dtype == torch.float32 for t in (first.state, first.reward, first.is_terminal))
    more = [next(batches).state.numpy() for _ in range(3 * len(train_rows) // 32)]
    seen = _keys(np.concatenate([first.state.numpy(), *more]))
    batches.close()
    assert seen <= train_rows and not seen & test_rows
    assert seen == train_rows       # three passes' worth of batches visit every training row


def test_two_ranks_read_disjoint_shards_that_cover_the_split(transitions_path: str) -> None:
    table = open_transitions(transitions_path)
    train_rows = _keys(read_split(table, "train", columns=(STATE,))[0][STATE])
    n = 3 * len(train_rows) // 32
    shards = [_keys(_collect(PetastormSource(table, batch_size=16, split="train", seed=0,
                                             info=DistInfo(rank=r, world_size=2,
                                                           local_rank=r, local_world_size=2),
                                             cfg=FAST), n)) for r in (0, 1)]
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == train_rows


def test_fewer_row_groups_than_ranks_is_a_clear_error(transitions_path: str) -> None:
    table = open_transitions(transitions_path)
    world = table.n_row_groups + 1
    with pytest.raises(ValueError, match=rf"has {table.n_row_groups} Parquet row groups but "
                                         rf"training runs on {world} ranks"):
        PetastormSource(table, batch_size=8, split="train", seed=0,
                        info=DistInfo(rank=0, world_size=world, local_world_size=world))


def test_a_split_without_rows_is_a_clear_error(transitions_path: str) -> None:
    table = open_transitions(transitions_path)
    with pytest.raises(InputDataError, match="has no rows with split='validation'"):
        read_split(table, "validation")
    batches = PetastormSource(table, batch_size=8, split="validation", seed=0, cfg=FAST).batches(0)
    with pytest.raises(ValueError, match="no rows with split='validation' in .* row groups"):
        next(batches)


def test_arrays_longer_than_the_layout_are_a_clear_error(spark: Any, tmp_path: Any) -> None:
    path = str(tmp_path / "t")
    # arrays of 4 features, but the layout property lists 3
    props = {**layout_properties(4), "mtf.feature_names": json.dumps(["a", "b", "c"])}
    write_transitions(spark, path, n_sessions=20, state_dim=4, properties=props)
    table = open_transitions(path)
    with pytest.raises(ValueError, match=r"column 'state' must hold arrays of length 3"):
        read_split(table, "train")
    batches = PetastormSource(table, batch_size=4, split="train", seed=0, cfg=FAST).batches(0)
    with pytest.raises(ValueError, match=r"column 'state' must hold arrays of length 3"):
        next(batches)


def test_list_column_to_matrix_converts_and_validates() -> None:
    col = pa.chunked_array([pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())),
                            pa.array([[5.0, 6.0]], pa.list_(pa.float32()))])
    np.testing.assert_array_equal(list_column_to_matrix(col, 2, "state"),
                                  np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32))
    with pytest.raises(ValueError, match=r"column 'action' must hold arrays of length 3 \(the "
                                         r"table's layout\), found lengths \[2\]"):
        list_column_to_matrix(col, 3, "action")
    with pytest.raises(ValueError, match="column 'state' has 1 null arrays"):
        list_column_to_matrix(pa.array([[1.0], None], pa.list_(pa.float32())), 1, "state")


def test_load_in_memory_returns_every_training_row(transitions_path: str) -> None:
    table = open_transitions(transitions_path)
    data = load_in_memory(table, "train")
    cols, scanned = read_split(table, "train")
    assert len(data) == len(cols[STATE]) and scanned == table.n_rows > len(data)


def _data(n: int = 40) -> TransitionBatch:
    s = torch.arange(n, dtype=torch.float32).reshape(-1, 1)
    return TransitionBatch(s, s, s, s, s, s)


def test_in_memory_batches_are_a_function_of_the_step() -> None:
    src = InMemorySource(_data(), batch_size=8, seed=3)
    it = src.batches(0)
    run = [next(it).state.flatten().tolist() for _ in range(12)]
    it_resumed = src.batches(7)
    assert [next(it_resumed).state.flatten().tolist() for _ in range(5)] == run[7:]
    # each epoch (5 steps of 8) is a permutation of all 40 rows, reshuffled per epoch
    assert sorted(sum(run[:5], [])) == list(range(40))
    assert run[:5] != run[5:10]


def test_in_memory_ranks_own_disjoint_rows() -> None:
    rows = []
    for r in (0, 1):
        info = DistInfo(rank=r, world_size=2, local_rank=r, local_world_size=2)
        it = InMemorySource(_data(), batch_size=4, seed=0, info=info).batches(0)
        rows.append({int(v) for _ in range(5) for v in next(it).state.flatten()})
    assert rows[0] == set(range(0, 40, 2)) and rows[1] == set(range(1, 40, 2))
    with pytest.raises(ValueError, match="rank 0 holds 40 rows, fewer than train.batch_size=64"):
        InMemorySource(_data(), batch_size=64, seed=0)


def test_fast_arrow_conversion_matches_petastorms_own() -> None:
    from petastorm import arrow_reader_worker
    from petastorm.unischema import Unischema, UnischemaField

    from mtf.rl import loader

    loader._use_fast_arrow_conversion()
    original = loader._PETASTORM_CONVERT[0]
    assert arrow_reader_worker.convert_arrow_table_to_numpy_dict is loader.arrow_to_numpy_columns
    table = pa.table({
        "state": pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32())),
        "reward": pa.array([0.5, -1.0, 2.0]),
        "is_terminal": pa.array([True, False, True]),
        "split": pa.array(["train", "test", "train"]),
        "step": pa.array([0, 1, 2], pa.int32()),
        "ragged": pa.array([[1.0], [2.0, 3.0], [4.0]], pa.list_(pa.float64())),
        "logp": pa.array([None, -1.0, -2.0]),
    })
    schema = Unischema("t", [UnischemaField(n, np.float64, ()) for n in table.column_names])
    ragged = table.drop(["ragged"])
    want, got = original(ragged, schema), loader.arrow_to_numpy_columns(ragged, schema)
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].dtype == got[name].dtype, name
        np.testing.assert_array_equal(want[name], got[name])
    # ragged lists go to petastorm, which refuses them the same way as without us
    with pytest.raises(RuntimeError, match="Length of all values in column 'ragged'"):
        loader.arrow_to_numpy_columns(table.select(["ragged"]), schema)
