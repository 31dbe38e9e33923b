"""ETL test settings on the shared session: small Delta snapshot jobs (as conf/local.yaml)."""
from __future__ import annotations

from typing import Iterator

import pytest

# Delta rebuilds a snapshot with 50 tasks by default: seconds per tiny write on 2 cores.
FAST_CONF = {"spark.databricks.delta.snapshotPartitions": "2"}


@pytest.fixture(scope="session", autouse=True)
def _fast_delta(spark) -> Iterator[None]:
    old = {k: spark.conf.get(k, None) for k in FAST_CONF}
    for k, v in FAST_CONF.items():
        spark.conf.set(k, v)
    yield
    for k, v in old.items():
        if v is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, v)
