r"""Compact the lake's Delta tables and VACUUM them, keeping every pinned version readable.

Run with (from the repository root; executors must run the venv's Python):
  PYSPARK_PYTHON=$PWD/.venv/bin/python .venv/bin/spark-submit --master 'local[2]' \
      --jars "$(.venv/bin/mtf jars)" jobs/maintain.py --conf-file conf/local.yaml
On a cluster: --master spark://host:7077 (or yarn, k8s://...) and --conf-file conf/cluster.yaml.
All logic lives in the mtf library (mtf/maintenance/); this file only hands its arguments to
`mtf maintain`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["maintain", *sys.argv[1:]]))
