"""Pruning front-ends: choose which weights of nn.Linear layers go, as bool masks."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

from . import criteria, masks

__all__ = ["prune", "apply_masks", "linear_layers", "masks", "criteria"]

FilterFn = Callable[[nn.Module, str], bool]


def linear_layers(model: nn.Module, filter_fn: Optional[FilterFn] = None) -> Dict[str, nn.Linear]:
    """The model's nn.Linear layers by fully qualified name, those that `filter_fn` accepts."""
    return {
        fqn: m
        for fqn, m in model.named_modules()
        if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, fqn))
    }


@torch.no_grad()
def apply_masks(model: nn.Module, masks_by_fqn: Dict[str, torch.Tensor]) -> None:
    """Zeroes the pruned weights in place (weight *= mask)."""
    modules = dict(model.named_modules())
    for fqn, mask in masks_by_fqn.items():
        if fqn not in modules:
            raise KeyError(f"apply_masks: the model has no module {fqn!r}")
        w = modules[fqn].weight
        if mask.shape != w.shape:
            raise ValueError(f"apply_masks: mask for {fqn!r} has shape {tuple(mask.shape)}, weight {tuple(w.shape)}")
        w.mul_(mask.to(device=w.device, dtype=w.dtype))


def prune(
    model: nn.Module,
    sparsity: float,
    pattern: str = "unstructured",
    criterion: str = "magnitude",
    filter_fn: Optional[FilterFn] = None,
    apply: bool = True,
) -> Dict[str, torch.Tensor]:
    """One-shot pruning of every nn.Linear (that `filter_fn(module, fqn)` accepts), per layer.

    Returns ``{fqn: bool mask}`` (True = kept) and, with ``apply=True``, zeroes the pruned weights.
    """
    masks.check_sparsity(sparsity)
    if pattern != "unstructured":
        raise ValueError(f"prune: unknown pattern {pattern!r}; expected 'unstructured'")
    if criterion not in criteria.CRITERIA:
        raise ValueError(f"prune: unknown criterion {criterion!r}; expected one of {sorted(criteria.CRITERIA)}")
    score_fn = criteria.CRITERIA[criterion]
    out = {fqn: masks.unstructured(score_fn(m.weight), sparsity) for fqn, m in linear_layers(model, filter_fn).items()}
    if apply:
        apply_masks(model, out)
    return out
