"""Benchmark: the transition build vs. the copy floor, and its scaling.

For each size N (default 2M, then 4 x 2M impressions) it writes seeded synthetic impression logs
and a user-profile table for their users to Delta (set-up, not timed), then times, in one Spark
session:

* copy floor: read the logs and write them unchanged to a new Delta table;
* full build: ``run_build_transitions`` (validate -> quarantine -> sessions, state with the
  profile join, rewards -> transitions written to Delta), a full rebuild of every day.

It prints impressions/s of both, the ratio build/copy (target <= 3) and, across sizes, the
build's seconds per million impressions (flat = linear scaling). ``--dirty F`` makes a fraction
F of the rows invalid and redelivers another F as duplicates. ``--skew`` adds one user with
1M impressions to the first size (the job must not fail at default memory settings).

Run with (about 10-20 minutes on 2 cores; ``--smoke``: tiny sizes, no warm-up, under a minute)::

    .venv/bin/python benchmarks/bench_etl.py [--sizes 2000000 8000000] [--dirty 0.001] [--skew]
        [--workdir DIR] [--json benchmarks/results/bench_etl.json] [--smoke]
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from result import add_result_arguments, parse_with_smoke, write_result

TASKS = ("click", "like", "share", "finish", "watch_time", "exit")


def generate(n_target: int, seed: int, days: int = 2, skew_user_impressions: int = 0
             ) -> pa.Table:
    """Seeded synthetic logs of about ``n_target`` impressions (input contract columns).

    Users have sessions of geometric length (mean 5 requests), pages of 4..10 items, 5..120 s
    between requests in a session and hours between sessions, over ``days`` days from
    2026-01-01; 5% of users log an app session id. ``skew_user_impressions`` adds one user
    ('skew') with that many impressions in back-to-back sessions.
    """
    rng = np.random.default_rng(seed)
    mean_page, mean_session, sessions_per_user = 7.0, 5.0, 6.0
    n_users = max(1, int(n_target / (mean_page * mean_session * sessions_per_user)))
    t0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    span = days * 86_400 * 1_000_000
    # Sessions: user, start, number of requests.
    n_sess = rng.poisson(sessions_per_user, n_users) + 1
    sess_user = np.repeat(np.arange(n_users), n_sess)
    sess_start = t0 + rng.integers(0, span, sess_user.size)
    sess_len = rng.geometric(1.0 / mean_session, sess_user.size)
    users = [sess_user]
    starts = [sess_start]
    lens = [sess_len]
    if skew_user_impressions:
        n_req = skew_user_impressions // 7
        k = n_req // 50
        users.append(np.full(k, n_users))
        starts.append(t0 + np.sort(rng.integers(0, span, k)))
        lens.append(np.full(k, 50))
    sess_user, sess_start, sess_len = map(np.concatenate, (users, starts, lens))
    # Requests.
    req_sess = np.repeat(np.arange(sess_user.size), sess_len)
    first = np.r_[0, np.cumsum(sess_len)[:-1]]
    step = np.arange(req_sess.size) - np.repeat(first, sess_len)
    gaps = rng.integers(5_000_000, 120_000_000, req_sess.size)
    gaps[step == 0] = 0
    offs = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], sess_len)
    req_ts = np.minimum(sess_start[req_sess] + offs, t0 + span - 1)
    req_user = sess_user[req_sess]
    page = rng.integers(4, 11, req_sess.size)
    if skew_user_impressions:
        page[req_user == n_users] = 7
    # Impressions.
    n = int(page.sum())
    r = np.repeat(np.arange(req_sess.size), page)
    pos = (np.arange(n) - np.repeat(np.r_[0, np.cumsum(page)[:-1]], page)).astype(np.int32)
    ts = req_ts[r]
    user_ids = np.where(req_user == n_users, "skew",
                        np.char.add("u", req_user.astype(str)).astype(object))[r]
    weights = rng.uniform(0.0, 2.0, (req_sess.size, len(TASKS)))[r]
    dur = rng.uniform(5.0, 120.0, n)
    play = dur * rng.beta(1.2, 1.5, n) * rng.choice([1.0, 1.8], n, p=[0.9, 0.1])
    app_sid = np.where(rng.random(n_users + 1)[req_user[r]] < 0.05,
                       np.char.add("s", req_sess[r].astype(str)).astype(object), None)
    cols = {
        "event_id": pa.array(np.char.add("e", np.arange(n).astype(str))),
        "user_id": pa.array(user_ids.astype(str)),
        "request_id": pa.array(np.char.add("r", r.astype(str))),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "ds": pa.array((ts // 86_400_000_000).astype(np.int32)).cast(pa.date32()),
        "item_id": pa.array(np.char.add("i", rng.integers(0, 200_000, n).astype(str))),
        "position": pa.array(pos),
        **{f"pred_{t}": pa.array(rng.random(n)) for t in TASKS},
        "fusion_weights": pa.FixedSizeListArray.from_arrays(pa.array(weights.ravel()),
                                                            len(TASKS)).cast(
                                                                pa.list_(pa.float64())),
        "explore_group": pa.array(np.array(["exploit", "noise", "random"])[
            rng.integers(0, 3, req_sess.size)][r]),
        "action_logp": pa.array(rng.normal(size=req_sess.size)[r]),
        "play_time_s": pa.array(play),
        "duration_s": pa.array(dur),
        "liked": pa.array((rng.random(n) < 0.05).astype(np.int32)),
        "shared": pa.array((rng.random(n) < 0.01).astype(np.int32)),
        "commented": pa.array((rng.random(n) < 0.01).astype(np.int32)),
        "followed": pa.array((rng.random(n) < 0.005).astype(np.int32)),
        "app_session_id": pa.array(app_sid, pa.string()),
    }
    return pa.table(cols)


def add_dirty_rows(table: pa.Table, fraction: float, seed: int) -> pa.Table:
    """Make ``fraction`` of the rows bad (negative play time) and redeliver another ``fraction``
    (exact copies appended: duplicate event ids), as real logs have."""
    if fraction <= 0:
        return table
    rng = np.random.default_rng(seed)
    n = table.num_rows
    k = max(1, int(n * fraction))
    bad = np.zeros(n, dtype=bool)
    bad[rng.choice(n, k, replace=False)] = True
    play = np.where(bad, -1.0, table.column("play_time_s").to_numpy())
    table = table.set_column(table.schema.get_field_index("play_time_s"), "play_time_s",
                             pa.array(play))
    return pa.concat_tables([table, table.take(pa.array(rng.choice(n, k, replace=False)))])


def profiles(logs: pa.Table, columns: list[str], seed: int) -> pa.Table:
    """A seeded user-profile table (the profile contract: ``user_id`` + double columns in
    [0, 1]) with one row per user of ``logs``, as a production lake has for its users."""
    users = pc.unique(logs.column("user_id"))
    rng = np.random.default_rng(seed)
    return pa.table({"user_id": users,
                     **{c: pa.array(rng.random(len(users))) for c in columns}})


def write_delta_table(spark, table: pa.Table, workdir: str, name: str,
                      partition_by: str | None = None, partitions: int = 8) -> str:
    """Write ``table`` as a Delta table (via Parquet, not timed)."""
    pq_dir = os.path.join(workdir, f"{name}_parquet")
    os.makedirs(pq_dir, exist_ok=True)
    pq.write_table(table, os.path.join(pq_dir, "part-0.parquet"), row_group_size=500_000)
    path = os.path.join(workdir, name)
    writer = spark.read.parquet(pq_dir).repartition(partitions).write.format("delta") \
        .mode("overwrite")
    (writer.partitionBy(partition_by) if partition_by else writer).save(path)
    shutil.rmtree(pq_dir)
    return path


def write_inputs(spark, logs: pa.Table, workdir: str, name: str, profile_columns: list[str],
                 seed: int) -> tuple[str, str]:
    """The build's two inputs: the logs partitioned by ds and their users' profiles."""
    raw = write_delta_table(spark, logs, workdir, f"raw_{name}", partition_by="ds")
    prof = write_delta_table(spark, profiles(logs, profile_columns, seed), workdir,
                             f"profiles_{name}", partitions=2)
    return raw, prof


def copy_floor(spark, raw: str, out: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    spark.read.format("delta").load(raw).write.format("delta").mode("overwrite") \
        .partitionBy("ds").save(out)
    return time.perf_counter() - t


def full_build(spark, raw: str, prof: str, root: str) -> tuple[float, object]:
    from mtf.config import load_config
    from mtf.etl.pipeline import run_build_transitions

    shutil.rmtree(root, ignore_errors=True)
    cfg = load_config(None, [f"lake.root={root}", f"lake.raw_logs={raw}",
                             f"lake.user_profiles={prof}"])
    t = time.perf_counter()
    summary = run_build_transitions(spark, cfg)
    return time.perf_counter() - t, summary


SMOKE = {"sizes": [20_000], "repeat": 1, "warmup": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 8_000_000],
                        metavar="N", help="impressions per run (default: 2000000 8000000)")
    parser.add_argument("--skew", action="store_true",
                        help="add one user with 1M impressions to the first size")
    parser.add_argument("--repeat", type=int, default=2, metavar="R",
                        help="runs per measurement; the fastest counts (default 2)")
    parser.add_argument("--warmup", type=int, default=300_000, metavar="N",
                        help="impressions of an untimed copy + build first, so that the JIT has "
                             "compiled Spark's generated code (default 300000; 0 = none)")
    parser.add_argument("--dirty", type=float, default=0.0, metavar="F",
                        help="make a fraction F of the rows bad and redeliver another F as "
                             "duplicates, so quarantine and duplicate ranking have work "
                             "(default 0: clean logs)")
    parser.add_argument("--workdir", type=str, default=None,
                        help="scratch directory (default: a temp dir, removed at the end)")
    add_result_arguments(parser)
    args = parse_with_smoke(parser, argv, SMOKE)
    logging.basicConfig(level=logging.WARNING)

    from mtf.config import SparkConfig, load_config
    from mtf.spark import get_spark

    defaults = load_config(None)
    spark_cfg, profile_columns = defaults.spark, list(defaults.features.profile_columns)
    spark = get_spark("mtf-bench-etl", SparkConfig(
        master=spark_cfg.master, shuffle_partitions=spark_cfg.shuffle_partitions,
        driver_memory=spark_cfg.driver_memory,
        conf={**spark_cfg.conf, "spark.ui.enabled": "false"}))
    workdir = args.workdir or tempfile.mkdtemp(prefix="mtf-bench-etl-")
    runs: list[dict] = []
    try:
        if args.warmup:
            raw, prof = write_inputs(spark, generate(args.warmup, seed=1), workdir, "warmup",
                                     profile_columns, seed=2)
            copy_floor(spark, raw, os.path.join(workdir, "warm_copy"))
            full_build(spark, raw, prof, os.path.join(workdir, "warm_lake"))
        for i, n in enumerate(args.sizes):
            skew = 1_000_000 if (args.skew and i == 0) else 0
            table = add_dirty_rows(generate(n, seed=42 + i, skew_user_impressions=skew),
                                   args.dirty, seed=7 + i)
            raw, prof = write_inputs(spark, table, workdir, str(i), profile_columns,
                                     seed=100 + i)
            rows = table.num_rows
            del table
            copies = [copy_floor(spark, raw, os.path.join(workdir, f"copy_{i}"))
                      for _ in range(args.repeat)]
            builds = [full_build(spark, raw, prof, os.path.join(workdir, f"lake_{i}"))
                      for _ in range(args.repeat)]
            copy_s = min(copies)
            build_s, summary = min(builds, key=lambda x: x[0])
            runs.append({"impressions": rows, "skew_user_impressions": skew,
                         "copy_s": copy_s, "build_s": build_s,
                         "copy_s_each": copies, "build_s_each": [b for b, _ in builds],
                         "steps": summary.steps, "sessions": summary.sessions,
                         "rows_quarantined": summary.rows_quarantined,
                         "rejected_by_reason": dict(summary.rejected_by_reason)})
            print(f"N={rows:,} impressions{' (incl. 1M-impression user)' if skew else ''}: "
                  f"copy floor {copy_s:.1f} s ({rows / copy_s / 1e3:.0f}k impr/s), "
                  f"full build {build_s:.1f} s ({rows / build_s / 1e3:.0f}k impr/s), "
                  f"ratio {build_s / copy_s:.2f}x; steps {summary.steps:,}, "
                  f"sessions {summary.sessions:,}, quarantined {summary.rows_quarantined:,} "
                  f"{summary.rejected_by_reason}", flush=True)
        base = runs[0]
        for run in runs[1:]:
            print(f"scaling {base['impressions']:,} -> {run['impressions']:,} "
                  f"({run['impressions'] / base['impressions']:.1f}x data): build "
                  f"{run['build_s'] / base['build_s']:.2f}x time, "
                  f"{1e6 * run['build_s'] / run['impressions']:.1f} s/M impr vs "
                  f"{1e6 * base['build_s'] / base['impressions']:.1f}; ratio to copy "
                  f"{run['build_s'] / run['copy_s']:.2f}x")
    finally:
        spark.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    write_result(args.json, "bench_etl", figures(runs), vars(args), args.smoke,
                 {"runs": runs, "profile_columns": profile_columns})
    return 0


def figures(runs: list[dict]) -> dict[str, float]:
    """The first size's figures (the <= 3x target is stated there) and, with more sizes, the
    largest size's and the scaling between them."""
    def of(run: dict, prefix: str = "") -> dict[str, float]:
        n = run["impressions"]
        return {f"{prefix}impressions": n, f"{prefix}copy_s": run["copy_s"],
                f"{prefix}build_s": run["build_s"],
                f"{prefix}ratio_build_over_copy": run["build_s"] / run["copy_s"],
                f"{prefix}copy_impressions_per_s": n / run["copy_s"],
                f"{prefix}build_impressions_per_s": n / run["build_s"],
                f"{prefix}build_s_per_million": 1e6 * run["build_s"] / n}

    out = of(runs[0])
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        out.update(of(last, "largest_"))
        out["scaling_data_ratio"] = last["impressions"] / first["impressions"]
        out["scaling_build_time_ratio"] = last["build_s"] / first["build_s"]
    return out


if __name__ == "__main__":
    sys.exit(main())
