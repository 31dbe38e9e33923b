"""Conservative off-policy evaluation of exported policies; writes the report.

Run with:
  spark-submit --jars "$(mtf jars)" jobs/evaluate.py --conf-file conf/local.yaml
All logic lives in the mtf library; this file only hands its arguments to `mtf evaluate`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
