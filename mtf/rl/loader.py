"""Batch sources for the trainer: petastorm over a pinned Delta snapshot, or in-memory tensors.

Both yield an endless stream of :class:`~mtf.rl.batch.TransitionBatch` from
``batches(start_step)``, so every DDP rank runs exactly ``max_steps`` steps whatever the size of
its shard (docs/stack.md: uneven petastorm shards otherwise hang DDP at the end of an epoch).

petastorm rules followed here (docs/stack.md): readers get the snapshot's active ``file://``
URIs, never the table directory; only the numeric columns (plus ``split``, filtered before
batching) are read; ``BatchedDataLoader`` batches; shards are whole row groups, so a table needs
at least ``world_size`` of them; row counts are checked because a reader once returned no rows
without an error.
"""
from __future__ import annotations

import logging
import queue
import random
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from mtf.delta import GONE, delta_snapshot
from mtf.errors import (InputDataError, MissingInputError, TableVersionError,
                        TableVersionGoneError)
from mtf.rl.batch import (ACTION, EXPLORE_GROUP, GROUP, IS_TERMINAL, NEXT_STATE, NUMERIC_COLUMNS,
                          REWARD, SPLIT, STATE, TransitionBatch, group_codes)

from mtf.rl.config import LoaderConfig
from mtf.rl.distributed import DistInfo
from mtf.rl.layout import TableLayout

logger = logging.getLogger(__name__)


# ---- the pinned table ------------------------------------------------------------------------

@dataclass(frozen=True)
class TransitionTable:
    """One pinned version of the transitions table: layout, active files, Parquet footer stats."""

    layout: TableLayout
    uris: tuple[str, ...]   # active Parquet files of this version, with a scheme (file://...)
    n_rows: int             # all splits
    n_row_groups: int
    optional_columns: tuple[str, ...] = ()  # of (explore_group,), the ones the files have

    def widths(self) -> dict[str, int]:
        """Expected array length of each array column."""
        s, k = self.layout.state_dim, self.layout.action_dim
        return {STATE: s, NEXT_STATE: s, ACTION: k}


def open_transitions(path: str, version: int | None = None, *, start_ds: str = "",
                     end_ds: str = "", version_key: str = "train.table_version"
                     ) -> TransitionTable:
    """Pin ``version`` (latest when None) of the transitions table at ``path`` and check it.

    ``start_ds`` / ``end_ds`` (inclusive, YYYY-MM-DD) keep only the files of those ``ds``
    partitions (the paper retrains daily on the last 3 days); files are chosen by their
    ``ds=`` partition directory, so no row is read to filter. ``version_key`` is the config key
    that pinned ``version`` (named in the error for a version the table does not have).

    Raises:
        MissingInputError: no Delta table at ``path``.
        TableVersionError: ``version`` is newer than the table's latest.
        ValueError: unreadable version, missing layout properties, missing columns, no rows.
    """
    try:
        pinned, uris, props = delta_snapshot(path, version)
    except FileNotFoundError:
        raise no_transitions_table(path) from None
    except TableVersionGoneError as exc:
        raise gone_transitions_version(path, version, version_key, exc) from None
    except TableVersionError as exc:
        raise unknown_transitions_version(path, version, exc.latest, version_key) from None
    except Exception as exc:  # deltalake raises its own error types for bad versions/paths
        raise ValueError(f"cannot open transitions table {path!r} at version "
                         f"{'latest' if version is None else version}: {exc}") from exc
    layout = TableLayout.from_properties(path, pinned, props)
    if start_ds or end_ds:
        uris = select_days(uris, start_ds, end_ds, where=f"transitions table {path!r}")
    if not uris:
        raise InputDataError(f"transitions table {path!r} (version {pinned}) is empty: "
                             f"it has no data files")
    n_rows, n_groups = 0, 0
    optional: tuple[str, ...] = ()
    for i, uri in enumerate(uris):
        try:
            meta = _footer(uri)
        except FileNotFoundError:
            raise MissingInputError(
                f"transitions table {path!r} version {pinned}: data file {uri} is gone "
                f"({GONE}); set {version_key} to a newer version or to null for the "
                f"latest") from None
        n_rows += meta.num_rows
        n_groups += meta.num_row_groups
        if i == 0:
            names = meta.schema.to_arrow_schema().names
            _require_columns(names, path, pinned, uri)
            optional = tuple(c for c in (EXPLORE_GROUP,) if c in names)
    if n_rows == 0:
        raise InputDataError(f"transitions table {path!r} (version {pinned}) is empty: "
                             f"{len(uris)} files hold 0 rows")
    logger.info("transitions table %s version %d: %d rows in %d files, %d row groups; "
                "%d features (version %s), tasks %s", path, pinned, n_rows, len(uris), n_groups,
                layout.state_dim, layout.feature_version, list(layout.action_tasks))
    return TransitionTable(layout, tuple(uris), n_rows, n_groups, optional)


