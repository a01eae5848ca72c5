"""Calibration: the statistics that data-aware criteria need, gathered with hooks as running sums.

Nothing keeps whole activations: per ``nn.Linear`` we add up, over every calibration token,

* ``act_sq_sum[j] = sum_t x[t, j]**2`` (float64, shape ``(in_features,)``) from a forward pre-hook,
  for the activation-aware criterion (Wanda: ``|W_ij| * ||X_j||_2``);
* ``grad_abs_sum = sum_b |dL_b/dW|`` (float32, weight-shaped), the absolute weight gradient of each
  calibration batch ``b``, for the gradient (``|g|``) and Taylor (``|w * g|``) criteria.

The statistics live on each layer's device, so calibration runs wherever the model is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torch import nn

from .batches import Batch, as_batch, main_output, masked_mean, tokens

__all__ = ["LayerStats", "Calibration", "calibrate", "GRADIENT_CRITERIA", "ACTIVATION_CRITERIA"]

GRADIENT_CRITERIA = ("gradient", "taylor")
ACTIVATION_CRITERIA = ("activation", "wanda")


@dataclass
class LayerStats:
    """Running sums for one nn.Linear (see the module doc)."""

    in_features: int
    act_sq_sum: Optional[torch.Tensor] = None  # (in_features,) float64
    n_tokens: int = 0
    grad_abs_sum: Optional[torch.Tensor] = None  # weight-shaped float32
    n_grad_batches: int = 0

    def add_input(self, x: torch.Tensor) -> None:
        """Adds one input batch (any leading dims, last dim = in_features) to the activation sums."""
        x = x.detach()
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with last dim {self.in_features}, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features).float()
        sq = (x2 * x2).sum(0).double()
        self.act_sq_sum = sq if self.act_sq_sum is None else self.act_sq_sum + sq.to(self.act_sq_sum.device)
        self.n_tokens += x2.shape[0]

    def add_grad(self, g: torch.Tensor) -> None:
        """Adds one batch's weight gradient to the |g| sums."""
        a = g.detach().abs().float()
        self.grad_abs_sum = a if self.grad_abs_sum is None else self.grad_abs_sum + a.to(self.grad_abs_sum.device)
        self.n_grad_batches += 1

    @property
    def act_norm(self) -> torch.Tensor:
        """``||X_j||_2`` over all calibration tokens, float32 ``(in_features,)``."""
        if self.act_sq_sum is None:
            raise ValueError("no activation statistics were gathered for this layer")
        return self.act_sq_sum.sqrt().float()

    @property
    def act_rms(self) -> torch.Tensor:
        """``||X_j||_2 / sqrt(n_tokens)``: the same ranking as act_norm, independent of how much data was used."""
        if self.act_sq_sum is None or self.n_tokens == 0:
            raise ValueError("no activation statistics were gathered for this layer")
        return (self.act_sq_sum / self.n_tokens).sqrt().float()

    @property
    def grad_abs_mean(self) -> torch.Tensor:
        """Mean over calibration batches of ``|dL/dW|``, weight-shaped float32."""
        if self.grad_abs_sum is None or self.n_grad_batches == 0:
            raise ValueError("no gradient statistics were gathered for this layer")
        return self.grad_abs_sum / self.n_grad_batches

    def reset(self) -> None:
        """Forgets everything gathered so far."""
        self.act_sq_sum, self.n_tokens, self.grad_abs_sum, self.n_grad_batches = None, 0, None, 0


@dataclass
class Calibration:
    """What :func:`calibrate` gathered: ``layers[fqn] -> LayerStats``; ``calib[fqn]`` works too."""

    layers: Dict[str, LayerStats] = field(default_factory=dict)
    n_batches: int = 0
    activations: bool = False
    gradients: bool = False

    def __getitem__(self, fqn: str) -> LayerStats:
        if fqn not in self.layers:
            raise KeyError(f"no calibration statistics for layer {fqn!r}; calibrated layers: {sorted(self.layers)}")
        return self.layers[fqn]

    def __contains__(self, fqn: object) -> bool:
        return fqn in self.layers

    def __len__(self) -> int:
        return len(self.layers)


