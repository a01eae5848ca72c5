"""L1-regularised sparse training: a penalty to add to the loss, then a threshold that turns the
small weights it produced into masks.

    for x, y in data:
        loss = F.cross_entropy(model(x), y) + 1e-4 * l1_penalty(model)
        ...
    masks = threshold_masks(model, threshold=1e-3)       # or sparsity=0.8: the smallest 80% go
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["l1_penalty", "threshold_masks"]


def l1_penalty(model: nn.Module, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
               reduction: str = "sum") -> torch.Tensor:
    """``sum |W|`` over the weights of the nn.Linear layers that `filter_fn` accepts (``reduction="mean"``:
    divided by their number), a differentiable scalar (float32) to scale and add to the loss."""
    from . import linear_layers

    if reduction not in ("sum", "mean"):
        raise ValueError(f"l1_penalty: expected reduction 'sum' or 'mean', got {reduction!r}")
    layers = linear_layers(model, filter_fn)
    if not layers:
        raise ValueError("l1_penalty: the model has no nn.Linear layer that filter_fn accepts")
    total = None
    n = 0
    for m in layers.values():
        t = m.weight.abs().sum(dtype=torch.float32)
        total = t if total is None else total + t.to(total.device)
        n += m.weight.numel()
    return total / max(n, 1) if reduction == "mean" else total


@torch.no_grad()
def threshold_masks(model: nn.Module, threshold: Optional[float] = None, *, sparsity: Optional[float] = None,
                    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, scope: str = "layer",
                    apply: bool = True) -> Dict[str, torch.Tensor]:
    """Masks that drop small weights after L1 training: give exactly one of

    * ``threshold``: keep ``|w| > threshold`` (a weight equal to it goes);
    * ``sparsity``: magnitude pruning at that sparsity (``scope`` ``"layer"`` or ``"global"``, as in
      :func:`sparsekit.prune`).

    With ``apply=True`` the pruned weights are zeroed. Returns ``{fqn: bool mask}``.
    """
    from . import apply_masks, linear_layers, prune

    if (threshold is None) == (sparsity is None):
        raise ValueError("threshold_masks: expected exactly one of threshold= and sparsity=")
    if sparsity is not None:
        return prune(model, sparsity, criterion="magnitude", filter_fn=filter_fn, apply=apply, scope=scope)
    t = float(threshold)
    if not t >= 0:
        raise ValueError(f"threshold_masks: expected threshold >= 0, got {threshold}")
    out = {fqn: m.weight.detach().abs() > t for fqn, m in linear_layers(model, filter_fn).items()}
    if apply:
        apply_masks(model, out)
    return out
