"""SparseLinear: an nn.Linear whose weight is held in a sparse format."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from .. import formats as _formats

FORMAT_VERSION = 1


class SparseLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` with the weight packed in a sparse format.

    The format's tensors are buffers named after the format (for CSR: ``crow_indices``,
    ``col_indices``, ``values``), so ``state_dict()``, ``torch.save`` and safetensors keep them;
    the extra state records the format, its layout version and the shape, and loading checks it.
    Inputs may have any leading dimensions, as with ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, format: str = "csr",
                 device=None, dtype=None, **format_options):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.format = format
        self._format_cls = _formats.get(format)
        dtype = dtype or torch.get_default_dtype()
        # An empty weight (all zeros) until loaded or built by from_linear.
        empty = self._format_cls.from_dense(torch.zeros(out_features, in_features, dtype=dtype, device=device),
                                            **format_options)
        for name, t in empty.buffers().items():
            self.register_buffer(name, t)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)

    # ---------------------------------------------------------------------------------- build
    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, format: str = "csr",
                    **format_options) -> "SparseLinear":
        """Pack ``linear.weight`` (where ``mask`` is True; default: its non-zeros) into ``format``
        (options such as ``blocksize=(16, 16)`` for "bsr" go to the format's ``from_dense``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_linear: expected an nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.format = format
        self._format_cls = _formats.get(format)
        packed = self._format_cls.from_dense(w, mask, **format_options)
        for name, t in packed.buffers().items():
            self.register_buffer(name, t)
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        else:
            self.register_parameter("bias", None)
        return self

    @property
    def weight_format(self) -> _formats.SparseFormat:
        """The packed weight as a format object (sharing this module's buffers)."""
        return self._format_cls.from_buffers(
            {n: getattr(self, n) for n in self._format_cls.buffer_names}, (self.out_features, self.in_features)
        )

    def to_dense(self) -> torch.Tensor:
        return self.weight_format.to_dense()

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with the same (dense) weight and bias."""
        w = self.to_dense()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def _apply(self, fn, *args, **kwargs):
        # Scales stay float32 when the module is cast (.half(), .to(torch.bfloat16)); only their device follows.
        keep = {n: self._buffers[n] for n in self._format_cls.float32_buffers if n in self._buffers}
        out = super()._apply(fn, *args, **kwargs)
        for n, old in keep.items():
            new = self._buffers[n]
            if new.dtype != old.dtype:
                self._buffers[n] = old.to(device=new.device)
        self._format_cls.prepare(self)  # e.g. the cuSPARSELt-compressed 2:4 weight on CUDA, never in forward
        return out

    def __setstate__(self, state):
        # copy.deepcopy and pickle: new buffers, prepared as a move would prepare them
        super().__setstate__(state)
        if "_format_cls" in self.__dict__:
            self._format_cls.prepare(self)

    # ---------------------------------------------------------------------------------- run
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One op call straight into torch.ops.sparsekit.<op> (formats/*.module_forward; the W8A8 formats:
        # int8_linear / sparse24_int8_linear, which quantize per token inside; on CUDA 2:4+int8 quantizes
        # first, then picks cuSPARSELt). Nothing is checked here on the way in: a 2-d x goes to the op, which
        # checks its width, and module_forward checks any other x before reshaping it; a mismatch is reported
        # below in this layer's words.
        try:
            return self._format_cls.module_forward(self, x)
        except Exception as e:
            if isinstance(x, torch.Tensor) and (x.dim() == 0 or x.shape[-1] != self.in_features):
                raise ValueError(
                    f"SparseLinear: expected input of shape (..., {self.in_features}), got {tuple(x.shape)}"
                ) from e
            raise

    # ---------------------------------------------------------------------------------- save / load
    def get_extra_state(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self._format_cls.version,
            "module_version": FORMAT_VERSION,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or "format" not in state:
            raise RuntimeError(f"SparseLinear: unrecognised saved state {state!r}")
        if state["format"] != self.format:
            raise RuntimeError(
                f"SparseLinear: the saved layer is in format {state['format']!r}, this module is {self.format!r}; "
                "convert the model with the same format before loading"
            )
        if state.get("module_version") != FORMAT_VERSION:
            raise RuntimeError(
                f"SparseLinear: saved module version {state.get('module_version')}, this sparsekit reads version "
                f"{FORMAT_VERSION}"
            )
        if state.get("format_version") != self._format_cls.version:
            raise RuntimeError(
                f"SparseLinear: saved {self.format} layout version {state.get('format_version')}, this sparsekit "
                f"reads version {self._format_cls.version}"
            )
        if (state.get("in_features"), state.get("out_features")) != (self.in_features, self.out_features):
            raise RuntimeError(
                f"SparseLinear: saved shape ({state.get('out_features')}, {state.get('in_features')}) does not match "
                f"({self.out_features}, {self.in_features})"
            )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The number of kept values differs between weights: take the saved buffers' sizes. Loading
        # goes into fresh tensors, so that on any error the layer keeps its previous buffers, never
        # a half-loaded mix.
        before = {n: self._buffers[n] for n in self._format_cls.buffer_names}
        n_errors = len(error_msgs)
        for name in self._format_cls.buffer_names:
            key = prefix + name
            if key in state_dict:
                saved = state_dict[key]
                cur = self._buffers[name]
                if not isinstance(saved, torch.Tensor) or saved.dtype != cur.dtype and not cur.is_floating_point():
                    error_msgs.append(f"{key}: expected a tensor of dtype {cur.dtype}, got {getattr(saved, 'dtype', type(saved))}")
                    continue
                self._buffers[name] = torch.empty(saved.shape, dtype=cur.dtype, device=cur.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if len(error_msgs) == n_errors:
            try:
                self.weight_format.check()
            except (ValueError, TypeError) as e:
                error_msgs.append(f"{prefix[:-1] or 'SparseLinear'}: inconsistent sparse buffers: {e}")
        if len(error_msgs) > n_errors:
            self._buffers.update(before)
        else:
            self._format_cls.prepare(self)

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        sp = f", sparsity={self.weight_format.sparsity:.3f}" if total and self.format != "int8" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={self.format}{sp}")
