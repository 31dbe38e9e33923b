"""The closed loop over simulated days: logs -> transitions -> train -> evaluate -> deploy.

Run with:
  python jobs/pipeline.py --conf-file conf/local.yaml
All logic lives in the mtf library; this file only hands its arguments to `mtf pipeline`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