def no_transitions_table(path: str) -> MissingInputError:
    """The error for a missing transitions table: where it was looked for, how to make one."""
    return MissingInputError(f"no transitions table at {path!r} (no _delta_log); build it "
                             f"first with `mtf build-transitions`, or point lake.transitions "
                             f"at it")


def gone_transitions_version(path: str, version: int | None, key: str, cause: BaseException,
                             verb: str = "open") -> TableVersionGoneError:
    """The error for a pinned version that can no longer be read (``cause`` says why), naming
    the key to change."""
    return TableVersionGoneError(f"cannot {verb} transitions table {path!r} at version "
                                 f"{version}: {cause}. Set {key} to a newer version or to null "
                                 f"for the latest")


def unknown_transitions_version(path: str, version: int | None, latest: int | None, key: str,
                                verb: str = "open") -> TableVersionError:
    """The error for a pinned version the transitions table lacks: the latest one and the
    config key (``train.table_version``, ``ope.table_version``) to set."""
    return TableVersionError(
        f"cannot {verb} transitions table {path!r} at version {version}: its latest version "
        f"is {latest}; set {key} to a version <= {latest}, or to null for the latest",
        latest=latest)


def select_days(uris: Sequence[str], start_ds: str, end_ds: str, where: str) -> list[str]:
    """The files whose ``ds=YYYY-MM-DD`` partition lies in [start_ds, end_ds] ("" = open)."""
    kept = []
    for uri in uris:
        m = _DS_DIR.search(uri)
        if m is None:
            raise ValueError(f"{where}: file {uri} is not under a ds=YYYY-MM-DD partition, so "
                             f"train.start_ds/end_ds cannot select days")
        day = m.group(1)
        if (not start_ds or day >= start_ds) and (not end_ds or day <= end_ds):
            kept.append(uri)
    if not kept:
        raise InputDataError(f"{where}: no data files for ds in [{start_ds or '-'}, "
                             f"{end_ds or '-'}]; check train.start_ds / train.end_ds")
    return kept


_DS_DIR = re.compile(r"/ds=(\d{4}-\d{2}-\d{2})/")


