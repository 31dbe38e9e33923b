"""Logging set-up, called once by entry points (jobs/, the CLI), never at import."""
from __future__ import annotations

import logging
import time


def setup_logging(level: str = "INFO", rank: int | None = None) -> None:
    """Log to stderr in UTC with the rank (when distributed) in every line."""
    where = f" rank={rank}" if rank is not None else ""
    fmt = f"%(asctime)sZ %(levelname)s{where} %(name)s: %(message)s"
    formatter = logging.Formatter(fmt, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("py4j", "petastorm", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
