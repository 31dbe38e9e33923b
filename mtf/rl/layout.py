"""The input/output layout a model is trained on, recorded in checkpoints and exports.

:class:`TableLayout` is the state feature layout and action task order of one pinned version of
the transitions table (Delta table properties ``mtf.feature_names``, ``mtf.feature_version``,
``mtf.action_tasks``; docs/contract.md section 2). :class:`ActionSpace` maps normalised actions
to fusion weights (``mtf.fusion``). A resumed run or an export refuses a layout that disagrees,
naming the field.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from mtf.fusion import FusionConfig

from mtf.contract import PROP_ACTION_TASKS as ACTION_TASKS_KEY
from mtf.contract import PROP_FEATURE_NAMES as FEATURE_NAMES_KEY
from mtf.contract import PROP_FEATURE_VERSION as FEATURE_VERSION_KEY


@dataclass(frozen=True)
class TableLayout:
    table_path: str
    table_version: int
    feature_names: tuple[str, ...]  # order of the `state` / `next_state` arrays
    feature_version: str
    action_tasks: tuple[str, ...]   # order of the `action` array

    @property
    def state_dim(self) -> int:
        return len(self.feature_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_tasks)

    @staticmethod
    def from_properties(path: str, version: int, props: Mapping[str, str]) -> "TableLayout":
        """Read the layout from Delta table properties; missing or malformed keys are errors."""
        missing = [k for k in (FEATURE_NAMES_KEY, FEATURE_VERSION_KEY, ACTION_TASKS_KEY)
                   if k not in props]
        if missing:
            raise ValueError(
                f"transitions table {path!r} (version {version}) lacks table properties "
                f"{missing}; the transitions job must record the feature layout there "
                f"(docs/contract.md section 2). Found properties: {sorted(props)}")
        return TableLayout(
            table_path=path, table_version=int(version),
            feature_names=_json_names(props[FEATURE_NAMES_KEY], FEATURE_NAMES_KEY, path),
            feature_version=str(props[FEATURE_VERSION_KEY]),
            action_tasks=_json_names(props[ACTION_TASKS_KEY], ACTION_TASKS_KEY, path))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_names"] = list(self.feature_names)
        d["action_tasks"] = list(self.action_tasks)
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "TableLayout":
        return TableLayout(str(d["table_path"]), int(d["table_version"]),
                           tuple(d["feature_names"]), str(d["feature_version"]),
                           tuple(d["action_tasks"]))

    def mismatches(self, other: "TableLayout") -> list[str]:
        """Differences that make a model trained on ``self`` unusable on ``other``'s data."""
        out = []
        if self.feature_version != other.feature_version:
            out.append(f"{FEATURE_VERSION_KEY}: {self.feature_version!r} != "
                       f"{other.feature_version!r}")
        if self.feature_names != other.feature_names:
            out.append(f"{FEATURE_NAMES_KEY}: {_diff(self.feature_names, other.feature_names)}")
        if self.action_tasks != other.action_tasks:
            out.append(f"{ACTION_TASKS_KEY}: {list(self.action_tasks)} != "
                       f"{list(other.action_tasks)}")
        return out

    def require_same(self, other: "TableLayout", *, what: str) -> None:
        """Raise ValueError naming every mismatch between ``self`` (``what``) and ``other``."""
        bad = self.mismatches(other)
        if bad:
            raise ValueError(
                f"{what} was trained on a different layout than table {other.table_path!r} "
                f"(version {other.table_version}): " + "; ".join(bad))

    def require_request(self, tasks: Sequence[str], feature_version: str) -> None:
        """Check the table against the configured task order (and feature version, if set)."""
        if tuple(tasks) != self.action_tasks:
            raise ValueError(
                f"transitions table {self.table_path!r} (version {self.table_version}) has "
                f"{ACTION_TASKS_KEY}={list(self.action_tasks)} but the config's fusion.tasks are "
                f"{list(tasks)}; they must be the same tasks in the same order")
        if feature_version and feature_version != self.feature_version:
            raise ValueError(
                f"train.feature_version={feature_version!r} but transitions table "
                f"{self.table_path!r} (version {self.table_version}) has "
                f"{FEATURE_VERSION_KEY}={self.feature_version!r}")


@dataclass(frozen=True)
class ActionSpace:
    """Task order and per-task fusion weight interval [lo, hi] of the normalised action, and
    its parametrisation (``fusion.action_space``: ``box``, or ``ray`` where the policy's actions
    are canonical, mtf.fusion.canonical_action)."""

    tasks: tuple[str, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    mode: str = "box"

    @property
    def rays(self) -> bool:
        return self.mode == "ray"

    def __post_init__(self) -> None:
        if self.mode not in ("box", "ray"):
            raise ValueError(f"ActionSpace mode must be 'box' or 'ray', got {self.mode!r}")
        if not len(self.tasks) == len(self.lo) == len(self.hi):
            raise ValueError(f"ActionSpace needs one lo and hi per task, got {len(self.tasks)} "
                             f"tasks, {len(self.lo)} lo, {len(self.hi)} hi")

    @staticmethod
    def from_fusion(fusion: FusionConfig) -> "ActionSpace":
        return ActionSpace(fusion.names, tuple(float(x) for x in fusion.lo),
                           tuple(float(x) for x in fusion.hi), fusion.action_space)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "lo": list(self.lo), "hi": list(self.hi),
                "mode": self.mode}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "ActionSpace":
        # checkpoints from before the ray parametrisation have no mode: they are box
        return ActionSpace(tuple(d["tasks"]), tuple(float(x) for x in d["lo"]),
                           tuple(float(x) for x in d["hi"]), str(d.get("mode", "box")))


def _json_names(raw: str, key: str, path: str) -> tuple[str, ...]:
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"table property {key} of {path!r} must be a non-empty JSON list of "
                         f"strings, got {raw!r}")
    return tuple(names)


def _diff(a: Sequence[str], b: Sequence[str]) -> str:
    if len(a) != len(b):
        return f"{len(a)} features != {len(b)} features ({list(a)[:5]}... vs {list(b)[:5]}...)"
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"feature {i} is {a[i]!r} vs {b[i]!r}"