def _footer(uri: str) -> Any:
    """Parquet metadata (row counts, row groups, schema) of one file; the file is closed."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_file(path) as fh:
        return pq.ParquetFile(fh).metadata


def _read_row_group(uri: str, group: int, columns: Sequence[str]) -> Any:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_file(path) as fh:
        return pq.ParquetFile(fh).read_row_group(group, columns=list(columns))


def _require_columns(names: Sequence[str], path: str, version: int, uri: str) -> None:
    missing = [c for c in (*NUMERIC_COLUMNS, SPLIT) if c not in names]
    if missing:
        raise ValueError(f"transitions table {path!r} (version {version}) lacks columns "
                         f"{missing} (file {uri}); docs/contract.md section 2 lists the contract")


# ---- Arrow -> numpy ---------------------------------------------------------------------------

def _require_group_column(table: "TransitionTable", groups: Sequence[str]) -> None:
    """Selecting exploration ``groups`` needs the (optional) ``explore_group`` column."""
    if groups and EXPLORE_GROUP not in table.optional_columns:
        raise ValueError(f"transitions table {table.layout.table_path!r} has no "
                         f"{EXPLORE_GROUP!r} column to select exploration groups {list(groups)}")


def list_column_to_matrix(column: Any, width: int, name: str) -> NDArray[Any]:
    """A list<float> Arrow column of fixed ``width`` -> ``(N, width)`` float32, zero Python loops.

    Raises ValueError naming the column if an array is null, holds nulls, or has another length.
    """
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise ValueError(f"column {name!r} has {arr.null_count} null arrays")
    lengths = np.diff(arr.offsets.to_numpy())
    if lengths.size and (lengths != width).any():
        bad = sorted(set(lengths[lengths != width].tolist()))[:5]
        raise ValueError(f"column {name!r} must hold arrays of length {width} (the table's "
                         f"layout), found lengths {bad}")
    values = arr.flatten()
    if values.null_count:
        raise ValueError(f"column {name!r} has {values.null_count} null elements")
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(
        len(arr), width)  # (N*width,) -> (N, width)


def read_split(table: TransitionTable, split: str, *, columns: Sequence[str] = NUMERIC_COLUMNS,
               max_rows: int | None = None, seed: int = 0,
               groups: Sequence[str] = ()) -> tuple[dict[str, NDArray[Any]], int]:
    """Rows of ``split`` (and of exploration ``groups``, when given) as numpy arrays, read with
    pyarrow row group by row group.

    With ``max_rows``, row groups are visited in a seeded random order until at least that many
    rows are collected (whole row groups: a sample for the state normaliser); otherwise all
    rows are read.

    ``columns`` may include ``group``: the ``explore_group`` codes (all exploit when the table
    has no such column).

    Returns:
        (column name -> array, number of rows of all splits scanned to find them).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    widths = table.widths()
    row_groups = [(uri, g) for uri in table.uris for g in range(_footer(uri).num_row_groups)]
    if max_rows is not None:
        random.Random(seed).shuffle(row_groups)
    parts: dict[str, list[NDArray[Any]]] = {c: [] for c in columns}
    n = scanned = 0
    _require_group_column(table, groups)
    with_group = GROUP in columns and EXPLORE_GROUP in table.optional_columns
    data_columns = [c for c in columns if c != GROUP]
    for uri, g in row_groups:
        filters = [SPLIT, *([EXPLORE_GROUP] if groups or with_group else [])]
        t = _read_row_group(uri, g, [*data_columns, *filters])
        scanned += t.num_rows
        keep = pc.equal(t[SPLIT], split)
        if groups:
            keep = pc.and_(keep, pc.is_in(t[EXPLORE_GROUP], value_set=pa.array(list(groups))))
        t = t.filter(keep)
        if GROUP in columns:
            parts[GROUP].append(group_codes(t[EXPLORE_GROUP].to_numpy(zero_copy_only=False))
                                if with_group else np.zeros(t.num_rows, dtype=np.float32))
        t = t.drop(filters)
        for c in data_columns:
            if c in widths:
                parts[c].append(list_column_to_matrix(t[c], widths[c], c))
            else:
                parts[c].append(t[c].to_numpy().astype(np.float32))
        n += t.num_rows
        if max_rows is not None and n >= max_rows:
            break
    out = {c: np.concatenate(v) for c, v in parts.items()}
    if n == 0:
        raise InputDataError(f"transitions table {table.layout.table_path!r} (version "
                             f"{table.layout.table_version}) has no rows with split={split!r}"
                             + (f" in exploration groups {list(groups)}" if groups else "")
                             + ": check train.split / train.explore_groups against the table")
    return out, scanned


