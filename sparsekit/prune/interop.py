"""Interop: ``torch.nn.utils.prune`` state (``weight_orig`` / ``weight_mask``) and mask files."""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = ["to_torch_prune", "from_torch_prune", "save_masks", "load_masks"]


def to_torch_prune(model: nn.Module, masks: Dict[str, torch.Tensor]) -> nn.Module:
    """Attaches ``masks`` (``{fqn: bool}``) with ``torch.nn.utils.prune.custom_from_mask``: each layer
    gets ``weight_orig`` and ``weight_mask`` (combined with an existing mask by AND, as torch does).
    Returns the model (changed in place)."""
    modules = dict(model.named_modules())
    for fqn, m in masks.items():
        if fqn not in modules:
            raise KeyError(f"to_torch_prune: the model has no module {fqn!r}")
        w = modules[fqn].weight
        if m.shape != w.shape:
            raise ValueError(f"to_torch_prune: mask for {fqn!r} has shape {tuple(m.shape)}, weight {tuple(w.shape)}")
        torch_prune.custom_from_mask(modules[fqn], "weight", m.to(device=w.device, dtype=torch.bool))
    return model


def from_torch_prune(model: nn.Module, remove: bool = False,
                     filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> Dict[str, torch.Tensor]:
    """``{fqn: bool mask}`` from every module carrying a ``weight_mask`` (that `filter_fn` accepts).

    With ``remove=True`` the reparametrization is made permanent (``torch.nn.utils.prune.remove``):
    ``weight`` becomes a plain parameter holding the masked weight, and ``weight_orig`` /
    ``weight_mask`` go.
    """
    out = {}
    for fqn, mod in list(model.named_modules()):
        mask = getattr(mod, "weight_mask", None)
        if not isinstance(mask, torch.Tensor) or (filter_fn is not None and not filter_fn(mod, fqn)):
            continue
        out[fqn] = mask.detach().bool().clone()
        if remove:
            torch_prune.remove(mod, "weight")
    return out


def save_masks(masks: Dict[str, torch.Tensor], path: Union[str, os.PathLike]) -> None:
    """Saves ``{fqn: bool mask}`` with ``torch.save`` (on the CPU)."""
    _check_masks(masks, "save_masks")
    torch.save({fqn: m.detach().to("cpu", torch.bool).contiguous() for fqn, m in masks.items()}, path)


def load_masks(path: Union[str, os.PathLike], map_location=None) -> Dict[str, torch.Tensor]:
    """Loads masks saved by :func:`save_masks` (``torch.load(weights_only=True)``: no code runs)."""
    masks = torch.load(path, map_location=map_location, weights_only=True)
    _check_masks(masks, "load_masks")
    return masks


def _check_masks(masks, who: str) -> None:
    if not isinstance(masks, dict):
        raise TypeError(f"{who}: expected a dict {{fqn: bool tensor}}, got {type(masks).__name__}")
    for fqn, m in masks.items():
        if not isinstance(fqn, str) or not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise TypeError(f"{who}: expected {{str: bool tensor}}, got {type(fqn).__name__} -> "
                            f"{getattr(m, 'dtype', type(m).__name__)}")
