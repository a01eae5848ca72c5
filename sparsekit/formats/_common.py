"""Checks and the forward shared by the formats."""
from __future__ import annotations

import functools
import weakref

import torch

from .. import triton as _sk_triton
from ..ops import _as_2d

def check_weight_and_mask(weight: torch.Tensor, mask: torch.Tensor | None, what: str) -> torch.Tensor:
    """Validates a 2-d float weight and its bool mask (default: weight != 0); returns the mask."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{what}: expected a 2-d weight (out_features, in_features), got {shape}")
    if not weight.is_floating_point():
        raise TypeError(f"{what}: expected a floating-point weight, got {weight.dtype}")
    if mask is None:
        return weight != 0
    if not isinstance(mask, torch.Tensor) or mask.shape != weight.shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{what}: expected a mask of the weight's shape {tuple(weight.shape)}, got {got}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{what}: expected a bool mask, got {mask.dtype}")
    return mask.to(weight.device)


def side_table_put(table: dict, lock, values: torch.Tensor, entry: tuple) -> None:
    """Stores `entry` (whose first item is weakref(values)) under id(values) in a side table of derived data (the
    2:4 weight's cuSPARSELt copy, the bitmap's column list): never a module buffer, so never saved, and dropped when
    `values` dies (a module moved or cast gets new tensors, prepared again by the move)."""
    key = id(values)
    with lock:
        old = table.get(key)
        if old is None or old[0]() is not values:
            weakref.finalize(values, table.pop, key, None)
        table[key] = entry


def check_int32_range(n: int, what: str) -> None:
    if n > 2**31 - 1:
        raise ValueError(f"{what} {n} exceeds the int32 index range")


def needs_grad(x: torch.Tensor, bias) -> bool:
    """Whether this call must record a backward (gradients to x or the bias): the public linear ops have one,
    the kernels the CUDA fast paths call directly (the _cuda_ aliases, cuSPARSELt) do not."""
    return torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))


def cuda_rows_forward(m, x, alias, op, use, *weight):
    """A module_forward on CUDA (x of any leading shape; the caller tests x.is_cuda, so that the CPU path makes
    no extra call): the compiled kernel through its _cuda_ alias where the router of sparsekit.triton would pick
    it (`use(x2, out_features)`: its test for these rows) - one op call, not the public op and then the router -
    eagerly (torch.compile traces the public op) and without a gradient to record (the aliases have no
    backward); else the public op. alias None: always the public op. Both take (x, *weight, bias)."""
    bias = m._parameters["bias"]
    x2 = x if x.dim() == 2 else input_rows(m, x)
    direct = (alias is not None and not torch.compiler.is_compiling() and not needs_grad(x2, bias)
              and use(x2, m.out_features))
    y = (alias if direct else op)(x2, *weight, bias)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], m.out_features)


def route(op: str, table: str = None):
    """`use` of cuda_rows_forward for an op routed by sparsekit.triton.use_compiled (by the rows, or by the
    measured route of the rows and the output features; `table`: the route table, default op's)."""
    return functools.partial(_sk_triton.use_compiled, op, table=table)


def input_rows(m, x):
    """A module_forward's x (..., in_features) of any other rank than 2 as 2-d rows. Its width is checked
    first: a reshape alone could regroup a wrong one. (A 2-d x goes straight to the op, which checks it.)"""
    if x.dim() == 0 or x.shape[-1] != m.in_features:
        raise ValueError(f"{type(m).__name__}: expected input of shape (..., {m.in_features}), got {tuple(x.shape)}")
    return x.reshape(-1, m.in_features)


def compressed_rows_forward(op, alias, m, x):
    """A SparseLinear forward through an op of the (x, crow_indices, col_indices, values, out_features, bias)
    signature (csr_mm, bsr_mm): one direct op call on the module's buffers, x of any leading shape. With the
    _cuda_ alias of bsr_mm (else None): on CUDA, cuda_rows_forward. (The formats bind op and alias
    positionally with functools.partial: a keyword costs a few tenths of a microsecond per call.)"""
    b = m._buffers
    if alias is not None and x.is_cuda:  # bsr_mm: the router's test needs the blocks
        return cuda_rows_forward(m, x, alias, op, lambda x2, n: _sk_triton.use_compiled_bsr(x2, b["values"]),
                                 b["crow_indices"], b["col_indices"], b["values"], m.out_features)
    args = (b["crow_indices"], b["col_indices"], b["values"], m.out_features, m._parameters["bias"])
    if x.dim() == 2:
        return op(x, *args)
    return op(input_rows(m, x), *args).reshape(*x.shape[:-1], m.out_features)


def compressed_rows_apply(op, name, x, shape, bias, crow_indices, col_indices, values):
    """The format's `apply` through such an op (`name` for messages): x of any leading shape."""
    if x.dim() == 2:
        return op(x, crow_indices, col_indices, values, shape[0], bias)
    y = op(_as_2d(x, name), crow_indices, col_indices, values, shape[0], bias)
    return y.reshape(*x.shape[:-1], shape[0])
