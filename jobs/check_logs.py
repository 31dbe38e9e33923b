r"""Check the raw impression logs against the input contract and the row rules; writes nothing.

Run with (from the repository root; executors must run the venv's Python):
  PYSPARK_PYTHON=$PWD/.venv/bin/python .venv/bin/spark-submit --master 'local[2]' \
      --jars "$(.venv/bin/mtf jars)" jobs/check_logs.py --conf-file conf/local.yaml \
      lake.root=/data/lake etl.start_ds=2026-01-02 check.json_out=/tmp/check.json
Exit code 0 when build-transitions can build the table (rejected rows included), 2 when its
schema would stop the build. All logic lives in the mtf library; this file only hands its
arguments to `mtf check-logs`.
"""
import sys

from mtf.cli import main

if __name__ == "__main__":
    sys.exit(main(["check-logs", *sys.argv[1:]]))
