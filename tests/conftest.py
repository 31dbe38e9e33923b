"""Shared fixtures: one session-scoped local SparkSession with real Delta Lake."""
from __future__ import annotations

from typing import Any, Iterator

import pytest


# The longest modules (minutes each on 2 cores), longest first; see pytest_collection_modifyitems.
# By the time each took in a --durations run (2026-12-04), longest first.
LONGEST_FIRST = ("tests.test_benchmarks", "tests.test_maintenance", "tests.test_cluster",
                 "tests.etl.test_concurrent", "tests.etl.test_incremental", "tests.test_target",
                 "tests.test_ope_accuracy", "tests.test_pipeline",
                 "tests.etl.test_profile_snapshots", "tests.rl.test_job", "tests.ope.test_stream",
                 "tests.etl.test_foreign_logs")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """The longest modules first, then the others with slow tests, then the rest (collection
    order within each group; deterministic, as pytest-xdist requires).

    scripts/test.sh runs two xdist workers that take whole modules in this order: starting the
    long ones first lets the short ones fill the gaps, instead of one worker running a long
    module alone at the end.
    """
    def module(item: Any) -> str:
        return getattr(getattr(item, "module", None), "__name__", "")

    slow = {module(item) for item in items if item.get_closest_marker("slow") is not None}
    order = {id(item): i for i, item in enumerate(items)}

    def rank(item: Any) -> tuple[int, int]:
        name = module(item)
        if name in LONGEST_FIRST:
            return LONGEST_FIRST.index(name), order[id(item)]
        return len(LONGEST_FIRST) + (name not in slow), order[id(item)]

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _drop_log_handlers_added_by_the_test() -> Iterator[None]:
    """``mtf.cli.main`` points the root logger at the sys.stderr of its moment, in a test
    capsys's buffer, which is closed after that test: later log lines would fail to write."""
    import logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
    for handler in before:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def spark() -> Iterator["object"]:
    from mtf.config import SparkConfig
    from mtf.spark import get_spark

    cfg = SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="3g",
                      conf={"spark.ui.enabled": "false",
                            "spark.sql.adaptive.coalescePartitions.enabled": "false",
                            "spark.default.parallelism": "2",
                            "spark.databricks.delta.snapshotPartitions": "2"})
    session = get_spark("mtf-tests", cfg)
    yield session
    session.stop()
