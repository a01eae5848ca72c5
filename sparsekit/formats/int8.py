"""int8 weights, symmetric per output channel: W8A8 (activations quantized per token at run
time) as "int8", weight-only (W8A16) as "int8-wo"."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from .. import ops  # noqa: F401  (defines the ops)
from ..ops import _as_2d, linear_call
from ._common import check_weight_and_mask, cuda_rows_forward, input_rows, route
from .base import SparseFormat, register


_INT8_LINEAR = linear_call(torch.ops.sparsekit.int8_linear.default)
_INT8_WO_MM = linear_call(torch.ops.sparsekit.int8_weight_only_mm.default)
_CUDA_INT8_LINEAR = torch.ops.sparsekit._cuda_int8_linear.default
_CUDA_INT8_WO_MM = torch.ops.sparsekit._cuda_int8_weight_only_mm.default
_HALVES = (torch.float16, torch.bfloat16)
_ROUTE_W8A8 = route("int8_mm", table="int8_linear")  # (int8_linear follows int8_mm's setting, its own routes)
_ROUTE_WO = route("int8_weight_only_mm")


def quantize_rows(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q int8, scale float32 (rows,)): q = round_half_even(w / scale) with scale = max|w_row| / 127."""
    wf = w.detach().float()
    bad = ~torch.isfinite(wf)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"quantize_rows: cannot quantize a weight holding NaN or Inf to int8 (weight[{r}, {c}] = "
                         f"{float(wf[r, c])})")
    amax = wf.abs().amax(dim=1) if wf.shape[1] else wf.new_zeros(wf.shape[0])
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(wf / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class _Int8Base(SparseFormat):
    buffer_names = ("qweight", "scale")
    float32_buffers = ("scale",)

    def __init__(self, qweight, scale, shape, check: bool = True):
        self.qweight, self.scale = qweight, scale
        self.shape = (int(shape[0]), int(shape[1]))
        if check:
            self.check()

    @classmethod
    def from_dense(cls, weight, mask=None):
        mask = check_weight_and_mask(weight, mask, f"{cls.__name__}.from_dense")
        w = torch.where(mask, weight.detach(), torch.zeros((), dtype=weight.dtype, device=weight.device))
        q, scale = quantize_rows(w)
        return cls(q, scale, tuple(weight.shape), check=False)

    @classmethod
    def from_buffers(cls, buffers: Dict[str, torch.Tensor], shape):
        return cls(buffers["qweight"], buffers["scale"], shape)

    def check(self) -> None:
        N, K = self.shape
        if self.qweight.dtype != torch.int8 or self.qweight.shape != (N, K):
            raise ValueError(f"{type(self).__name__}: expected int8 qweight of shape ({N}, {K}), got "
                             f"{self.qweight.dtype} {tuple(self.qweight.shape)}")
        if self.scale.dtype != torch.float32 or self.scale.shape != (N,):
            raise ValueError(f"{type(self).__name__}: expected float32 scale of shape ({N},), got "
                             f"{self.scale.dtype} {tuple(self.scale.shape)}")

    def to_dense(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    @property
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.qweight))


@register
class Int8Weight(_Int8Base):
    name = "int8"

    @staticmethod
    def apply(x, shape, bias, qweight, scale):
        # int8_linear (per-token quantization + int8_mm in one op) has no Python autograd kernel: called as it is
        if x.dim() == 2:
            return _INT8_LINEAR(x, qweight, scale, bias)
        y = _INT8_LINEAR(x.reshape(-1, x.shape[-1]), qweight, scale, bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def module_forward(m, x):
        b = m._buffers
        if x.is_cuda:  # the compiled W8A8 kernel where it serves these rows (measured; else M <= 16), x quantized
            # inside it, called directly (one op call)
            return cuda_rows_forward(m, x, _CUDA_INT8_LINEAR, _INT8_LINEAR, _ROUTE_W8A8, b["qweight"], b["scale"])
        if x.dim() == 2:
            return _INT8_LINEAR(x, b["qweight"], b["scale"], m._parameters["bias"])
        y = _INT8_LINEAR(input_rows(m, x), b["qweight"], b["scale"], m._parameters["bias"])
        return y.reshape(*x.shape[:-1], m.out_features)


@register
class Int8WeightOnly(_Int8Base):
    name = "int8-wo"

    @staticmethod
    def apply(x, shape, bias, qweight, scale):
        if x.dim() == 2:
            return _INT8_WO_MM(x, qweight, scale, bias)
        y = _INT8_WO_MM(_as_2d(x, "int8_weight_only_mm"), qweight, scale, bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def module_forward(m, x):
        b = m._buffers
        if x.is_cuda:  # float16 / bfloat16: the compiled tensor-core kernel directly (one op call) where it serves
            # these rows (measured; else M <= 16)
            return cuda_rows_forward(m, x, _CUDA_INT8_WO_MM if x.dtype in _HALVES else None, _INT8_WO_MM,
                                     _ROUTE_WO, b["qweight"], b["scale"])
        if x.dim() == 2:
            return _INT8_WO_MM(x, b["qweight"], b["scale"], m._parameters["bias"])
        y = _INT8_WO_MM(input_rows(m, x), b["qweight"], b["scale"], m._parameters["bias"])
        return y.reshape(*x.shape[:-1], m.out_features)
