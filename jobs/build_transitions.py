"""Validate raw logs and build the (state, action, reward, next_state) transition table.

Run with:
  spark-submit --jars "$(mtf jars)" jobs/build_transitions.py --conf-file conf/local.yaml
All logic lives in the mtf library; this file only hands its arguments to `mtf build-transitions`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-transitions", *sys.argv[1:]]))
