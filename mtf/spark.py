"""The one SparkSession factory used by every job and test.

``get_spark(app_name, cfg)`` returns a session with Delta Lake's SQL extension and catalog, UTC
time and TIMESTAMP_MICROS Parquet timestamps. Deployment settings belong to the launcher:

* under ``spark-submit`` (detected by the gateway it hands to Python), the master, memory and
  ``--packages``/``--jars`` given on the command line are kept as they are; mtf only adds the
  correctness settings and checks that Delta's classes are on the classpath;
* started from plain Python (``mtf <cmd>``, pytest), mtf uses ``cfg.master`` and puts the Delta
  jars cached by ``python -m mtf.spark --fetch-jars`` (run by scripts/setup.sh) on the classpath,
  so no download happens at run time.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

from mtf.config import SparkConfig
from mtf.errors import UserError

if TYPE_CHECKING:  # pyspark is imported lazily so `mtf --help` stays fast
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

# Spark 4.0.x is the newest Spark line whose Arrow paths accept pyarrow 14.0.2 (petastorm's
# ceiling); Delta 4.4.0 publishes a build for it under the Spark-suffixed artifact name.
DELTA_PACKAGE = "io.delta:delta-spark_4.0_2.13:4.4.0"

# Settings that are about correctness of our tables, not about deployment: always applied.
CORRECTNESS_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def jars_dir() -> str:
    """Where set-up caches the Delta jars ($MTF_JARS_DIR, default ~/.cache/mtf/jars)."""
    return os.environ.get("MTF_JARS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mtf", "jars")


def delta_jars() -> list[str]:
    """The cached Delta jar files, or [] when set-up has not fetched them yet."""
    return sorted(glob.glob(os.path.join(jars_dir(), "*.jar")))


def require_delta_jars() -> list[str]:
    """The cached Delta jar files; a UserError saying how to fetch them when there are none."""
    jars = delta_jars()
    if not jars:
        raise UserError(f"no Delta Lake jars in {jars_dir()} (MTF_JARS_DIR): run "
                        f"scripts/setup.sh or `python -m mtf.spark --fetch-jars` once to "
                        f"download {DELTA_PACKAGE}")
    return jars


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (the JVM already runs)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(app_name: str, cfg: "SparkConfig | None" = None) -> "SparkSession":
    """Build (or return the running) SparkSession for ``app_name``; see the module docstring."""
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit():
        jars = require_delta_jars()
        # Executors (standalone cluster, local mode) must run this interpreter, not the
        # system python (docs/stack.md).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (builder.master(os.environ.get("MTF_SPARK_MASTER", cfg.master))
                   .config("spark.jars", ",".join(jars))
                   .config("spark.driver.memory", cfg.driver_memory)
                   .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
                   .config("spark.ui.showConsoleProgress", "false"))
        for key, value in cfg.conf.items():
            builder = builder.config(key, value)
    for key, value in CORRECTNESS_CONF.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if under_spark_submit():
        _check_delta_on_classpath(spark)
    return spark


def _check_delta_on_classpath(spark: "SparkSession") -> None:
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    try:
        # --jars land in Spark's context class loader, not the system one Class.forName uses.
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.sql.DeltaSparkSessionExtension")
    except Exception as exc:  # py4j wraps ClassNotFoundException
        raise UserError(
            "Delta Lake classes are not on the classpath: pass them to spark-submit, e.g. "
            f"`--packages {DELTA_PACKAGE}` or `--jars $(mtf jars)`") from exc


def fetch_jars(dest: str | None = None) -> list[str]:
    """Resolve DELTA_PACKAGE and its dependencies from Maven Central into ``dest``.

    Uses Spark's own Ivy resolver (spark.jars.packages) in a throwaway local session, then
    copies the resolved jars. Idempotent: returns at once when the jars are already there.
    """
    dest = dest or jars_dir()
    have = sorted(glob.glob(os.path.join(dest, "*.jar")))
    version = DELTA_PACKAGE.rsplit(":", 1)[1]
    if any(os.path.basename(j).startswith("io.delta_delta-spark") and version in j for j in have):
        return have
    from pyspark.sql import SparkSession

    ivy = os.path.join(os.path.dirname(dest), "ivy")
    logger.info("resolving %s from Maven Central into %s", DELTA_PACKAGE, ivy)
    spark = (SparkSession.builder.master("local[1]").appName("mtf-fetch-jars")
             .config("spark.jars.packages", DELTA_PACKAGE)
             .config("spark.jars.ivy", ivy)
             .config("spark.ui.enabled", "false")
             .getOrCreate())
    spark.stop()
    resolved = glob.glob(os.path.join(ivy, "jars", "*.jar"))
    if not resolved:
        raise RuntimeError(f"Ivy resolved no jars for {DELTA_PACKAGE} under {ivy}")
    # Ivy also drags in other versions of libraries Spark ships (jackson, hadoop, parquet,
    # log4j); two versions of one library on a classpath fail in odd ways, so keep only what
    # Spark lacks.
    shipped = spark_shipped_artifacts()
    resolved = [j for j in resolved if _artifact(os.path.basename(j).split("_", 1)[-1])
                not in shipped]
    tmp = tempfile.mkdtemp(dir=os.path.dirname(dest) or ".", prefix=".jars-")
    for jar in resolved:
        shutil.copy2(jar, tmp)
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.replace(tmp, dest)  # atomic: a half-copied jar dir is never visible
    return sorted(glob.glob(os.path.join(dest, "*.jar")))


def _artifact(jar_name: str) -> str:
    """'hadoop-client-api-3.4.2.jar' -> 'hadoop-client-api'."""
    return re.sub(r"-\d[^-]*(-[^-]*)?\.jar$", "", jar_name)


def spark_shipped_artifacts() -> set[str]:
    import pyspark

    jars = glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "*.jar"))
    return {_artifact(os.path.basename(j)) for j in jars}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.spark")
    parser.add_argument("--fetch-jars", action="store_true",
                        help=f"download {DELTA_PACKAGE} (+deps) into {jars_dir()}")
    args = parser.parse_args(argv)
    if args.fetch_jars:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        os.makedirs(os.path.dirname(jars_dir()), exist_ok=True)
        for jar in fetch_jars():
            print(jar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
