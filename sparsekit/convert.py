"""Swap pruned nn.Linear layers for sparsekit.nn.SparseLinear, in place (the shape of torchao's quantize_)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from . import formats
from .nn import SparseLinear

__all__ = ["SparseConfig", "convert"]


@dataclass
class SparseConfig:
    """How to convert a layer.

    format: a name from ``sparsekit.formats.names()``.
    min_sparsity: layers whose kept fraction is higher than ``1 - min_sparsity`` stay dense.
    """

    format: str = "csr"
    min_sparsity: float = 0.0

    def __post_init__(self):
        formats.get(self.format)  # raises for an unknown name
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ValueError(f"SparseConfig: expected min_sparsity in [0, 1], got {self.min_sparsity}")


def _mask_of(module: nn.Linear) -> torch.Tensor:
    # torch.nn.utils.prune keeps weight_orig and weight_mask; module.weight is their product
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor):
        return mask.bool()
    return module.weight.detach() != 0


def convert(
    model: nn.Module,
    config: Optional[SparseConfig] = None,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    masks: Optional[Dict[str, torch.Tensor]] = None,
) -> nn.Module:
    """Replaces every nn.Linear that ``filter_fn(module, fqn)`` accepts with a SparseLinear.

    The kept positions are ``masks[fqn]`` where given, else the layer's ``weight_mask`` from
    ``torch.nn.utils.prune``, else its non-zero weights. Returns the model (changed in place).
    """
    config = config or SparseConfig()
    if isinstance(model, nn.Linear):
        raise TypeError("convert: pass the model that holds the nn.Linear, not the layer itself")
    targets = []
    for fqn, module in model.named_modules():
        if not isinstance(module, nn.Linear) or (filter_fn is not None and not filter_fn(module, fqn)):
            continue
        mask = masks[fqn] if masks is not None and fqn in masks else _mask_of(module)
        sparsity = 1.0 - mask.sum().item() / max(mask.numel(), 1)
        if sparsity < config.min_sparsity:
            continue
        targets.append((fqn, module, mask))
    for fqn, module, mask in targets:
        new = SparseLinear.from_linear(module, mask=mask, format=config.format)
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
