"""``mtf build-transitions``: the Spark job behind jobs/build_transitions.py.

Run with (local mode)::

    PYSPARK_PYTHON=$PWD/.venv/bin/python .venv/bin/spark-submit --jars "$(.venv/bin/mtf jars)" \\
        jobs/build_transitions.py lake.root=/data/lake etl.start_ds=2026-01-02

or in-process: ``mtf build-transitions lake.root=/data/lake``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mtf.etl.pipeline import run_build_transitions
from mtf.spark import get_spark

if TYPE_CHECKING:
    from mtf.config import MtfConfig

logger = logging.getLogger(__name__)


def run(cfg: "MtfConfig") -> int:
    """Build (or incrementally extend) the transitions table; 0 on success.

    The SparkSession is not stopped: under spark-submit the process ends anyway, and an
    in-process caller (tests, notebooks) keeps its session.
    """
    spark = get_spark("mtf-build-transitions", cfg.spark)
    run_build_transitions(spark, cfg)
    return 0
