#!/usr/bin/env bash
# Install everything (idempotent) and run the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
# Idle OpenMP threads sleep instead of spinning: torch and Spark share 2 cores here.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# Two workers (pytest-xdist), a module per worker at a time: most tests wait on JVM start-up,
# Spark scheduling and small Delta commits, so two share the 2 cores well. -n 0 runs serially.
exec .venv/bin/python -m pytest -q -n "${MTF_TEST_WORKERS:-2}" --dist loadfile "$@"
