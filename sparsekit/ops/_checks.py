"""Input checks shared by the op wrappers, the fake kernels and the references.

They raise TypeError for a wrong dtype and ValueError for a wrong shape, device or value,
and say what was expected and what came.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT32_MAX = 2**31 - 1


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def expect_dtype(op: str, what: str, t: torch.Tensor, allowed) -> None:
    allowed = tuple(allowed)
    if t.dtype not in allowed:
        names = " or ".join(_name(d) for d in allowed)
        raise TypeError(f"{op}: expected {what} of dtype {names}, got {_name(t.dtype)}")


def expect(cond, op: str, message: str) -> None:
    """A shape or value condition; works on symbolic sizes under torch.compile."""
    torch._check_value(cond, lambda: f"{op}: {message}")


def check_csr_mm(x, crow_indices, col_indices, values, out_features, bias) -> None:
    op = "sparsekit.csr_mm"
    expect(x.dim() == 2, op, f"expected x of shape (M, in_features), got shape {tuple(x.shape)}")
    expect_dtype(op, "x", x, FLOAT_DTYPES)
    if values.dtype != x.dtype:
        raise TypeError(f"{op}: expected values of the same dtype as x ({_name(x.dtype)}), got {_name(values.dtype)}")
    expect_dtype(op, "crow_indices", crow_indices, (torch.int32,))
    expect_dtype(op, "col_indices", col_indices, (torch.int32,))
    expect(
        crow_indices.dim() == 1 and col_indices.dim() == 1 and values.dim() == 1,
        op,
        f"expected 1-d crow_indices, col_indices and values, got {crow_indices.dim()}-d, "
        f"{col_indices.dim()}-d and {values.dim()}-d",
    )
    expect(out_features >= 0, op, f"expected out_features >= 0, got {out_features}")
    expect(
        crow_indices.numel() == out_features + 1,
        op,
        f"expected crow_indices of length out_features + 1 = {out_features + 1}, got {crow_indices.numel()}",
    )
    expect(
        col_indices.numel() == values.numel(),
        op,
        f"expected col_indices and values of the same length, got {col_indices.numel()} and {values.numel()}",
    )
    expect(values.numel() <= INT32_MAX, op, f"nnz {values.numel()} exceeds the int32 index range")
    for what, t in (("crow_indices", crow_indices), ("col_indices", col_indices), ("values", values)):
        if t.device != x.device:
            raise ValueError(f"{op}: expected {what} on {x.device} like x, got {t.device}")
    if bias is not None:
        expect(
            bias.dim() == 1 and bias.numel() == out_features,
            op,
            f"expected bias of shape ({out_features},), got {tuple(bias.shape)}",
        )
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: expected bias of dtype {_name(x.dtype)} like x, got {_name(bias.dtype)}")
        if bias.device != x.device:
            raise ValueError(f"{op}: expected bias on {x.device} like x, got {bias.device}")
