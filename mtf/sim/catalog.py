"""The item catalog: latent truth per item (quality, clickbait appeal, length, category)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtf.sim.config import CatalogConfig


@dataclass(frozen=True)
class Catalog:
    """Item traits, indexed by item number ``0 .. n_items - 1`` (item_id ``i0000042``).

    ``quality`` and ``bait`` are standard normal (correlated by ``quality_bait_corr``);
    ``letdown = max(bait - quality, 0)`` is how far the item's appeal over-promises: what
    disappoints a clickbait-sensitive user who clicks it.
    """

    quality: np.ndarray      # (n,) float64
    bait: np.ndarray         # (n,) float64, clickbait appeal
    letdown: np.ndarray      # (n,) float64 >= 0
    log_length: np.ndarray   # (n,) float64, log(duration / median duration)
    duration_s: np.ndarray   # (n,) float64, seconds
    category: np.ndarray     # (n,) int64 in [0, n_categories)

    @property
    def n_items(self) -> int:
        return int(self.quality.shape[0])


def make_catalog(cfg: CatalogConfig, rng: np.random.Generator) -> Catalog:
    """Draw the catalog. Item order is random, so any set of indices is an iid sample."""
    n = cfg.n_items
    z = rng.standard_normal((n, 2))
    quality = z[:, 0]
    rho = cfg.quality_bait_corr
    bait = rho * z[:, 0] + np.sqrt(1.0 - rho * rho) * z[:, 1]
    duration = np.clip(cfg.duration_median_s * np.exp(cfg.duration_log_sd * rng.standard_normal(n)),
                       cfg.duration_min_s, cfg.duration_max_s)
    category = rng.integers(0, cfg.n_categories, n)
    return Catalog(quality=quality, bait=bait, letdown=np.maximum(bait - quality, 0.0),
                   log_length=np.log(duration / cfg.duration_median_s),
                   duration_s=duration, category=category)
