"""What every weight format provides, and the registry of formats by name."""
from __future__ import annotations

from typing import ClassVar, Dict, Tuple, Type

import torch


class SparseFormat:
    """A packed (out_features x in_features) weight.

    Subclasses hold plain tensors (named in `buffer_names`) so that a module can register them
    as buffers and `state_dict`, `torch.save` / `torch.load(weights_only=True)` and
    safetensors all work.
    """

    name: ClassVar[str]
    buffer_names: ClassVar[Tuple[str, ...]]
    #: bumped whenever the meaning or layout of the buffers changes
    version: ClassVar[int] = 1
    #: buffers that stay float32 when a module is cast to another dtype (scales)
    float32_buffers: ClassVar[Tuple[str, ...]] = ()

    shape: Tuple[int, int]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None) -> "SparseFormat":
        raise NotImplementedError

    @classmethod
    def from_buffers(cls, buffers: Dict[str, torch.Tensor], shape: Tuple[int, int]) -> "SparseFormat":
        raise NotImplementedError

    def buffers(self) -> Dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in self.buffer_names}

    def to_dense(self) -> torch.Tensor:
        raise NotImplementedError

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W.T + bias for x of shape (..., in_features)."""
        return self.apply(x, self.shape, bias, *(getattr(self, n) for n in self.buffer_names))

    @staticmethod
    def apply(x: torch.Tensor, shape: Tuple[int, int], bias, *buffers: torch.Tensor) -> torch.Tensor:
        """The format's matmul on raw buffers (in `buffer_names` order); what a module's forward calls."""
        raise NotImplementedError

    @staticmethod
    def module_forward(module, x: torch.Tensor) -> torch.Tensor:
        """SparseLinear.forward: the format's op(s) on the module's buffers, read straight from
        ``module._buffers`` by name (never cached, so a buffer swapped in by load_state_dict, ``.to()`` or
        torch.func.functional_call is the one used). Formats override it with one direct op call; a 2-d x
        goes to the op as it is (the op checks its width), any other x through ``_common.input_rows``."""
        raise NotImplementedError

    @staticmethod
    def prepare(module) -> None:
        """Work done once per set of buffers, outside forward: at conversion, after ``.to()`` / ``.cuda()``
        and after load_state_dict (2:4 on CUDA: the cuSPARSELt-compressed weight). Default: nothing."""

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer, the weight's memory and what a memory-bound kernel must read."""
        return sum(t.numel() * t.element_size() for t in self.buffers().values())

    @property
    def nnz(self) -> int:
        raise NotImplementedError

    @property
    def sparsity(self) -> float:
        total = self.shape[0] * self.shape[1]
        return 1.0 - self.nnz / total if total else 0.0


_REGISTRY: Dict[str, Type[SparseFormat]] = {}


def register(cls: Type[SparseFormat]) -> Type[SparseFormat]:
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> Type[SparseFormat]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown sparse format {name!r}; expected one of {sorted(_REGISTRY)}") from None


def names():
    return sorted(_REGISTRY)
