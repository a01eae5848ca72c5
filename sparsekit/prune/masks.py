"""Mask structures: turn a score (higher = more important) into a bool keep-mask.

Contract of every generator: the mask has the score's shape, prunes exactly
round(sparsity * numel) elements (the lowest scores), and breaks ties deterministically
(at equal score, the element with the lower flat index is pruned first).
"""
from __future__ import annotations

import torch


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    s = float(sparsity)
    if not (0.0 <= s <= 1.0):  # also refuses NaN
        raise ValueError(f"expected {what} in [0, 1], got {sparsity}")
    return s


def check_score(score: torch.Tensor, what: str = "score") -> None:
    if not score.is_floating_point():
        raise TypeError(f"expected a floating-point {what}, got {score.dtype}")
    if torch.isnan(score).any():
        raise ValueError(f"{what} contains NaN; a mask cannot be chosen from it")


def unstructured(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keeps the largest (1 - sparsity) fraction of `score`, element by element."""
    sparsity = check_sparsity(sparsity)
    check_score(score)
    flat = score.reshape(-1)
    n_prune = round(sparsity * flat.numel())
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=score.device)
    if n_prune:
        order = torch.argsort(flat, stable=True)  # ascending; ties keep index order
        mask[order[:n_prune]] = False
    return mask.view(score.shape)
