"""Target policies for OPE and the density that importance sampling gives them.

Every target policy is carried as a **TorchScript module** ``raw state (B, S) float32 -> action
(B, k) in [-1, 1]`` (the export contract of :mod:`mtf.rl.export`), so the driver, the Spark
workers and the simulator's ground truth all run the same bytes:

* exported policies: the ``policy.pt`` of an export directory, checked against its
  ``policy.json`` sidecar (feature names, action tasks);
* fixed policies (the logging baseline, constant weight vectors): a scripted
  :class:`ConstantPolicy`;
* any other ``nn.Module`` (e.g. a hand-written state-dependent rule): scripted by
  :func:`module_policy`.

Target density (IS, WPDIS, DR). The exported policies are deterministic, so ``pi_e(a | s)`` is a
Dirac and has no density against the logged (continuous) actions. We evaluate instead the
smoothed policy

    pi_e(a | s) = prod_i TN(a_i; mu_i = pi(s)_i, sigma_e, [-1, 1]),
    log TN(a; mu, sigma) = log phi((a - mu) / sigma) - log sigma
                           - log(Phi((1 - mu) / sigma) - Phi((-1 - mu) / sigma)),

a Gaussian of scale ``ope.target_sigma`` around the deterministic action, truncated to the
action box exactly as the logging policy's noise group (mtf.sim.logging_policy). Small sigma_e:
closer to the deterministic policy (less bias) but fewer logged actions near pi(s), so larger
weights (more variance); large sigma_e: the opposite. See docs/ope.md.

With the ray parametrisation (``fusion.action_space = "ray"``) the policies are made canonical
(:func:`ray_policies`) and the smoothed policy is the noise group's on the faces: pi(s)'s face
pinned, the other tasks as above (:func:`face_target_logpdf`).
"""
from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mtf.configtools import ConfigError
from mtf.errors import MissingInputError
from mtf.ope.config import LOGGING_POLICY
from mtf.rays import canonical_actions, face_log_density, tied_faces
from mtf.serving.export import ConstantPolicy, torch_policy

if TYPE_CHECKING:
    from mtf.fusion import FusionConfig
    from mtf.serving.exploration import ServingConfig
    from mtf.ope.config import OpeConfig

logger = logging.getLogger(__name__)

POLICY_FILE = "policy.pt"      # as mtf.rl.export
SIDECAR_FILE = "policy.json"
KINDS = ("exported", "fixed", "module")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True, eq=False)
class TargetPolicy:
    """A named deterministic policy to evaluate, as TorchScript bytes."""

    name: str
    kind: str                       # exported | fixed | module
    source: str                     # export directory, or a description
    payload: bytes = field(repr=False)  # torch.jit.save bytes of the policy module
    meta: Mapping[str, Any] = field(default_factory=dict)  # sidecar / action, for the report

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"policy {self.name!r}: kind must be one of {list(KINDS)}, "
                             f"got {self.kind!r}")
        if not self.name:
            raise ValueError("a target policy needs a non-empty name")

    def module(self) -> "torch.jit.ScriptModule":
        """A fresh copy of the policy module, on CPU, in eval mode."""
        return load_module(self.payload)

    def numpy_policy(self) -> Callable[[np.ndarray], np.ndarray]:
        """``states (B, S) -> actions (B, k)`` as numpy (what a simulator serves)."""
        return torch_policy(self.module())

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for the report (no tensors, no bytes)."""
        keep = ("algorithm", "step", "table_path", "table_version", "feature_version",
                "exported_utc", "git_sha", "action", "description")
        return {"name": self.name, "kind": self.kind, "source": self.source,
                **{k: self.meta[k] for k in keep if k in self.meta}}


def load_module(payload: bytes) -> "torch.jit.ScriptModule":
    """TorchScript bytes -> module on CPU in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # see script_bytes
        module = torch.jit.load(io.BytesIO(payload), map_location="cpu")
    module.eval()
    return module


