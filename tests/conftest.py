"""Shared fixtures: one session-scoped local SparkSession with real Delta Lake."""
from __future__ import annotations

from typing import Iterator

import pytest


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
