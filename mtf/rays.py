"""The ray action parametrisation in torch (``fusion.action_space = "ray"``, docs/method.md 2a).

Torch twins of :func:`mtf.fusion.canonical_action` and of the face densities of
:mod:`mtf.serving.exploration`, for what runs as tensors: the trainer (canonical logged
actions), the exported policy and exploration modules (TorchScript) and the OPE's target
density. Every function here is TorchScript-compatible.
"""
from __future__ import annotations

import torch

from mtf.fusion import FACE_TOL


def canonical_actions(action: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``(B, k)`` normalised actions -> the canonical action of each one's ray.

    ``alpha' = alpha / max_i(alpha_i / hi_i)`` in weights (all-zero weights -> ``hi``), back in
    [-1, 1]; differentiable almost everywhere, so actors may be trained through it.
    """
    lo = lo.to(action.dtype)
    hi = hi.to(action.dtype)
    alpha = lo + (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (hi - lo)
    ratio = (alpha / hi).amax(dim=-1, keepdim=True)
    safe = torch.where(ratio > 0.0, ratio, torch.ones_like(ratio))
    scaled = torch.where(ratio > 0.0, alpha / safe, hi.expand_as(alpha))
    return (2.0 * (scaled - lo) / (hi - lo) - 1.0).clamp(-1.0, 1.0)


def tied_faces(mu: torch.Tensor, tol: float = FACE_TOL) -> torch.Tensor:
    """``(B, k)`` bool: the upper faces a canonical ``mu`` lies on."""
    return mu >= mu.amax(dim=1, keepdim=True) - tol


def draw_faces(allowed: torch.Tensor) -> torch.Tensor:
    """``(B,)`` one face per row, uniform over its ``allowed`` faces (torch's global RNG)."""
    return torch.multinomial(allowed.double(), 1).squeeze(1)


def pin_faces(action: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """``action`` with ``a[b, face[b]] = 1``."""
    return action.scatter(1, face.unsqueeze(1), torch.ones_like(action[:, :1]))


def face_log_density(per_task: torch.Tensor, action: torch.Tensor,
                     allowed: torch.Tensor, tol: float = FACE_TOL) -> torch.Tensor:
    """``(B,)``: ``-log(#allowed) + sum_{i != face} per_task_i``, where the face is the action's
    largest coordinate; ``-inf`` where the action is off the faces or its face not allowed."""
    face = action.argmax(dim=1)
    top = action.gather(1, face.unsqueeze(1)).squeeze(1)
    ok = (top >= 1.0 - tol) & allowed.gather(1, face.unsqueeze(1)).squeeze(1)
    cols = torch.arange(action.shape[1], device=action.device).unsqueeze(0)
    masked = torch.where(cols == face.unsqueeze(1), torch.zeros_like(per_task), per_task)
    logp = masked.sum(dim=1) - torch.log(allowed.sum(dim=1).to(per_task.dtype))
    return torch.where(ok, logp, torch.full_like(logp, float("-inf")))
