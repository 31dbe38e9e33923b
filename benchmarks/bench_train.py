"""Benchmark the trainer's input pipeline: is BCQ slowed down by petastorm?

Measures, in one run and at one batch size:
  1. BCQ update steps/s fed by petastorm from a transitions table (PetastormSource, the path
     `mtf train` uses) vs the same model fed from in-memory tensors already on the device
     (InMemorySource), interleaved and repeated; prints both and their ratio (target >= 0.8);
  2. loader-only rows/s of the petastorm source (no training);
  3. BCQ steps/s and rows/s with 1 vs 2 DDP processes, each fed by its own petastorm shard
     (gloo on CPU; NCCL on CUDA when there are >= 2 GPUs).

Run with:
  .venv/bin/python benchmarks/bench_train.py --json benchmarks/results/bench_train.json  # CPU
  .venv/bin/python benchmarks/bench_train.py --device cuda --format parquet --ddp 0
  .venv/bin/python benchmarks/bench_train.py --smoke   # tiny table and networks: still runs?

``--format delta`` (default) writes the table the way the Spark jobs do (mtf.spark.get_spark +
mtf.delta.write_delta, layout in table properties) and reads its pinned snapshot;
``--format parquet`` writes plain Parquet files with pyarrow (no JVM needed, e.g. on a GPU box
without Java). petastorm reads the same kind of files in both cases.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterator

# Idle OpenMP threads sleep instead of spinning: on a shared or oversubscribed CPU (petastorm's
# reader threads, other ranks, other jobs) spinning threads slowed BCQ steps 10-30x here. It
# must be set before torch loads OpenMP; launchers of real training can export it too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from result import add_result_arguments, parse_with_smoke, write_result  # noqa: E402
from mtf.rl.agent import make_agent, make_generator  # noqa: E402
from mtf.rl.batch import Normalizer, TransitionBatch  # noqa: E402
from mtf.mdp import MdpConfig  # noqa: E402
from mtf.rl.config import BCQConfig, LearnerConfig, LoaderConfig, TrainConfig  # noqa: E402
from mtf.rl.layout import TableLayout  # noqa: E402

TASKS = ("click", "like", "share", "finish", "watch_time", "exit")
SMOKE = {"rows": 4000, "files": 4, "state_dim": 8, "batch_size": 64, "steps": 5, "warmup": 1,
         "repeats": 1, "loader_batches": 20, "hidden": "16,16", "vae_hidden": "16,16"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", type=str, default="cpu", choices=("cpu", "cuda"),
                   help="device for the updates (default: cpu)")
    p.add_argument("--format", type=str, default="delta", choices=("delta", "parquet"),
                   help="table format to write and read (default: delta)")
    p.add_argument("--table", type=str, default="",
                   help="reuse this existing transitions Delta table instead of writing one")
    p.add_argument("--rows", type=int, default=200_000, help="rows to write (default: 200000)")
    p.add_argument("--state-dim", type=int, default=32, help="state features S (default: 32)")
    p.add_argument("--files", type=int, default=16,
                   help="Parquet files = row groups written (default: 16)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per step (default: 256)")
    p.add_argument("--steps", type=int, default=40,
                   help="timed BCQ steps per measurement (default: 40)")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed steps before each measurement (default: 5)")
    p.add_argument("--repeats", type=int, default=2,
                   help="interleaved in-memory / petastorm measurement pairs (default: 2)")
    p.add_argument("--loader-batches", type=int, default=400,
                   help="batches for the loader-only measurement (default: 400)")
    p.add_argument("--ddp", type=int, default=2, metavar="N",
                   help="compare 1 vs N DDP processes; 0 skips (default: 2)")
    p.add_argument("--hidden", type=str, default="400,300",
                   help="actor/critic widths (default: the paper's 400,300)")
    p.add_argument("--vae-hidden", type=str, default="750,750",
                   help="VAE widths (default: the paper's 750,750)")
    p.add_argument("--workers", type=int, default=LoaderConfig().workers_count,
                   help="petastorm reader threads (default: train.loader.workers_count)")
    p.add_argument("--prefetch", type=int, default=LoaderConfig().prefetch_batches,
                   help="batches prefetched by a background thread (default: "
                        "train.loader.prefetch_batches)")
    p.add_argument("--workdir", type=str, default="",
                   help="where to write the table (default: a temporary directory)")
    add_result_arguments(p)
    return parse_with_smoke(p, argv, SMOKE)


def train_config(args: argparse.Namespace) -> TrainConfig:
    widths = (lambda s: tuple(int(x) for x in s.split(",")))
    return TrainConfig(batch_size=args.batch_size, tensorboard=False,
                       common=LearnerConfig(hidden=widths(args.hidden)),
                       bcq=BCQConfig(vae_hidden=widths(args.vae_hidden)),
                       loader=LoaderConfig(workers_count=args.workers,
                                           prefetch_batches=args.prefetch))


# ---- the table ---------------------------------------------------------------------------------

def synthetic_columns(n: int, s: int, k: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    state = (rng.normal(size=(n, s)) * 2 + 1).astype(np.float32)
    return {"state": state,
            "next_state": np.roll(state, -1, axis=0),
            "action": rng.uniform(-1, 1, size=(n, k)).astype(np.float32),
            "reward": rng.normal(size=n),
            "is_terminal": rng.random(n) < 0.25,
            "split": np.where(rng.random(n) < 0.9, "train", "test"),
            # as the ETL writes it: every batch carries the row's group code (IQL's actor rows)
            "explore_group": rng.choice(np.array(["exploit", "noise", "random"]), n,
                                        p=[0.6, 0.2, 0.2])}


def arrow_table(cols: dict[str, Any]) -> Any:
    import pyarrow as pa

    def lists(m: np.ndarray) -> Any:  # (n, w) -> list<float>, as Spark writes arrays
        return pa.ListArray.from_arrays(
            pa.array(np.arange(0, m.size + 1, m.shape[1], dtype=np.int32)),
            pa.array(m.ravel()))

    return pa.table({"session_id": pa.array(np.arange(len(cols["reward"])).astype(str)),
                     "state": lists(cols["state"]), "next_state": lists(cols["next_state"]),
                     "action": lists(cols["action"]), "reward": pa.array(cols["reward"]),
                     "is_terminal": pa.array(cols["is_terminal"]),
                     "split": pa.array(cols["split"]),
                     "explore_group": pa.array(cols["explore_group"])})


def write_parquet(table: Any, out_dir: str, files: int) -> list[str]:
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    per_file = -(-table.num_rows // files)
    uris = []
    for i in range(files):
        path = os.path.join(out_dir, f"part-{i:05d}.parquet")
        pq.write_table(table.slice(i * per_file, per_file), path, row_group_size=per_file)
        uris.append("file://" + path)
    return uris


def write_delta_with_spark(staging: str, path: str, files: int, props: dict[str, str]) -> None:
    from mtf.config import SparkConfig
    from mtf.delta import write_delta
    from mtf.spark import get_spark

    # Delta's default of 50 snapshot tasks costs seconds per commit on a few cores (set-up only)
    spark = get_spark("mtf-bench-train", SparkConfig(
        master="local[2]", shuffle_partitions=files,
        conf={"spark.ui.enabled": "false", "spark.databricks.delta.snapshotPartitions": "2"}))
    try:
        write_delta(spark.read.parquet(staging).repartition(files), path, mode="overwrite",
                    properties=props)
    finally:
        spark.stop()   # free the cores before timing


def build_table(args: argparse.Namespace, workdir: str) -> tuple[str, dict[str, Any]]:
    """Write (or reuse) the table; returns (format, what a worker needs to reopen it)."""
    if args.table:
        return "delta", {"path": args.table}
    s, k = args.state_dim, len(TASKS)
    props = {"mtf.feature_names": json.dumps([f"f{i}" for i in range(s)]),
             "mtf.feature_version": "bench", "mtf.action_tasks": json.dumps(list(TASKS))}
    t0 = time.perf_counter()
    table = arrow_table(synthetic_columns(args.rows, s, k))
    if args.format == "parquet":
        uris = write_parquet(table, os.path.join(workdir, "transitions"), args.files)
        spec = {"uris": uris, "props": props, "rows": args.rows}
    else:
        staging = os.path.join(workdir, "staging")
        write_parquet(table, staging, args.files)
        path = os.path.join(workdir, "transitions")
        write_delta_with_spark(staging, path, args.files, props)
        spec = {"path": path}
    print(f"wrote {args.rows} rows ({args.format}, {args.files} files) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return args.format, spec


def open_table(fmt: str, spec: dict[str, Any]) -> Any:
    from mtf.rl.loader import TransitionTable, open_transitions

    if fmt == "delta":
        return open_transitions(spec["path"])
    layout = TableLayout.from_properties("(parquet files)", 0, spec["props"])
    return TransitionTable(layout, tuple(spec["uris"]), spec["rows"], len(spec["uris"]),
                           ("explore_group",))


# ---- measurements ----------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bcq_steps_per_s(cfg: TrainConfig, batches: Iterator[TransitionBatch], normalizer: Normalizer,
                    layout: TableLayout, device: torch.device, steps: int, warmup: int,
                    wrap_ddp: bool = False) -> float:
    """The training loop's inner step (normalise, move, update), timed after ``warmup``."""
    torch.manual_seed(0)
    agent = make_agent(cfg, layout.state_dim, layout.action_dim, device,
                       make_generator(0, device), gamma=MdpConfig().gamma)
    if wrap_ddp:
        agent.wrap_ddp()
    norm = normalizer.to(device)

    def step(i: int) -> None:
        agent.update(norm.apply(next(batches).to(device, non_blocking=True)), i)

    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    return steps / (time.perf_counter() - t0)


