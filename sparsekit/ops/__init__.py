"""sparsekit ops: documented wrappers over torch.ops.sparsekit.*.

Each op has its schema in `_schemas.py`, a fake kernel here (so torch.compile traces it),
its pure-PyTorch reference in `reference.py` (registered as the CompositeExplicitAutograd
fallback, so it serves wherever no compiled or Triton kernel is registered), and kernels
registered per device by the backends.
"""
from __future__ import annotations

import torch

from . import _schemas  # noqa: F401  (defines the ops)
from . import reference
from ._checks import check_csr_mm

__all__ = ["csr_mm", "reference"]

_lib = torch.library.Library("sparsekit", "IMPL")


# ---------------------------------------------------------------------------------------- csr_mm
@torch.library.register_fake("sparsekit::csr_mm")
def _csr_mm_fake(x, crow_indices, col_indices, values, out_features, bias=None):
    check_csr_mm(x, crow_indices, col_indices, values, out_features, bias)
    return x.new_empty((x.shape[0], out_features))


def _csr_mm_fallback(x, crow_indices, col_indices, values, out_features, bias=None):
    check_csr_mm(x, crow_indices, col_indices, values, out_features, bias)
    return reference.csr_mm(x, crow_indices, col_indices, values, out_features, bias)


_lib.impl("csr_mm", _csr_mm_fallback, "CompositeExplicitAutograd")


def _csr_mm_setup_context(ctx, inputs, output):
    x, crow_indices, col_indices, values, out_features, bias = inputs
    if values.requires_grad:
        raise RuntimeError(
            "sparsekit.csr_mm: gradients with respect to the sparse values are not supported; "
            "train the dense weight with its mask (sparsekit.prune) and convert afterwards"
        )
    ctx.save_for_backward(crow_indices, col_indices, values)
    ctx.in_features = x.shape[1]
    ctx.out_features = out_features
    ctx.has_bias = bias is not None


def _csr_mm_backward(ctx, grad):
    crow_indices, col_indices, values = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        w = reference.csr_to_dense(crow_indices, col_indices, values, (ctx.out_features, ctx.in_features))
        grad_x = grad @ w.to(grad.dtype)
    grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[5] else None
    return grad_x, None, None, None, None, grad_bias


torch.library.register_autograd("sparsekit::csr_mm", _csr_mm_backward, setup_context=_csr_mm_setup_context)


def csr_mm(x, crow_indices, col_indices, values, out_features: int, bias=None) -> torch.Tensor:
    """``x @ W.T + bias`` for a weight W of shape (out_features, in_features) stored in CSR.

    Args:
        x: activations of shape (..., in_features), float32, bfloat16 or float16, any strides.
        crow_indices: int32, (out_features + 1,): row i's kept values are values[crow[i]:crow[i+1]].
        col_indices: int32, (nnz,): the column of each kept value, in [0, in_features).
        values: (nnz,), the same dtype as x.
        out_features: rows of W.
        bias: optional (out_features,), the same dtype as x.

    Returns:
        (..., out_features) in x's dtype, accumulated in float32.

    Raises:
        TypeError: a dtype other than the above. ValueError: a shape, length or device mismatch.
    """
    if x.dim() == 0:
        raise ValueError("sparsekit.csr_mm: expected x of shape (..., in_features), got a 0-d tensor")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    y = torch.ops.sparsekit.csr_mm(x2, crow_indices, col_indices, values, out_features, bias)
    return y.reshape(*lead, out_features) if x.dim() != 2 else y