def load_in_memory(table: TransitionTable, split: str) -> TransitionBatch:
    """Every row of ``split`` as one batch of tensors (small tables, tests, benchmarks)."""
    cols, _ = read_split(table, split, columns=(*NUMERIC_COLUMNS, GROUP))
    _check_finite(cols, where=f"split {split!r} of {table.layout.table_path!r}")
    return TransitionBatch.from_numpy(cols)


def _check_finite(cols: dict[str, NDArray[Any]], where: str) -> None:
    for name, values in cols.items():
        if not np.isfinite(values).all():
            raise ValueError(f"column {name!r} has NaN or infinite values in {where}")


# ---- sources ----------------------------------------------------------------------------------

class InMemorySource:
    """Batches from tensors already in memory, deterministic in the step number.

    Rank r owns rows r, r + world, ...; each epoch draws a permutation seeded by (seed, epoch)
    and cuts it into full batches, so the batch of step t is a pure function of t and a resumed
    run sees exactly the batches an uninterrupted one would.
    """

    def __init__(self, data: TransitionBatch, *, batch_size: int, seed: int,
                 info: DistInfo = DistInfo()) -> None:
        idx = torch.arange(info.rank, len(data), info.world_size, device=data.state.device)
        self.data = data.index(idx) if info.world_size > 1 else data
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = len(self.data) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"rank {info.rank} holds {len(self.data)} rows, fewer than "
                             f"train.batch_size={batch_size}")

    def batches(self, start_step: int = 0) -> Iterator[TransitionBatch]:
        step = start_step
        epoch, perm = -1, torch.empty(0, dtype=torch.long)
        while True:
            e, j = divmod(step, self.steps_per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                perm = torch.randperm(len(self.data), generator=g).to(self.data.state.device)
                epoch = e
            yield self.data.index(perm[j * self.batch_size:(j + 1) * self.batch_size])
            step += 1

    def __enter__(self) -> "InMemorySource":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Rows(NamedTuple):
    """One row group's numeric columns, as BatchedDataLoader reads them (``._asdict()``)."""

    state: NDArray[Any]
    next_state: NDArray[Any]
    action: NDArray[Any]
    reward: NDArray[Any]
    is_terminal: NDArray[Any]
    group: NDArray[Any]       # explore_group codes (mtf.rl.batch.GROUP_CODES)


class _SplitRows:
    """Wraps a petastorm batch reader: keeps one split, casts to float32, checks every row group.

    BatchedDataLoader cannot batch the string ``split`` column, and pyarrow-level filters on a
    non-partition column are not applied by petastorm's legacy dataset path, so rows are
    filtered here with one vectorised comparison per row group.
    """

    batched_output = True

    def __init__(self, reader: Any, split: str, widths: dict[str, int], give_up_after: int,
                 where: str, groups: Sequence[str] = ()) -> None:
        self.reader = reader
        self.split = split
        self.groups = np.asarray(list(groups), dtype=object)
        self.widths = widths
        self.give_up_after = give_up_after  # consecutive row groups without a `split` row
        self.where = where
        self.rows = 0

    def __iter__(self) -> Iterator[_Rows]:
        empty_in_a_row = 0
        for group in self.reader:
            cols = group._asdict()
            keep = cols.pop(SPLIT) == self.split
            names = cols.pop(EXPLORE_GROUP) if EXPLORE_GROUP in cols else None
            if len(self.groups):
                keep &= np.isin(names, self.groups)
            n = int(keep.sum())
            if n == 0:
                empty_in_a_row += 1
                if empty_in_a_row > self.give_up_after:
                    raise InputDataError(f"{self.where}: no rows with split={self.split!r}"
                                         + (f" in exploration groups {list(self.groups)}"
                                            if len(self.groups) else "")
                                         + f" in {empty_in_a_row} row groups in a row (a "
                                         f"full pass); check train.split / "
                                         f"train.explore_groups")
                continue
            empty_in_a_row = 0
            out = {}
            for name in NUMERIC_COLUMNS:
                v = np.asarray(cols[name])[keep].astype(np.float32, copy=False)
                width = self.widths.get(name)
                if width is not None and (v.ndim != 2 or v.shape[1] != width):
                    raise ValueError(f"{self.where}: column {name!r} must hold arrays of "
                                     f"length {width}, got shape {v.shape}")
                if not np.isfinite(v).all():
                    raise ValueError(f"{self.where}: column {name!r} has NaN or infinite values")
                out[name] = v
            out[GROUP] = (group_codes(np.asarray(names)[keep]) if names is not None
                          else np.zeros(n, dtype=np.float32))
            self.rows += n
            yield _Rows(**out)

    # The rest of the reader interface BatchedDataLoader uses.
    def reset(self) -> None:
        self.reader.reset()

    def stop(self) -> None:
        self.reader.stop()

    def join(self) -> None:
        self.reader.join()


def arrow_to_numpy_columns(table: Any, schema: Any) -> dict[str, NDArray[Any]]:
    """Drop-in for petastorm's ``convert_arrow_table_to_numpy_dict``, without per-row Python.

    petastorm turns each list<float> column into an object array of per-row arrays and
    ``np.vstack``-s them, and each string column into per-row Python strings: both hold the GIL
    per row, which starved a launch-bound GPU training loop (design note in docs/training.md).
    Here fixed-length lists become ``(N, width)`` arrays through Arrow's flat value buffer,
    numbers and booleans are converted by Arrow, and strings are decoded once per distinct
    value. Anything else (nulls, ragged lists, timestamps, ...) goes to petastorm's own
    conversion, which also raises its usual errors.
    """
    import pyarrow as pa

    out: dict[str, NDArray[Any]] = {}
    rest = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type) and pa.types.is_primitive(col.type.value_type):
            arr = col.combine_chunks()
            lengths = np.diff(arr.offsets.to_numpy())
            values = arr.flatten()
            if (arr.null_count == 0 and values.null_count == 0 and lengths.size
                    and (lengths == lengths[0]).all()):
                out[name] = values.to_numpy(zero_copy_only=False).reshape(
                    len(arr), int(lengths[0]))  # (N*width,) -> (N, width)
                continue
        elif (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
              or pa.types.is_boolean(col.type)) and col.null_count == 0:
            out[name] = col.combine_chunks().to_numpy(zero_copy_only=False)
            continue
        elif pa.types.is_string(col.type) and col.null_count == 0:
            encoded = col.combine_chunks().dictionary_encode()
            distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=np.str_)
            out[name] = distinct[encoded.indices.to_numpy()]
            continue
        rest.append(name)
    if rest:
        out.update(_PETASTORM_CONVERT[0](table.select(rest), schema))
    return out


