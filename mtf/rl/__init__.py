"""Batch RL for multi-task fusion: BCQ (BatchRL-MTF) and baselines, data loading, DDP training."""
