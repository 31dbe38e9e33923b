"""The tuning / held-out protocol of every simulator experiment (section ``protocol``).

A simulated world is a world seed plus structural overrides of the ``sim`` section; its ground
truth is measured on the sessions of one truth seed. Worlds have one of two roles:

* **tuning**: settings (a default, a sweep winner, a threshold) may be chosen by scoring
  variants on their ground truth;
* **held-out**: only reported. Their world seeds and truth seeds are never used for a choice:
  :func:`require_tuning` stops any sweep that is pointed at one, and the README's headline
  numbers and the target test come from them.

The lists live in the config (``conf/local.yaml``) so that a reader sees in one place which
worlds chose the defaults and which measure them (docs/training.md, "Tuning and held-out
worlds").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mtf.errors import UserError

TUNING, HELDOUT = "tuning", "heldout"


@dataclass(frozen=True)
class WorldSpec:
    """One simulated world: ``seed`` (the top-level ``seed``: catalog, users, MTL errors),
    ``truth_seed`` (the sessions of its ground truth) and ``overrides`` of the sim structure."""

    name: str
    seed: int
    truth_seed: int
    overrides: tuple[str, ...] = ()     # KEY=VALUE config overrides (sim structure only)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("protocol: every world needs a name")
        bad = [o for o in self.overrides if "=" not in o or not o.startswith("sim.")]
        if bad:
            raise ValueError(f"protocol world {self.name}: overrides must be sim.KEY=VALUE, "
                             f"got {bad}")

    def config_overrides(self) -> list[str]:
        """The ``key=value`` overrides that turn a config into this world."""
        return [f"seed={self.seed}", f"pipeline.truth_seed={self.truth_seed}",
                *self.overrides]


@dataclass(frozen=True)
class ProtocolConfig:
    """Section ``protocol``: which worlds may choose settings and which only report."""

    tuning: tuple[WorldSpec, ...] = ()
    heldout: tuple[WorldSpec, ...] = ()

    def __post_init__(self) -> None:
        worlds = [*self.tuning, *self.heldout]
        names = [w.name for w in worlds]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"protocol: world names must be unique, repeated: {dup}")
        held_seeds = {w.seed for w in self.heldout} | {w.truth_seed for w in self.heldout}
        clash = sorted(w.name for w in self.tuning
                       if w.seed in held_seeds or w.truth_seed in held_seeds)
        if clash:
            raise ValueError(f"protocol: tuning worlds {clash} reuse a held-out world's seed or "
                             "truth seed")

    def world(self, name: str) -> WorldSpec:
        for w in (*self.tuning, *self.heldout):
            if w.name == name:
                return w
        raise UserError(f"unknown protocol world {name!r}; known: "
                        f"{[w.name for w in (*self.tuning, *self.heldout)]}")

    def role(self, name: str) -> str:
        return TUNING if any(w.name == name for w in self.tuning) else (
            HELDOUT if any(w.name == name for w in self.heldout) else "")

    def heldout_seeds(self) -> set[int]:
        """Every world seed and truth seed of a held-out world."""
        return {w.seed for w in self.heldout} | {w.truth_seed for w in self.heldout}


def require_tuning(cfg: Any, what: str, seeds: Sequence[int] = ()) -> None:
    """Stop ``what`` (a sweep, a search for a default) when the config's (an ``MtfConfig``,
    which nests this section, so not imported here) world seed, its truth
    seed or any of ``seeds`` belongs to a held-out world: settings are chosen on tuning worlds
    only. Raises :class:`mtf.errors.UserError` naming the world and the fix."""
    held = {s: w for w in cfg.protocol.heldout for s in (w.seed, w.truth_seed)}
    for label, value in (("seed", cfg.seed), ("pipeline.truth_seed", cfg.pipeline.truth_seed),
                         *(("seed", s) for s in seeds)):
        if value in held:
            tuning = ", ".join(f"{w.name} (seed={w.seed} pipeline.truth_seed={w.truth_seed})"
                               for w in cfg.protocol.tuning) or "none configured"
            raise UserError(f"{what} may not use held-out world {held[value].name}: {label}="
                            f"{value} is one of its seeds (protocol.heldout); choose settings "
                            f"on a tuning world: {tuning}")


def world_names(protocol: ProtocolConfig, role: str) -> list[str]:
    return [w.name for w in (protocol.tuning if role == TUNING else protocol.heldout)]