def loader_rows_per_s(make_batches: Callable[[], Iterator[TransitionBatch]], n: int) -> float:
    batches = make_batches()
    try:
        for _ in range(20):                 # reader start-up and shuffle-buffer fill
            next(batches)
        t0 = time.perf_counter()
        rows = sum(len(next(batches)) for _ in range(n))
        return rows / (time.perf_counter() - t0)
    finally:
        getattr(batches, "close", lambda: None)()


def ddp_worker(rank: int, world: int, port: int, fmt: str, spec: dict[str, Any],
               args: argparse.Namespace, out: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    from mtf.rl.distributed import (configure_threads, destroy_distributed, dist_info_from_env,
                                    init_distributed)
    from mtf.rl.loader import PetastormSource

    info = dist_info_from_env()
    device = (torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu"))
    configure_threads(0, info, device)
    created = init_distributed(info, device)
    try:
        table = open_table(fmt, spec)
        cfg = train_config(args)
        normalizer = Normalizer.identity(table.layout.state_dim)
        source = PetastormSource(table, batch_size=cfg.batch_size, split="train", seed=0,
                                 info=info, cfg=cfg.loader)
        batches = source.batches(0)
        try:
            rate = bcq_steps_per_s(cfg, batches, normalizer, table.layout, device, args.steps,
                                   args.warmup, wrap_ddp=True)
        finally:
            batches.close()
        if rank == 0:
            with open(out, "w") as fh:
                json.dump({"steps_per_s": rate, "world": world}, fh)
    finally:
        destroy_distributed(created)


def ddp_rate(world: int, fmt: str, spec: dict[str, Any], args: argparse.Namespace,
             workdir: str) -> dict[str, float]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out = os.path.join(workdir, f"ddp_{world}.json")
    mp.spawn(ddp_worker, args=(world, port, fmt, spec, args, out), nprocs=world, join=True)
    with open(out) as fh:
        rate = json.load(fh)["steps_per_s"]
    return {"steps_per_s": rate, "rows_per_s": rate * args.batch_size * world}


# ---- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from mtf.rl.loader import InMemorySource, PetastormSource, load_in_memory, read_split

    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available", file=sys.stderr)
        return 2
    workdir = args.workdir or tempfile.mkdtemp(prefix="mtf-bench-")
    results: dict[str, Any] = {}        # the figures
    details: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads()}
    try:
        fmt, spec = build_table(args, workdir)
        table = open_table(fmt, spec)
        cfg = train_config(args)
        states, _ = read_split(table, "train", columns=("state",), max_rows=100_000)
        normalizer = Normalizer.fit(states["state"])
        data = load_in_memory(table, "train").to(device)
        details.update({"rows_train": len(data), "row_groups": table.n_row_groups,
                        "state_dim": table.layout.state_dim})
        print(f"{len(data)} training rows, {table.n_row_groups} row groups, S="
              f"{table.layout.state_dim}, k={table.layout.action_dim}, batch {args.batch_size}, "
              f"device {details['device']}, torch threads {torch.get_num_threads()}", flush=True)

        def petastorm_batches() -> Iterator[TransitionBatch]:
            return PetastormSource(table, batch_size=args.batch_size, split="train", seed=0,
                                   cfg=cfg.loader).batches(0)

        def in_memory_rate(r: int) -> float:
            return bcq_steps_per_s(cfg, InMemorySource(data, batch_size=args.batch_size,
                                                       seed=r).batches(0),
                                   normalizer, table.layout, device, args.steps, args.warmup)

        def petastorm_rate(r: int) -> float:
            batches = petastorm_batches()
            try:
                return bcq_steps_per_s(cfg, batches, normalizer, table.layout, device,
                                       args.steps, args.warmup)
            finally:
                batches.close()

        mem, peta = [], []
        for r in range(args.repeats):
            # alternate which source goes first, so drifting machine load favours neither
            if r % 2 == 0:
                mem.append(in_memory_rate(r))
                peta.append(petastorm_rate(r))
            else:
                peta.append(petastorm_rate(r))
                mem.append(in_memory_rate(r))
            print(f"  repeat {r}: in-memory {mem[-1]:.2f} steps/s, petastorm {peta[-1]:.2f} "
                  f"steps/s", flush=True)
        details.update({"in_memory_steps_per_s_each": mem, "petastorm_steps_per_s_each": peta})
        results["bcq_in_memory_steps_per_s"] = statistics.median(mem)
        results["bcq_petastorm_steps_per_s"] = statistics.median(peta)
        results["ratio_petastorm_over_in_memory"] = statistics.median(peta) / statistics.median(mem)
        results["loader_only_rows_per_s"] = loader_rows_per_s(petastorm_batches,
                                                              args.loader_batches)
        print(f"BCQ steps/s  in-memory {results['bcq_in_memory_steps_per_s']:.2f}  "
              f"petastorm {results['bcq_petastorm_steps_per_s']:.2f}  ratio "
              f"{results['ratio_petastorm_over_in_memory']:.2f} (target >= 0.8)")
        print(f"petastorm loader only: {results['loader_only_rows_per_s']:.0f} rows/s")
        if args.ddp > 1:
            if device.type == "cuda" and torch.cuda.device_count() < args.ddp:
                details["ddp_skipped"] = (f"{args.ddp} ranks need {args.ddp} GPUs, found "
                                          f"{torch.cuda.device_count()}")
                print(f"DDP skipped: {details['ddp_skipped']}")
            else:
                for world in (1, args.ddp):
                    r = ddp_rate(world, fmt, spec, args, workdir)
                    results[f"ddp_{world}_steps_per_s"] = r["steps_per_s"]
                    results[f"ddp_{world}_rows_per_s"] = r["rows_per_s"]
                    print(f"DDP {world} process(es), petastorm-fed: {r['steps_per_s']:.2f} "
                          f"steps/s per rank, {r['rows_per_s']:.0f} rows/s in total", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    write_result(args.json, "bench_train", results, vars(args), args.smoke, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
