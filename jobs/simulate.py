"""Simulate impression logs and user profiles into Delta.

Run with:
  spark-submit --jars "$(mtf jars)" jobs/simulate.py --conf-file conf/local.yaml sim.n_days=3
All logic lives in the mtf library; this file only hands its arguments to `mtf simulate`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
