"""Structured neuron pruning that physically shrinks consecutive nn.Linear pairs.

For ``second(act(first(x)))`` with an elementwise ``act``, hidden neuron ``j`` is row ``j`` of
``first`` (and its bias) and column ``j`` of ``second``. Dropping it gives smaller dense layers whose
output equals the original's with column ``j`` of ``second.weight`` zeroed (neuron ``j`` silenced).

Neuron scores (higher = keep):

* ``"weight"``: ``||[W1[j, :], b1[j]]||_2 * ||W2[:, j]||_2``;
* ``"activation"``: ``||h_j||_rms * ||W2[:, j]||_2``, with ``h_j`` the neuron's output as the second
  layer sees it (calibration statistics of the second layer's input: ``calib[fqn_b]``), i.e. the size
  of what the neuron contributes to the output.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .calibrate import Calibration, LayerStats

__all__ = ["neuron_scores", "shrink_linear_pair", "shrink_pairs", "shrink_sequential", "sequential_pairs", "ELEMENTWISE"]

#: modules that act on each hidden neuron separately, so a pair around them can be shrunk
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
               nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink,
               nn.Dropout, nn.Identity)

Keep = Union[int, float]


def _check_pair(first: nn.Module, second: nn.Module) -> None:
    if not isinstance(first, nn.Linear) or not isinstance(second, nn.Linear):
        raise TypeError(f"expected a pair of nn.Linear, got {type(first).__name__} and {type(second).__name__}")
    if first.out_features != second.in_features:
        raise ValueError(f"expected first.out_features == second.in_features, got {first.out_features} "
                         f"and {second.in_features}")


@torch.no_grad()
def neuron_scores(first: nn.Linear, second: nn.Linear, score: str = "weight",
                  stats: Union[LayerStats, torch.Tensor, None] = None) -> torch.Tensor:
    """Float32 score per hidden neuron, shape ``(first.out_features,)`` (see the module doc).
    `stats`: for ``"activation"``, the second layer's LayerStats or a tensor of per-neuron norms."""
    _check_pair(first, second)
    col = second.weight.detach().float().norm(dim=0)
    if score == "weight":
        w1 = first.weight.detach().float()
        row = w1.pow(2).sum(1)
        if first.bias is not None:
            row = row + first.bias.detach().float().pow(2).to(row.device)
        return row.sqrt().to(col.device) * col
    if score == "activation":
        if stats is None:
            raise ValueError("neuron score 'activation' needs calibration statistics of the second layer "
                             "(calib[fqn_b] from sparsekit.calibrate, or a tensor of per-neuron norms)")
        act = stats.act_rms if isinstance(stats, LayerStats) else stats
        if act.shape != (first.out_features,):
            raise ValueError(f"expected activation norms of shape ({first.out_features},), got {tuple(act.shape)}")
        return act.float().to(col.device) * col
    raise ValueError(f"unknown neuron score {score!r}; expected 'weight' or 'activation'")


def _n_keep(keep: Keep, hidden: int) -> int:
    if isinstance(keep, bool):
        raise TypeError(f"expected keep to be an int count or a float ratio, got {keep!r}")
    if isinstance(keep, int):
        if not 1 <= keep <= hidden:
            raise ValueError(f"expected keep in [1, {hidden}] neurons, got {keep}")
        return keep
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"expected a keep ratio in (0, 1], got {keep}")
        return max(1, round(keep * hidden))
    raise TypeError(f"expected keep to be an int count or a float ratio, got {type(keep).__name__}")


def _linear_like(src: nn.Linear, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(src.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(src.bias.requires_grad)
    new.train(src.training)
    return new


@torch.no_grad()
def shrink_linear_pair(first: nn.Linear, second: nn.Linear, keep: Keep, score: str = "weight",
                       stats: Union[LayerStats, torch.Tensor, None] = None
                       ) -> Tuple[nn.Linear, nn.Linear, torch.Tensor]:
    """Keeps the `keep` (a count, or a ratio of ``first.out_features``) highest-scoring hidden neurons.

    Returns ``(new_first, new_second, kept)``: new nn.Linear layers (same dtype, device, bias,
    requires_grad) with ``first``'s rows and ``second``'s columns at the ascending indices ``kept``.
    At equal score the lower index is dropped first. The originals are not modified.
    """
    s = neuron_scores(first, second, score, stats)
    hidden = first.out_features
    n = _n_keep(keep, hidden)
    order = torch.argsort(s, stable=True)  # ascending, ties by index
    kept = torch.sort(order[hidden - n:]).values
    kf = kept.to(first.weight.device)
    ks = kept.to(second.weight.device)
    new_first = _linear_like(first, first.weight[kf], first.bias[kf] if first.bias is not None else None)
    new_second = _linear_like(second, second.weight[:, ks], second.bias)
    return new_first, new_second, kept.cpu()


def shrink_pairs(model: nn.Module, pairs: Sequence[Tuple[str, str]], keep: Union[Keep, Dict[str, Keep]],
                 score: str = "weight", calib: Optional[Calibration] = None, return_kept: bool = False):
    """Shrinks each ``(fqn_a, fqn_b)`` pair in order, replacing both layers in `model` (in place).

    keep: a count or ratio for every pair, or ``{fqn_a: count or ratio}``. For ``score="activation"``
    `calib` must hold the statistics of each ``fqn_b`` (gathered before shrinking). You vouch that only
    elementwise operations lie between ``a`` and ``b`` and that nothing else reads ``a``'s output.
    Returns the model, or ``(model, {fqn_a: kept indices})`` with ``return_kept=True``.
    """
    kept_all: Dict[str, torch.Tensor] = {}
    for fa, fb in pairs:
        a, b = model.get_submodule(fa), model.get_submodule(fb)
        k = keep[fa] if isinstance(keep, dict) else keep
        st = None
        if score == "activation":
            if calib is None:
                raise ValueError("shrink_pairs: score 'activation' needs calib=sparsekit.calibrate(model, batches)")
            st = calib[fb]
        na, nb, kept = shrink_linear_pair(a, b, k, score, st)
        _replace(model, fa, na)
        _replace(model, fb, nb)
        kept_all[fa] = kept
    return (model, kept_all) if return_kept else model


def _replace(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def sequential_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """The ``(fqn_a, fqn_b)`` pairs of nn.Linear inside every nn.Sequential of `model` that have only
    :data:`ELEMENTWISE` modules between them, in model order."""
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        items = list(mod.named_children())
        for i, (ca, a) in enumerate(items):
            if not isinstance(a, nn.Linear):
                continue
            for cb, b in items[i + 1:]:
                if isinstance(b, nn.Linear):
                    out.append((f"{name}.{ca}" if name else ca, f"{name}.{cb}" if name else cb))
                    break
                if not isinstance(b, ELEMENTWISE):
                    break
    return out


def shrink_sequential(model: nn.Module, keep: Union[Keep, Dict[str, Keep]], score: str = "weight",
                      calib: Optional[Calibration] = None, return_kept: bool = False):
    """Shrinks every pair that :func:`sequential_pairs` finds (see :func:`shrink_pairs`)."""
    pairs = sequential_pairs(model)
    if not pairs:
        raise ValueError("shrink_sequential: found no nn.Linear pair with only elementwise modules between "
                         "them inside an nn.Sequential")
    return shrink_pairs(model, pairs, keep, score, calib, return_kept)
