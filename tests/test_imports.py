"""Importing any mtf module has no side effects (style rule 10)."""
from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

import mtf

# One fresh interpreter imports every module in turn and checks after each import.
CHECK = r"""
import importlib, logging, os, sys
from pyspark import SparkContext
for name in sys.argv[1:]:
    handlers, env = list(logging.getLogger().handlers), dict(os.environ)
    importlib.import_module(name)
    assert logging.getLogger().handlers == handlers, f"{name} configured logging at import"
    assert dict(os.environ) == env, f"{name} changed os.environ at import"
    assert SparkContext._active_spark_context is None, f"{name} started Spark at import"
"""


def test_importing_each_module_has_no_side_effects() -> None:
    names = [m.name for m in pkgutil.walk_packages(mtf.__path__, "mtf.")]
    assert "mtf.spark" in names and "mtf.config" in names
    proc = subprocess.run([sys.executable, "-c", CHECK, *names], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