def script_bytes(module: nn.Module) -> bytes:
    """Script (unless already scripted) and serialise ``module``."""
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    else:
        with warnings.catch_warnings():
            # torch >= 2.10 deprecates TorchScript, but it is the export contract (mtf.rl.export).
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.script(module)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(scripted, buf)
    return buf.getvalue()


class ThresholdModule(nn.Module):
    """``high`` where ``state[:, index] >= threshold``, else ``low``: a personalised rule."""

    def __init__(self, index: int, threshold: float, low: torch.Tensor,
                 high: torch.Tensor) -> None:
        super().__init__()
        self.index = index
        self.threshold = threshold
        self.register_buffer("low", low.float())    # (k,)
        self.register_buffer("high", high.float())  # (k,)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        mask = (state[:, self.index] >= self.threshold).unsqueeze(1)   # (B, 1)
        return torch.where(mask, self.high.unsqueeze(0), self.low.unsqueeze(0))


def fixed_policy(name: str, action: Sequence[float], description: str = "") -> TargetPolicy:
    """A constant-action policy (normalised action in [-1, 1]^k)."""
    a = np.asarray(action, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(np.abs(a) > 1.0):
        raise ValueError(f"fixed policy {name!r}: action must be a non-empty vector in "
                         f"[-1, 1]^k, got {list(np.ravel(a))!r}")
    module = ConstantPolicy(torch.tensor(a, dtype=torch.float32))
    return TargetPolicy(name=name, kind="fixed", source=f"fixed action {a.round(4).tolist()}",
                        payload=script_bytes(module),
                        meta={"action": a.tolist(), "description": description})


def module_policy(name: str, module: nn.Module, description: str = "") -> TargetPolicy:
    """Any ``nn.Module`` raw state -> action in [-1, 1] (scripted here)."""
    return TargetPolicy(name=name, kind="module", source=description or type(module).__name__,
                        payload=script_bytes(module), meta={"description": description})


def load_exported(path: str, name: str | None = None) -> TargetPolicy:
    """An exported policy: ``path`` is its export directory (or its ``policy.pt``).

    Raises:
        FileNotFoundError: ``policy.pt`` or ``policy.json`` missing.
        ValueError: the sidecar is not valid JSON.
    """
    directory = os.path.dirname(path) if path.endswith(".pt") else path
    pt, js = os.path.join(directory, POLICY_FILE), os.path.join(directory, SIDECAR_FILE)
    for f in (pt, js):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"exported policy {directory!r} lacks {os.path.basename(f)}; "
                                    f"export it with `mtf export` (mtf.rl.export)")
    try:
        with open(js, encoding="utf-8") as fh:
            meta = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"exported policy {directory!r}: {SIDECAR_FILE} is not valid JSON: "
                         f"{exc}") from exc
    with open(pt, "rb") as fh:
        payload = fh.read()
    return TargetPolicy(name=name or _default_name(directory, meta), kind="exported",
                        source=os.path.abspath(directory), payload=payload, meta=meta)


def _default_name(directory: str, meta: Mapping[str, Any]) -> str:
    run = os.path.basename(os.path.dirname(os.path.abspath(directory))) \
        if os.path.basename(directory.rstrip("/")) == "export" else os.path.basename(directory)
    algo = str(meta.get("algorithm", "policy"))
    return f"{algo}:{run}" if run else algo


def check_policy(policy: TargetPolicy, feature_names: Sequence[str],
                 action_tasks: Sequence[str]) -> None:
    """Refuse a policy whose input/output layout differs from the table's, naming the field.

    Exported policies are compared by their sidecar; every policy is run on two zero states to
    check the output shape and range.
    """
    where = f"policy {policy.name!r} ({policy.source})"
    if policy.kind == "exported":
        want_f, want_t = list(feature_names), list(action_tasks)
        got_f, got_t = list(policy.meta.get("feature_names", [])), \
            list(policy.meta.get("action_tasks", []))
        if got_f != want_f:
            raise ValueError(f"{where} was trained on features {got_f[:4]}... ({len(got_f)}) but "
                             f"the transitions table has {want_f[:4]}... ({len(want_f)}); "
                             f"evaluate it on a table with the same feature layout")
        if got_t != want_t:
            raise ValueError(f"{where} acts on tasks {got_t} but the transitions table's "
                             f"actions are {want_t}")
    with torch.no_grad():
        out = policy.module()(torch.zeros(2, len(feature_names)))
    if tuple(out.shape) != (2, len(action_tasks)):
        raise ValueError(f"{where} maps states (2, {len(feature_names)}) to actions of shape "
                         f"{tuple(out.shape)}, expected (2, {len(action_tasks)})")
    if not bool(torch.isfinite(out).all()) or float(out.abs().max()) > 1.0 + 1e-6:
        raise ValueError(f"{where} returned actions outside [-1, 1] or non-finite on zero states")


