#!/usr/bin/env bash
# Install everything (idempotent) and run the main job on the embedded default config
# (local Spark, a local Delta lake under ./lake, simulator data). Extra args: config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
# Idle OpenMP threads sleep instead of spinning: torch and Spark share 2 cores here.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/mtf pipeline "$@"
