"""The support guard's measure: nearest logged actions, the radius and the shares."""
from __future__ import annotations

import numpy as np
import pytest

from mtf.ope.support import nearest_distance, support_shares


def test_nearest_distance_with_and_without_the_row_itself() -> None:
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    assert nearest_distance(np.array([[3.0, 0.0]]), pts).tolist() == [3.0]
    # each point's nearest other point: 1 (0 -> 2), 4.2426 (1 -> 2), 1 (2 -> 0)
    own = nearest_distance(pts, pts, exclude=np.arange(3))
    np.testing.assert_allclose(own, [1.0, np.hypot(3.0, 3.0), 1.0], rtol=1e-6)


def test_shares_count_target_actions_within_the_logged_radius() -> None:
    """Logged actions on a 1-d grid 0, 0.1, ..., 1 (nearest other 0.1 everywhere, so r = 0.1):
    a policy at 0.55 is within 0.05 of two of them (share 1), one at 1.5 is 0.5 away (0), one
    that alternates between the two has share 0.5."""
    logged = np.round(np.arange(11) / 10.0, 1).reshape(-1, 1)
    n = logged.shape[0]
    pa = np.stack([np.full((n, 1), 0.55), np.full((n, 1), 1.5),
                   np.where(np.arange(n) % 2 == 0, 0.55, 1.5).reshape(-1, 1)])
    shares, radius = support_shares(logged, pa, quantile=0.9, sample_rows=n, seed=0)
    assert radius == pytest.approx(0.1, abs=1e-6)
    assert shares[0] == 1.0 and shares[1] == 0.0
    assert shares[2] == pytest.approx(6 / 11)          # rows 0, 2, ..., 10 sit at 0.55
    with pytest.raises(ValueError, match="at least two logged actions"):
        support_shares(logged[:1], pa[:, :1], quantile=0.9, sample_rows=5, seed=0)


def test_the_logged_policy_itself_is_fully_supported() -> None:
    rng = np.random.default_rng(3)
    logged = rng.normal(0.0, 0.3, size=(500, 6))
    shares, _ = support_shares(logged, np.stack([logged, logged + 2.0]), quantile=0.9,
                               sample_rows=200, seed=1)
    assert shares[0] == 1.0 and shares[1] == 0.0


def test_distance_blocks_do_not_change_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtf.ope.support as support

    rng = np.random.default_rng(5)
    pts, q = rng.normal(size=(300, 3)), rng.normal(size=(40, 3))
    whole = nearest_distance(q, pts)
    monkeypatch.setattr(support, "_BLOCK_FLOATS", 700)          # 2 query rows per block
    np.testing.assert_allclose(nearest_distance(q, pts), whole, rtol=1e-5)   # float32 cdist
    own = nearest_distance(pts[:40], pts, exclude=np.arange(40))
    monkeypatch.setattr(support, "_BLOCK_FLOATS", 1 << 24)
    np.testing.assert_allclose(nearest_distance(pts[:40], pts, exclude=np.arange(40)), own,
                               rtol=1e-5)