_PETASTORM_CONVERT: list[Callable[[Any, Any], dict[str, NDArray[Any]]]] = []


def _use_fast_arrow_conversion() -> None:
    """Route petastorm's Arrow -> numpy conversion through :func:`arrow_to_numpy_columns`.

    petastorm 0.13.1 has no hook for it; its module-level function is replaced once, when the
    first reader is built (never at import). The replacement returns the same arrays.
    """
    from petastorm import arrow_reader_worker

    if not _PETASTORM_CONVERT:
        _PETASTORM_CONVERT.append(arrow_reader_worker.convert_arrow_table_to_numpy_dict)
        arrow_reader_worker.convert_arrow_table_to_numpy_dict = arrow_to_numpy_columns


class PetastormSource:
    """Endless shuffled batches of one split, read by petastorm from the pinned table's files.

    Rank r reads shard r of ``world_size`` (whole row groups), cycling with ``num_epochs=None``;
    row groups are shuffled, rows are shuffled inside row groups and again through a
    ``shuffle_buffer_rows`` buffer. A background thread keeps ``prefetch_batches`` batches ready.
    """

    def __init__(self, table: TransitionTable, *, batch_size: int, split: str, seed: int,
                 info: DistInfo = DistInfo(), cfg: LoaderConfig = LoaderConfig(),
                 groups: Sequence[str] = ()) -> None:
        if table.n_row_groups < info.world_size:
            raise ValueError(
                f"transitions table {table.layout.table_path!r} (version "
                f"{table.layout.table_version}) has {table.n_row_groups} Parquet row groups but "
                f"training runs on {info.world_size} ranks; petastorm shards whole row groups, "
                f"so write the table with at least {info.world_size} (many more is better)")
        _require_group_column(table, groups)
        self.table = table
        self.batch_size = batch_size
        self.split = split
        self.groups = tuple(groups)
        self.seed = seed
        self.info = info
        self.cfg = cfg
        self.rows_read = 0

    def batches(self, start_step: int = 0) -> Iterator[TransitionBatch]:
        stream = self._stream(start_step)
        if self.cfg.prefetch_batches > 0:
            return _prefetched(stream, self.cfg.prefetch_batches)
        return stream

    def _stream(self, start_step: int) -> Iterator[TransitionBatch]:
        from petastorm import make_batch_reader
        from petastorm.pytorch import BatchedDataLoader

        # pyarrow 14 warns on every row group about petastorm's legacy ParquetDataset calls.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?$")
        _use_fast_arrow_conversion()
        info, cfg = self.info, self.cfg
        reader = make_batch_reader(
            list(self.table.uris),
            schema_fields=[f"{re.escape(c)}$"
                           for c in (*NUMERIC_COLUMNS, SPLIT, *self.table.optional_columns)],
            reader_pool_type=cfg.reader_pool, workers_count=cfg.workers_count,
            results_queue_size=cfg.results_queue_size,
            # A different order per rank and per (re)start. Shard membership does not depend on
            # the seed (petastorm keeps row group i on shard i % shard_count), so shards stay
            # disjoint across ranks.
            seed=1 + self.seed * 7919 + info.rank * 104_729 + start_step,
            shuffle_rows=True, shuffle_row_groups=True, num_epochs=None,
            cur_shard=info.rank if info.is_distributed else None,
            shard_count=info.world_size if info.is_distributed else None)
        where = (f"transitions table {self.table.layout.table_path!r} (version "
                 f"{self.table.layout.table_version}), shard {info.rank} of {info.world_size}")
        rows = _SplitRows(reader, self.split, self.table.widths(),
                          give_up_after=self.table.n_row_groups, where=where, groups=self.groups)
        loader = BatchedDataLoader(rows, batch_size=self.batch_size,
                                   shuffling_queue_capacity=cfg.shuffle_buffer_rows)
        n = 0
        try:
            for cols in loader:
                b = TransitionBatch(
                    state=cols[STATE], action=cols[ACTION], reward=cols[REWARD].reshape(-1, 1),
                    next_state=cols[NEXT_STATE], is_terminal=cols[IS_TERMINAL].reshape(-1, 1),
                    group=cols[GROUP].reshape(-1, 1))
                n += len(b)
                self.rows_read = rows.rows
                yield b
            raise RuntimeError(f"{where}: petastorm reader stopped after {n} rows although it "
                               f"was opened with num_epochs=None")
        finally:
            reader.stop()
            reader.join()

    def __enter__(self) -> "PetastormSource":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _prefetched(stream: Iterator[TransitionBatch], depth: int) -> Iterator[TransitionBatch]:
    """Run ``stream`` in a daemon thread, ``depth`` items ahead; errors re-raise in the consumer.

    Loader work (petastorm's shuffling buffer is torch ops that release the GIL) then overlaps
    with the update step. Closing the returned generator stops the thread and the stream.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in stream:
                if not put(item):
                    break
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))
        finally:
            close: Callable[[], None] | None = getattr(stream, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="mtf-batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)
