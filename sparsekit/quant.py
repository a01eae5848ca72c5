"""int8 quantization: weights symmetric per output channel, activations dynamic per token,
and per-layer error reports against float.

The kernels: `sparsekit.ops.int8_mm` (W8A8, int32 accumulation, fused scales / bias / output
dtype), `int8_weight_only_mm` (W8A16), `sparse24_int8_mm` (2:4 + int8), and `int8_linear` /
`sparse24_int8_linear` (per-token quantization and the W8A8 product in one op, what the formats call).
Convert a model with ``sparsekit.convert(model, SparseConfig("int8"))`` (or "int8-wo", "2:4+int8").
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
from torch import nn

from . import formats, ops

__all__ = ["quantize_weight", "quantize_activation", "dequantize_weight", "error_report"]


def quantize_weight(weight: torch.Tensor):
    """(q int8 (N, K), scale float32 (N,)): symmetric per output channel, W ~= q * scale[:, None]."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_weight: expected a 2-d float weight, got {weight.dtype} {tuple(weight.shape)}")
    return formats.quantize_rows(weight)


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def quantize_activation(x: torch.Tensor, symmetric: bool = True):
    """(q int8, scale float32, zero_point int32) per token (row): x ~= (q - zero_point) * scale."""
    return ops.quantize_per_token(x, symmetric)


@torch.no_grad()
def error_report(model: nn.Module, batches: Iterable, format: str = "int8",
                 filter_fn: Optional[Callable[[nn.Module, str], bool]] = None, **format_options) -> Dict[str, float]:
    """Relative output error ‖Y − Ŷ‖ / ‖Y‖ of every nn.Linear when its weight is held in `format`
    (default int8 W8A8), on the inputs the layer sees while `batches` run through the float model.

    Each batch is passed as ``model(batch)`` (or ``model(*batch)`` for a tuple/list).
    """
    fmt = formats.get(format)
    layers = {fqn: m for fqn, m in model.named_modules()
              if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, fqn))}
    packed = {fqn: fmt.from_dense(m.weight.detach(), None if format in ("int8", "int8-wo") else m.weight != 0,
                                  **format_options) for fqn, m in layers.items()}
    num = {fqn: 0.0 for fqn in layers}
    den = {fqn: 0.0 for fqn in layers}
    handles = []
    for fqn, m in layers.items():
        def hook(mod, args, out, fqn=fqn):
            y_hat = packed[fqn].matmul(args[0].to(out.dtype), None if mod.bias is None else mod.bias.to(out.dtype))
            num[fqn] += (out.float() - y_hat.float()).square().sum().item()
            den[fqn] += out.float().square().sum().item()
        handles.append(m.register_forward_hook(hook))
    try:
        for b in batches:
            model(*b) if isinstance(b, (tuple, list)) else model(b)
    finally:
        for h in handles:
            h.remove()
    return {fqn: (num[fqn] / den[fqn]) ** 0.5 if den[fqn] > 0 else 0.0 for fqn in layers}