def discover_exports(models_dir: str, latest_per_algorithm: bool = True) -> list[str]:
    """Export directories under ``models_dir`` (``<run>/export/policy.pt`` or ``<run>/policy.pt``).

    With ``latest_per_algorithm`` only the newest export (sidecar ``exported_utc``, then file
    time) of each algorithm is kept.
    """
    patterns = (os.path.join("*", "export", POLICY_FILE), os.path.join("*", POLICY_FILE))
    found = sorted({os.path.dirname(p) for pattern in patterns
                    for p in glob.glob(os.path.join(models_dir, pattern))})
    found = [d for d in found if os.path.isfile(os.path.join(d, SIDECAR_FILE))]
    if not latest_per_algorithm:
        return found
    newest: dict[str, tuple[str, float, str]] = {}
    for d in found:
        try:
            with open(os.path.join(d, SIDECAR_FILE), encoding="utf-8") as fh:
                meta = json.load(fh)
        except (OSError, json.JSONDecodeError):
            logger.warning("skipping export %s: unreadable %s", d, SIDECAR_FILE)
            continue
        key = (str(meta.get("exported_utc", "")), os.path.getmtime(os.path.join(d, POLICY_FILE)), d)
        algo = str(meta.get("algorithm", "policy"))
        if algo not in newest or key > newest[algo]:
            newest[algo] = key
    return sorted(v[2] for v in newest.values())


def baseline_action(fusion: "FusionConfig", serving: "ServingConfig") -> np.ndarray:
    """The logging baseline's normalised action: ``serving.baseline_action``, else zeros (every
    weight mid-interval)."""
    k = fusion.k
    action = serving.baseline_action
    if action and len(action) != k:
        raise ConfigError(f"serving.baseline_action has {len(action)} values but fusion.tasks has "
                          f"{k} ({list(fusion.names)}); set serving.baseline_action")
    return np.asarray(action, dtype=np.float64) if action else np.zeros(k)


def resolve_policies(ope: "OpeConfig", models: str, baseline: np.ndarray,
                     feature_names: Sequence[str], action_tasks: Sequence[str]
                     ) -> list[TargetPolicy]:
    """The policies of one evaluation run: logging baseline (``baseline``, a normalised
    action), fixed ones, then exports.

    Exports come from ``ope.policies`` (directories, or run ids under the ``models`` dir),
    or, when that is empty, from :func:`discover_exports`. Every policy is checked with
    :func:`check_policy`. Names must be unique.
    """
    out: list[TargetPolicy] = []
    if ope.include_logging:
        out.append(fixed_policy(LOGGING_POLICY, baseline,
                                "logging baseline (exploit group's action)"))
    for name, action in sorted(ope.fixed_policies.items()):
        out.append(fixed_policy(name, action, "fixed action from ope.fixed_policies"))
    if ope.policies:
        dirs = [_resolve_export(p, models) for p in ope.policies]
    else:
        dirs = discover_exports(models, ope.latest_per_algorithm) if os.path.isdir(models) else []
        logger.info("found %d exported policies under %s", len(dirs), models)
    exported = [load_exported(d) for d in dirs]
    algos = [str(p.meta.get("algorithm", "")) for p in exported]
    for p, algo in zip(exported, algos):
        # Short names ("bcq", "td3") when each algorithm appears once.
        name = algo if algo and algos.count(algo) == 1 else p.name
        out.append(TargetPolicy(name=name, kind=p.kind, source=p.source, payload=p.payload,
                                meta=p.meta))
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"evaluated policy names must be unique, found {dup} twice; rename "
                         f"ope.fixed_policies entries or list fewer exports in ope.policies")
    if not out:
        raise ValueError("no policy to evaluate: ope.include_logging is false, ope.fixed_policies "
                         f"is empty and no exported policy was found under {models!r}")
    for p in out:
        check_policy(p, feature_names, action_tasks)
    return out


