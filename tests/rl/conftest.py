"""Fixtures for the trainer's tests: one small synthetic transitions table per session."""
from __future__ import annotations

from typing import Any, Iterator

import pytest
import torch

from tests.rl.tables import write_transitions


@pytest.fixture(scope="session")
def transitions_path(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 5-feature, 6-task transitions table (~900 rows, ~50 files), written once."""
    path = str(tmp_path_factory.mktemp("lake") / "transitions")
    write_transitions(spark, path, n_sessions=300, state_dim=5, seed=0)
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny networks gain nothing from intra-op threads, and on a shared 2-core machine
    OpenMP's spinning threads can slow them down a hundredfold; restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
