"""Swap pruned nn.Linear layers for sparsekit.nn.SparseLinear, in place (the shape of torchao's quantize_)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from . import formats
from .nn import SparseLinear

__all__ = ["SparseConfig", "convert"]


@dataclass
class SparseConfig:
    """How to convert a layer.

    format: a name from ``sparsekit.formats.names()`` ("csr", "bsr", "bitmap", "2:4", "int8",
        "int8-wo", "2:4+int8"), "dense" (leave the layer), or "auto": per layer, the fastest of
        the formats the mask's structure allows, measured on the layer's device at `batch_size`
        rows; dense when nothing is faster. `sparsekit.explain(model)` shows the choices.
    blocksize: (R, C) for "bsr".
    min_sparsity: layers whose sparsity is below it stay dense (int8 formats: ignored).
    overrides: {fqn: SparseConfig or dict of fields} for single layers; {"format": "dense"} keeps one dense.
    """

    format: str = "csr"
    blocksize: Tuple[int, int] = (16, 16)
    min_sparsity: float = 0.0
    overrides: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    dtype: Optional[torch.dtype] = None  # "auto": the activation dtype to time with (default: the weight's)

    def __post_init__(self):
        if self.format not in ("dense", "auto"):
            formats.get(self.format)  # raises for an unknown name
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ValueError(f"SparseConfig: expected min_sparsity in [0, 1], got {self.min_sparsity}")
        if isinstance(self.blocksize, int):
            self.blocksize = (self.blocksize, self.blocksize)

    def for_layer(self, fqn: str) -> "SparseConfig":
        o = self.overrides.get(fqn)
        if o is None:
            return self
        if isinstance(o, SparseConfig):
            return o
        fields = dict(format=self.format, blocksize=self.blocksize, min_sparsity=self.min_sparsity,
                      batch_size=self.batch_size, dtype=self.dtype)
        fields.update(o)
        return SparseConfig(**fields)

    def format_options(self) -> Dict[str, Any]:
        return {"blocksize": tuple(self.blocksize)} if self.format == "bsr" else {}


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
        cfg = config.for_layer(fqn)
        if cfg.format == "dense":
            continue
        mask = masks[fqn] if masks is not None and fqn in masks else _mask_of(module)
        sparsity = 1.0 - mask.sum().item() / max(mask.numel(), 1)
        if sparsity < cfg.min_sparsity and cfg.format not in ("int8", "int8-wo"):
            continue
        targets.append((fqn, module, mask, cfg))
    for fqn, module, mask, cfg in targets:
        if cfg.format == "auto":
            from .auto import choose

            choice = choose(module, mask, cfg)
            if choice["format"] == "dense":
                module._sparsekit_choice = choice
                continue
            new = SparseLinear.from_linear(module, mask=mask, format=choice["format"], **choice["options"])
            new._sparsekit_choice = choice
        else:
            new = SparseLinear.from_linear(module, mask=mask, format=cfg.format, **cfg.format_options())
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