def _resolve_export(entry: str, models_dir: str) -> str:
    for candidate in (entry, os.path.join(models_dir, entry),
                      os.path.join(models_dir, entry, "export")):
        if os.path.isfile(os.path.join(candidate, POLICY_FILE)):
            return candidate
    raise MissingInputError(f"ope.policies entry {entry!r}: no {POLICY_FILE} in it, nor in "
                            f"{models_dir}/{entry}[/export]; list exported policy directories "
                            f"or run ids there")


# ---- the target density -----------------------------------------------------------------------

def truncated_normal_logpdf(action: "torch.Tensor", mu: "torch.Tensor",
                            sigma: float) -> "torch.Tensor":
    """Sum over tasks of :func:`truncated_normal_logpdf_per_task`, ``(B,)``."""
    return truncated_normal_logpdf_per_task(action, mu, sigma).sum(dim=1)


def face_target_logpdf(action: "torch.Tensor", mu: "torch.Tensor",
                       sigma: float) -> "torch.Tensor":
    """The smoothed target density on the faces (ray parametrisation), ``(B,)`` float64:
    canonical ``mu`` = pi(s); ``-inf`` for an action off pi(s)'s faces."""
    per_task = truncated_normal_logpdf_per_task(action, mu, sigma)
    return face_log_density(per_task, action.double(), tied_faces(mu.double()))


class CanonicalPolicy(nn.Module):
    """A policy whose actions are made canonical (the ray parametrisation, mtf.rays)."""

    def __init__(self, policy: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> None:
        super().__init__()
        self.policy = policy
        self.register_buffer("lo", lo.double())
        self.register_buffer("hi", hi.double())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return canonical_actions(self.policy(state).double(), self.lo, self.hi).float()


def ray_policies(policies: Sequence[TargetPolicy], lo: np.ndarray,
                 hi: np.ndarray) -> list[TargetPolicy]:
    """Every policy with canonical actions (fixed weights and box-trained exports included:
    each ranks as its canonical action does); ones already made canonical stay as they are."""
    out = []
    for p in policies:
        if p.meta.get("canonical"):
            out.append(p)
            continue
        module = CanonicalPolicy(p.module(), torch.as_tensor(lo), torch.as_tensor(hi))
        out.append(replace(p, payload=script_bytes(module), meta={**p.meta, "canonical": True}))
    return out


def truncated_normal_logpdf_per_task(action: "torch.Tensor", mu: "torch.Tensor",
                                     sigma: float) -> "torch.Tensor":
    """``log TN(a_i; mu_i, sigma, [-1, 1])`` per task, float64, shape ``(B, k)``; their sum is
    ``log pi_e(a | s)`` on the box.

    ``log TN(a; mu, sigma) = -z^2/2 - log sqrt(2 pi) - log sigma - log(Phi((1 - mu)/sigma)
    - Phi((-1 - mu)/sigma))`` with ``z = (a - mu)/sigma``; actions are clamped to the box
    (float32 storage can overshoot it by an ulp). The normaliser is at least ~1/2 for
    ``mu`` in [-1, 1], so no log of a vanishing mass occurs.

    Args:
        action: ``(B, k)`` logged actions; mu: ``(B, k)`` target actions pi(s); sigma > 0.
    """
    a = action.double().clamp(-1.0, 1.0)
    m = mu.double().clamp(-1.0, 1.0)
    z = (a - m) / sigma
    mass = torch.special.ndtr((1.0 - m) / sigma) - torch.special.ndtr((-1.0 - m) / sigma)
    return -0.5 * z * z - _LOG_SQRT_2PI - math.log(sigma) - torch.log(mass)
