"""Train the fusion policy (`train.algo`: iql, bcq, td3, cql, bc) on the transitions table.

Run with:
  torchrun --nproc_per_node 2 jobs/train.py --conf-file conf/local.yaml train.batch_size=512
All logic lives in the mtf library; this file only hands its arguments to `mtf train`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
