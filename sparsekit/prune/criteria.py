"""Importance scores of a weight: higher means keep. Every score is float32 and weight-shaped.

=============  ===========================================  =====================================
name           score of ``W[i, j]``                          needs
=============  ===========================================  =====================================
magnitude      ``|W_ij|``                                    the weight
gradient       ``mean_b |g_ij|`` (``g = dL_b/dW``)           ``calibrate`` with a backward pass
taylor         ``mean_b |W_ij * g_ij|``                      ``calibrate`` with a backward pass
activation     ``|W_ij| * ||X_j||_2`` (Wanda; ``wanda``)      ``calibrate`` (forward only)
random         uniform in [0, 1), seeded by (seed, fqn)      nothing (a control)
=============  ===========================================  =====================================

For activation, ``||X_j||_2`` is taken as the root-mean-square over calibration tokens (the same
ranking as the norm, and comparable across layers whatever the number of tokens).
"""
from __future__ import annotations

import zlib
from typing import Optional

import torch
from torch import nn

from .calibrate import Calibration, _stats_for

__all__ = ["magnitude", "gradient", "taylor", "activation", "random", "score", "CRITERIA", "canonical"]


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|w|, in float32."""
    return weight.detach().abs().float()


def gradient(grad_abs_mean: torch.Tensor) -> torch.Tensor:
    """The mean absolute gradient over calibration batches, float32."""
    return grad_abs_mean.detach().float()


def taylor(weight: torch.Tensor, grad_abs_mean: torch.Tensor) -> torch.Tensor:
    """First-order Taylor importance ``|w * g|`` averaged over batches (= ``|w| * mean |g|``), float32."""
    return weight.detach().abs().float() * grad_abs_mean.to(weight.device).float()


def activation(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """Activation-aware (Wanda) ``|W_ij| * ||X_j||``; ``act_norm`` has shape ``(in_features,)``."""
    if act_norm.shape != weight.shape[-1:]:
        raise ValueError(f"expected activation norms of shape {tuple(weight.shape[-1:])}, got {tuple(act_norm.shape)}")
    return weight.detach().abs().float() * act_norm.to(weight.device).float()


def random(shape, seed: int = 0, fqn: str = "", device=None) -> torch.Tensor:
    """Uniform [0, 1) scores drawn from a generator seeded by ``(seed, fqn)``: the same on every device
    and every call, different from layer to layer."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 0x9E3779B1 + zlib.crc32(fqn.encode())) % (2**63))
    return torch.rand(tuple(shape), generator=g).to(device)


CRITERIA = ("magnitude", "gradient", "taylor", "activation", "random")
_ALIASES = {"wanda": "activation", "activation-aware": "activation", "grad": "gradient"}


def canonical(name: str) -> str:
    """The canonical criterion name (``wanda`` -> ``activation``); a ValueError for an unknown one."""
    c = _ALIASES.get(name, name) if isinstance(name, str) else name
    if c not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; expected one of {list(CRITERIA)} (or 'wanda')")
    return c


def score(criterion: str, module: nn.Module, fqn: str = "", calib: Optional[Calibration] = None,
          seed: int = 0) -> torch.Tensor:
    """The `criterion` score of ``module.weight`` (float32, weight-shaped, on the weight's device).

    Data-aware criteria read ``calib[fqn]`` (see :func:`sparsekit.calibrate`).
    """
    c = canonical(criterion)
    w = module.weight
    if c == "magnitude":
        return magnitude(w)
    if c == "random":
        return random(w.shape, seed, fqn, w.device)
    st = _stats_for(calib, fqn, c)
    if c == "activation":
        return activation(w, st.act_rms)
    g = st.grad_abs_mean
    if g.shape != w.shape:
        raise ValueError(f"gradient statistics of {fqn!r} have shape {tuple(g.shape)}, the weight {tuple(w.shape)}")
    return gradient(g).to(w.device) if c == "gradient" else taylor(w, g)
