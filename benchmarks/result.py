"""What every benchmark shares: the ``--smoke`` / ``--json`` arguments and the result JSON.

A result file records the figures together with what they depend on (sizes and arguments,
machine, load, commit), so a number in README or docs can be traced to the run that made it::

    {"benchmark": "bench_etl", "smoke": false, "figures": {"ratio_build_over_copy": 2.46, ...},
     "sizes": {...arguments...}, "details": {...}, "command": "...", "utc": "...",
     "machine": {...}, "git": {"commit": "...", "dirty": false}}

``figures`` holds only finite numbers (rates, seconds, ratios, percentages); anything else a
benchmark reports (per-size rows, summaries, text) goes to ``details``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from typing import Any, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_result_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes through the same code paths, seconds instead of "
                             "minutes (tests/test_benchmarks.py runs it; its figures mean "
                             "nothing)")
    parser.add_argument("--json", type=str, default="", metavar="PATH",
                        help="write the result JSON to PATH (see benchmarks/result.py)")


def parse_with_smoke(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                     smoke: Mapping[str, Any]) -> argparse.Namespace:
    """Parse ``argv``; with ``--smoke`` the ``smoke`` values replace the defaults, so arguments
    given explicitly still win."""
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def machine() -> dict[str, Any]:
    """Facts that move the figures; versions from package metadata (importing torch is slow)."""
    facts: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "python": platform.python_version()}
    for package in ("torch", "pyspark", "delta-spark", "petastorm"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts[package] = None
    try:
        facts["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:        # not available on every platform
        facts["load_average_1min"] = None
    return facts


def git_state() -> dict[str, Any]:
    """The commit the code came from and whether tracked files differed from it (untracked
    files, such as new result files, do not count); nulls outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_result(path: str, benchmark: str, figures: Mapping[str, float],
                 sizes: Mapping[str, Any], smoke: bool,
                 details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the result record, write it to ``path`` (if given) and print it; returns it.

    ``figures`` must be finite numbers: a NaN or a string there is a bug of the benchmark, and
    failing here keeps it out of the recorded results.
    """
    bad = {k: v for k, v in figures.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        raise ValueError(f"{benchmark}: figures must be finite numbers, got {bad}")
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT) if sys.argv[0] else benchmark
    record = {
        "benchmark": benchmark,
        "smoke": bool(smoke),
        "figures": dict(figures),
        # the arguments that shaped the run; where the result went and --smoke are recorded
        # elsewhere
        "sizes": {k: v for k, v in sizes.items() if k not in ("json", "smoke")},
        "details": dict(details or {}),
        "command": shlex.join(["python", script, *sys.argv[1:]]),
        "utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "git": git_state(),
    }
    text = json.dumps(record, indent=2, default=str)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text + "\n")
    print(text, flush=True)
    return record
