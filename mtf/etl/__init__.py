"""Spark data jobs: validate raw logs, sessionize, point-in-time state, rewards, transitions."""
