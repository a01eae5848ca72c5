"""Gradient hooks that keep pruned weights pruned during training (shared by the gradual pruner and
recovery fine-tuning)."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from torch import nn


def check_plain_weight(module: nn.Module, fqn: str, who: str) -> None:
    """Training with masks needs ``module.weight`` to be a leaf parameter."""
    if hasattr(module, "weight_orig"):
        raise TypeError(f"{who}: layer {fqn!r} carries torch.nn.utils.prune's reparametrization (weight_orig / "
                        f"weight_mask); call sparsekit.prune.from_torch_prune(model, remove=True) first")
    if not isinstance(module.weight, nn.Parameter):
        raise TypeError(f"{who}: expected layer {fqn!r} to have an nn.Parameter weight, got {type(module.weight).__name__}")


class MaskGuard:
    """Registers a hook on each layer's weight that multiplies its gradient by the current mask
    (``masks[fqn]``, read at every backward so that the masks may change), after handing the raw
    gradient to ``on_grad(fqn, grad)`` when given. ``remove()`` takes the hooks off."""

    def __init__(self, layers: Dict[str, nn.Module], masks: Dict[str, torch.Tensor],
                 on_grad: Optional[Callable[[str, torch.Tensor], None]] = None):
        self.masks = masks
        self.handles = []
        for fqn, mod in layers.items():
            self.handles.append(mod.weight.register_hook(self._hook(fqn, on_grad)))

    def _hook(self, fqn, on_grad):
        def hook(g):
            if on_grad is not None:
                on_grad(fqn, g)
            m = self.masks.get(fqn)
            return g if m is None else g * m.to(device=g.device, dtype=g.dtype)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