class _Hooks:
    """Forward pre-hooks that add each nn.Linear's inputs to its LayerStats; ``remove()`` takes them off."""

    def __init__(self, layers: Dict[str, nn.Linear], stats: Dict[str, LayerStats]):
        self.handles = []
        for fqn, mod in layers.items():
            st = stats[fqn]
            # padding tokens of a dict batch (attention_mask 0) are dropped here (batches.tokens)
            self.handles.append(mod.register_forward_pre_hook(lambda m, args, st=st: st.add_input(tokens(args[0]))))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _loss(out: Any, b: Batch, loss_fn: Optional[Callable]) -> torch.Tensor:
    if loss_fn is None:
        own = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
        if isinstance(own, torch.Tensor) and own.numel() == 1:  # a Hugging Face model given labels
            return own.reshape(())
        o = main_output(out)
        return 0.5 * masked_mean(o.float().pow(2), b.mask)
    loss = loss_fn(out, b.target) if b.target is not None else loss_fn(out)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"expected loss_fn to return a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
    return loss.reshape(())


def _needs(criterion: Optional[str]):
    """(activations, gradients) that `criterion` needs; None: both."""
    if criterion is None:
        return True, True
    if criterion in GRADIENT_CRITERIA:
        return False, True
    if criterion in ACTIVATION_CRITERIA:
        return True, False
    return True, False  # magnitude, random: nothing is needed; activations are cheap


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Optional[Callable] = None,
    *,
    criterion: Optional[str] = None,
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    max_batches: Optional[int] = None,
    eval_mode: bool = True,
) -> Calibration:
    """Runs `batches` through `model` and gathers, per nn.Linear, the running sums of the module doc.

    batches: an iterable of input tensors, of tuples ``(input, target, ...)`` or of dicts run as
      ``model(**batch)`` (Hugging Face; target ``batch["labels"]``); tensors are moved to the device
      of the model's first parameter (:mod:`sparsekit.prune.batches`). Padding tokens
      (``attention_mask == 0``) are left out of the activation sums and of ``n_tokens``.
    loss_fn: ``loss_fn(output, target)`` (``loss_fn(output)`` for batches without a target) gives the
      loss whose weight gradients the gradient and Taylor criteria use. Without it: the model's own
      ``output.loss`` when it returns one (a Hugging Face model given ``labels``), else the gradient
      of ``0.5 * mean(output ** 2)`` over the real tokens (the output's energy: a label-free proxy;
      the output is :func:`sparsekit.prune.batches.main_output`, e.g. ``.logits`` or
      ``.last_hidden_state``).
    criterion: gather only what this criterion needs (``"activation"``: activations, no backward;
      ``"gradient"`` / ``"taylor"``: gradients); None gathers both.
    filter_fn: ``filter_fn(module, fqn)`` chooses the layers (default: every nn.Linear).
    eval_mode: run in eval mode (dropout off), restoring each module's mode afterwards.

    Parameters' ``.grad`` are left untouched (gradients are taken with ``torch.autograd.grad``), hooks
    are removed and ``requires_grad`` flags restored even when a batch raises.
    """
    from . import linear_layers  # late: the package imports this module

    layers = linear_layers(model, filter_fn)
    if not layers:
        raise ValueError("calibrate: the model has no nn.Linear layer that filter_fn accepts")
    want_act, want_grad = _needs(criterion)
    stats = {fqn: LayerStats(m.in_features) for fqn, m in layers.items()}
    calib = Calibration(stats, 0, want_act, want_grad)
    first = next(iter(model.parameters()))
    device = first.device
    # with torch.nn.utils.prune's reparametrization, .weight is recomputed at every forward from
    # weight_orig * weight_mask: differentiate weight_orig (its gradient is zero where pruned)
    weights = [getattr(m, "weight_orig", m.weight) for m in layers.values()]
    modes = [(m, m.training) for m in model.modules()]
    flags = [(w, w.requires_grad) for w in weights]
    hooks = _Hooks(layers, stats) if want_act else None
    try:
        if eval_mode:
            model.eval()
        for w in weights:
            w.requires_grad_(want_grad)
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            b = as_batch(batch, device, "a calibration batch")
            if want_grad:
                with torch.enable_grad():
                    loss = _loss(b.forward(model), b, loss_fn)
                    grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for st, g, w in zip(stats.values(), grads, weights):
                    st.add_grad(g if g is not None else torch.zeros_like(w))
            else:
                with torch.no_grad():
                    b.forward(model)
            calib.n_batches += 1
    finally:
        if hooks is not None:
            hooks.remove()
        for w, f in flags:
            w.requires_grad_(f)
        for m, t in modes:
            m.training = t
    if calib.n_batches == 0:
        raise ValueError("calibrate: no batches were given")
    return calib


def _stats_for(calib: Optional[Calibration], fqn: str, criterion: str) -> LayerStats:
    """The LayerStats a data-aware criterion needs, with an error that says how to get them."""
    if calib is None:
        raise ValueError(f"criterion {criterion!r} needs calibration statistics; "
                         f"pass calib=sparsekit.calibrate(model, batches[, loss_fn])")
    return calib[fqn]

