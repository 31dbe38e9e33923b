r"""Validate raw logs and build the (state, action, reward, next_state) transition table.

Run with (from the repository root; executors must run the venv's Python):
  PYSPARK_PYTHON=$PWD/.venv/bin/python .venv/bin/spark-submit --master 'local[2]' \
      --jars "$(.venv/bin/mtf jars)" jobs/build_transitions.py --conf-file conf/local.yaml \
      lake.root=/data/lake etl.start_ds=2026-01-02
On a cluster: --master spark://host:7077 (or yarn, k8s://...) and --conf-file conf/cluster.yaml.
All logic lives in the mtf library; this file only hands its arguments to `mtf build-transitions`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-transitions", *sys.argv[1:]]))
