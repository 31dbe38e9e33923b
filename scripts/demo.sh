#!/usr/bin/env bash
# Install everything (idempotent) and run the main job on the embedded default config
# (local Spark, a local Delta lake under ./lake, simulator data). Extra args: config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYSPARK_PYTHON="$PWD/.venv/bin/python"
exec .venv/bin/mtf pipeline "$@"
