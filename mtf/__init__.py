"""mtf: batch-RL multi-task fusion (BatchRL-MTF) on Spark, Delta Lake and PyTorch.

Importing mtf has no side effects: no logging set-up, no SparkSession, no RNG seeding.
"""
__version__ = "0.1.0"
