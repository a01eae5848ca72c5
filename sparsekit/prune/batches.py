"""Batches as models take them: the one place that says how a calibration or training batch is run,
which output is the main one, and which tokens count.

A batch is one of

* a tensor ``x``: ``model(x)``, no target;
* a tuple / list ``(input, target, ...)``: ``model(input)`` and `target` (the input may itself be a
  dict, as below, then ``model(**input)``);
* a dict (Hugging Face style, ``{"input_ids", "attention_mask", ...}``): ``model(**batch)``; the
  target is ``batch["labels"]`` when present (and the model gets it too, as Hugging Face models
  expect).

Tensors (also inside the dict) are moved to the model's device. The *token mask* is
``attention_mask != 0`` of a dict batch whose ``attention_mask`` is 2-d ``(batch, seq)`` (None when
every token is real or there is no such mask). While :meth:`Batch.forward` runs, it is the current
token mask, and :func:`tokens` uses it: an activation of shape ``(batch, seq, K)`` (or ``(batch*seq,
K)``) keeps only the rows of real tokens, so padding never enters activation statistics or Gram
matrices. Activations of any other shape (a pooler's ``(batch, K)``, say) are taken whole.

The main output (:func:`main_output`) of a model is its output if a tensor, else ``.logits``, else
``.last_hidden_state`` (also as dict keys), else the first element of a tuple.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

__all__ = ["Batch", "as_batch", "main_output", "tokens", "current_token_mask", "masked_mean"]

_state = threading.local()


def current_token_mask() -> Optional[torch.Tensor]:
    """The token mask of the batch whose forward is running (see the module doc), or None."""
    return getattr(_state, "mask", None)


def _move(t: Any, device: torch.device) -> Any:
    if isinstance(t, torch.Tensor):
        return t if t.device == device else t.to(device)
    return t


def _token_mask(kwargs: Mapping[str, Any]) -> Optional[torch.Tensor]:
    am = kwargs.get("attention_mask")
    if not isinstance(am, torch.Tensor) or am.dim() != 2:
        return None
    ids = kwargs.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.shape != am.shape:
        raise ValueError(f"expected attention_mask of the shape of input_ids {tuple(ids.shape)}, "
                         f"got {tuple(am.shape)}")
    m = am != 0
    return None if bool(m.all()) else m


class Batch:
    """One batch, ready to run: ``args`` / ``kwargs`` for the model, ``target`` (or None) and the
    token ``mask`` (bool ``(batch, seq)`` or None)."""

    __slots__ = ("args", "kwargs", "target", "mask")

    def __init__(self, args: Tuple[Any, ...], kwargs: Dict[str, Any], target: Any, mask: Optional[torch.Tensor]):
        self.args, self.kwargs, self.target, self.mask = args, kwargs, target, mask

    def forward(self, model) -> Any:
        """``model(*args, **kwargs)`` with this batch's token mask as the current one."""
        prev = getattr(_state, "mask", None)
        _state.mask = self.mask
        try:
            return model(*self.args, **self.kwargs)
        finally:
            _state.mask = prev

    @property
    def input(self) -> Any:
        """The positional input (tensor batches) or the dict of keyword inputs."""
        return self.args[0] if self.args else self.kwargs


def as_batch(batch: Any, device: torch.device, who: str = "a batch") -> Batch:
    """A :class:`Batch` from a tensor, a tuple ``(input, target, ...)`` or a dict (module doc),
    tensors moved to `device`."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, torch.Tensor):
        return Batch((_move(batch, device),), {}, None, None)
    if isinstance(batch, Mapping):
        kw = {k: _move(v, device) for k, v in batch.items()}
        return Batch((), kw, kw.get("labels"), _token_mask(kw))
    if isinstance(batch, (tuple, list)) and len(batch) >= 1:
        first = batch[0]
        target = _move(batch[1], device) if len(batch) > 1 else None
        if isinstance(first, Mapping):
            kw = {k: _move(v, device) for k, v in first.items()}
            return Batch((), kw, target, _token_mask(kw))
        return Batch((_move(first, device),), {}, target, None)
    raise TypeError(f"expected {who} to be a tensor, a tuple (input, target) or a dict of model inputs "
                    f"(model(**batch)), got {type(batch).__name__}")


def main_output(out: Any) -> torch.Tensor:
    """The model's main output tensor (module doc)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("logits", "last_hidden_state"):
        v = out.get(name) if isinstance(out, Mapping) else getattr(out, name, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"expected the model to return a tensor (or .logits, .last_hidden_state, or a tuple of "
                    f"tensors), got {type(out).__name__}")


def _rows_mask(x: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    lead = x.shape[:-1]
    if lead == mask.shape:
        return mask.to(x.device).reshape(-1)
    if len(lead) == 1 and lead[0] == mask.numel():
        return mask.to(x.device).reshape(-1)
    return None


def tokens(x: torch.Tensor, mask: Optional[torch.Tensor] = None, *, use_current: bool = True) -> torch.Tensor:
    """``x`` (``(..., K)``) as rows ``(n, K)``, without the padding tokens: those where `mask` (or,
    by default, the current token mask) is False, when x's leading dims are the mask's shape (or
    their flattened count); otherwise every row."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a layer input tensor, got {type(x).__name__}")
    if mask is None and use_current:
        mask = current_token_mask()
    x2 = x.reshape(-1, x.shape[-1])
    rm = _rows_mask(x, mask)
    return x2 if rm is None else x2[rm]


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of `x` over the real tokens' rows (all of `x` when the mask does not apply)."""
    rm = _rows_mask(x, mask)
    return x.mean() if rm is None else x.reshape(-1, x.shape[-1])[rm].mean()
