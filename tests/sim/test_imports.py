"""Importing the simulator has no side effects (no logging set-up, no Spark, no RNG seeding)
and needs neither pyspark nor torch."""
from __future__ import annotations

import subprocess
import sys

MODULES = ("config", "truth", "catalog", "users", "world", "state", "policies",
           "logging_policy", "rollout", "generate", "evaluate", "job")

CHECK = f"""
import logging, random, sys
import numpy as np
handlers = list(logging.getLogger().handlers)
py_state, np_state = random.getstate(), np.random.get_state()[1].copy()
for name in {MODULES!r}:
    __import__("mtf.sim." + name)
assert logging.getLogger().handlers == handlers, "logging configured at import"
assert random.getstate() == py_state and (np.random.get_state()[1] == np_state).all()
assert "pyspark" not in sys.modules, "pyspark imported: the in-process simulator needs none"
from pyspark import SparkContext
assert SparkContext._active_spark_context is None, "SparkContext created at import"
assert "torch" not in sys.modules, "torch imported at import time"
"""


def test_importing_every_sim_module_has_no_side_effects() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
