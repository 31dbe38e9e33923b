"""Fit reward weights by regressing future dwell time on per-step feedback.

Run with:
  spark-submit --jars "$(mtf jars)" jobs/calibrate_rewards.py --conf-file conf/local.yaml
All logic lives in the mtf library; this file only hands its arguments to `mtf calibrate-rewards`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["calibrate-rewards", *sys.argv[1:]]))
