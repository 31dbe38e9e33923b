#!/usr/bin/env bash
# Install everything (idempotent) and run the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
# Idle OpenMP threads sleep instead of spinning: torch and Spark share 2 cores here.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# The suite's Spark JVMs (the local sessions and every spark-submit a test starts) run small
# jobs for minutes at most: the client JIT alone and the serial collector cost far less CPU
# than the server JIT's compiler threads and the parallel collector. Tests only.
export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC}"
# Two pytest-xdist workers by module (longest first, tests/conftest.py); MTF_TEST_WORKERS=0
# runs serially. Every result the suite asserts is deterministic under either (the learning
# target trains in memory on one thread, tests/test_target.py).
workers="${MTF_TEST_WORKERS:-2}"
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
