"""Pruning front-ends: choose which weights of nn.Linear layers go, as bool masks (True = kept).

* :func:`prune` -- one-shot: criterion -> score -> structure -> masks, per layer or global.
* :func:`sparsekit.calibrate` (:mod:`.calibrate`) -- running sums for data-aware criteria.
* :mod:`.batches` -- how every data-aware entry point runs a batch: a tensor, ``(input, target)``
  or a Hugging Face dict (``model(**batch)``, padding tokens left out of statistics), and which
  output is the main one (``.logits``, ``.last_hidden_state``).
* :class:`GradualPruner` (:mod:`.schedule`) -- sparsity raised over training steps (cubic / linear).
* :func:`finetune` (:mod:`.recovery`) -- recovery training with fixed masks, clipping, distillation.
* :func:`l1_penalty`, :func:`threshold_masks` (:mod:`.l1`) -- L1-regularised sparse training.
* :func:`shrink_linear_pair`, :func:`shrink_sequential`, :func:`shrink_pairs` (:mod:`.neurons`) --
  structured neuron pruning that returns smaller dense layers.
* :func:`to_torch_prune`, :func:`from_torch_prune`, :func:`save_masks`, :func:`load_masks`
  (:mod:`.interop`) -- ``torch.nn.utils.prune`` state and mask files.

Note: ``sparsekit.prune`` is the function; import the rest from the package:
``from sparsekit.prune import finetune, GradualPruner``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from . import batches, criteria, masks
from .calibrate import Calibration, LayerStats, calibrate
from .masks import Pattern, is_valid, parse_pattern

__all__ = [
    "prune", "apply_masks", "batches", "linear_layers", "masks_from_scores", "sparsity_report", "masks", "criteria",
    "calibrate", "Calibration", "LayerStats", "Pattern", "parse_pattern", "is_valid",
    "GradualPruner", "sparsity_schedule", "finetune", "distillation_loss", "l1_penalty", "threshold_masks",
    "shrink_linear_pair", "shrink_sequential", "shrink_pairs", "sequential_pairs", "neuron_scores",
    "to_torch_prune", "from_torch_prune", "save_masks", "load_masks",
    "GramCollector", "collect_grams", "sparsegpt", "sparsegpt_layer", "HybridResult", "hybrid",
]

FilterFn = Callable[[nn.Module, str], bool]
_OVERRIDE_KEYS = ("sparsity", "pattern", "criterion", "min_sparsity", "max_sparsity", "pad")


def linear_layers(model: nn.Module, filter_fn: Optional[FilterFn] = None) -> Dict[str, nn.Linear]:
    """The model's nn.Linear layers by fully qualified name, those that `filter_fn` accepts."""
    return {
        fqn: m
        for fqn, m in model.named_modules()
        if isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, fqn))
    }


@torch.no_grad()
def apply_masks(model: nn.Module, masks_by_fqn: Dict[str, torch.Tensor]) -> None:
    """Zeroes the pruned weights in place (weight *= mask)."""
    modules = dict(model.named_modules())
    for fqn, mask in masks_by_fqn.items():
        if fqn not in modules:
            raise KeyError(f"apply_masks: the model has no module {fqn!r}")
        w = modules[fqn].weight
        if mask.shape != w.shape:
            raise ValueError(f"apply_masks: mask for {fqn!r} has shape {tuple(mask.shape)}, weight {tuple(w.shape)}")
        w.mul_(mask.to(device=w.device, dtype=w.dtype))


def sparsity_report(masks_by_fqn: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """``{"layers": {fqn: pruned fraction}, "total": pruned fraction over all masks}``."""
    layers, pruned, total = {}, 0, 0
    for fqn, m in masks_by_fqn.items():
        p = int((~m.bool()).sum())
        layers[fqn] = p / max(m.numel(), 1)
        pruned, total = pruned + p, total + m.numel()
    return {"layers": layers, "total": pruned / max(total, 1)}


def _layer_settings(fqn: str, defaults: Dict[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    s = dict(defaults)
    ov = overrides.get(fqn)
    if ov is not None:
        if not isinstance(ov, Mapping):
            raise TypeError(f"prune: expected overrides[{fqn!r}] to be a dict, got {type(ov).__name__}")
        bad = set(ov) - set(_OVERRIDE_KEYS)
        if bad:
            raise ValueError(f"prune: unknown override key(s) {sorted(bad)} for {fqn!r}; expected some of {list(_OVERRIDE_KEYS)}")
        s.update(ov)
        s["overridden_sparsity"] = "sparsity" in ov
        if "pattern" in ov and "sparsity" not in ov and parse_pattern(ov["pattern"]).kind == "nm":
            s["sparsity"] = None  # an N:M override brings its own sparsity
    else:
        s["overridden_sparsity"] = False
    s["pattern"] = parse_pattern(s["pattern"])
    s["criterion"] = criteria.canonical(s["criterion"])
    lo = masks.check_sparsity(s["min_sparsity"], "min_sparsity")
    hi = masks.check_sparsity(s["max_sparsity"], "max_sparsity")
    if lo > hi:
        raise ValueError(f"prune: expected min_sparsity <= max_sparsity for {fqn!r}, got {lo} > {hi}")
    if s["sparsity"] is not None:
        s["sparsity"] = masks.check_sparsity(s["sparsity"])
    return s


def _layer_mask(score: torch.Tensor, s: Dict[str, Any], fqn: str) -> torch.Tensor:
    p: Pattern = s["pattern"]
    sp = s["sparsity"]
    if p.kind != "nm":
        if sp is None:
            raise ValueError(f"prune: pattern '{p.name}' needs a sparsity in [0, 1] for {fqn!r}, got None")
        sp = min(max(sp, s["min_sparsity"]), s["max_sparsity"])
    try:
        return masks.from_pattern(score, sp, p, pad=s["pad"])
    except ValueError as e:
        raise ValueError(f"prune: layer {fqn!r}: {e}") from None


def _normalized(u: torch.Tensor, normalize: str) -> torch.Tensor:
    if normalize == "none":
        return u.float()
    fin = u[torch.isfinite(u)]
    mean = fin.double().mean() if fin.numel() else torch.tensor(0.0, dtype=torch.float64)
    return (u.double() / mean).float() if mean > 0 else u.float()


def _global_masks(pool: Dict[str, torch.Tensor], settings: Dict[str, Dict[str, Any]], sparsity: float,
                  normalize: str) -> Dict[str, torch.Tensor]:
    """One threshold over all pooled layers' normalized unit scores, floors and ceilings respected."""
    if not pool:
        return {}
    dev = next(iter(pool.values())).device
    us, sizes, ranks, lo, hi, expand = [], [], [], [], [], {}
    for fqn, score in pool.items():
        s = settings[fqn]
        try:
            u, size, ex = masks.units(score, s["pattern"], pad=s["pad"])
        except ValueError as e:
            raise ValueError(f"prune: layer {fqn!r}: {e}") from None
        u = _normalized(u, normalize).to(dev)
        n = u.numel()
        rank = torch.empty(n, dtype=torch.long, device=dev)
        rank[torch.argsort(u, stable=True)] = torch.arange(n, device=dev)
        us.append(u)
        sizes.append(size.to(dev))
        ranks.append(rank)
        lo.append(torch.full((n,), round(s["min_sparsity"] * n), dtype=torch.long, device=dev))
        hi.append(torch.full((n,), round(s["max_sparsity"] * n), dtype=torch.long, device=dev))
        expand[fqn] = (n, ex)
    u, size, rank, lo_, hi_ = (torch.cat(t) for t in (us, sizes, ranks, lo, hi))
    mandatory = rank < lo_
    optional = (rank >= lo_) & (rank < hi_)
    target = round(sparsity * int(size.sum()))
    need = target - int(size[mandatory].sum())
    order = torch.argsort(u, stable=True)  # across layers: ties -> earlier layer, then lower index
    opt_sorted = optional[order]
    cum = torch.cumsum(size[order] * opt_sorted, 0)
    cands = torch.cat([torch.zeros(1, dtype=cum.dtype, device=dev), cum[opt_sorted]])
    best = int(torch.argmin((cands - need).abs()))  # first minimum: fewer pruned on a tie
    if abs(int(cands[best]) - need) > int(size.max()):
        got = int(cands[best]) + target - need
        total = int(size.sum())
        raise ValueError(
            f"prune: global sparsity {sparsity:g} ({target} of {total} weights) cannot be met within the "
            f"per-layer floors and ceilings (min_sparsity / max_sparsity); the nearest is {got / total:.4g}")
    pruned = mandatory.clone()
    if best:
        pos = torch.nonzero(opt_sorted).reshape(-1)[best - 1]  # position of the last optional unit pruned
        chosen = order[: int(pos) + 1][opt_sorted[: int(pos) + 1]]
        pruned[chosen] = True
    out, start = {}, 0
    for fqn, (n, ex) in expand.items():
        out[fqn] = ex(~pruned[start: start + n]).to(pool[fqn].device)
        start += n
    return out


def _validate(sparsity, pattern, criterion, scope, normalize, overrides, names):
    if scope not in ("layer", "global"):
        raise ValueError(f"prune: expected scope 'layer' or 'global', got {scope!r}")
    if normalize not in ("mean", "none"):
        raise ValueError(f"prune: expected normalize 'mean' or 'none', got {normalize!r}")
    if sparsity is not None:
        masks.check_sparsity(sparsity)
    p = parse_pattern(pattern)
    criteria.canonical(criterion)
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"prune: overrides name layers that are not pruned here: {sorted(unknown)}; "
                         f"pruned layers: {sorted(names)}")
    if scope == "global":
        if p.kind == "nm":
            raise ValueError(f"prune: scope='global' ranks units across layers, but pattern '{p.name}' fixes "
                             f"every layer's sparsity; use scope='layer'")
        if p.kind == "row_balanced":
            raise ValueError(f"prune: scope='global' ranks units across layers, but pattern '{p.name}' fixes "
                             f"every row's sparsity; use scope='layer'")
        if sparsity is None:
            raise ValueError("prune: scope='global' needs a sparsity in [0, 1], got None")


def _choose(scores: Dict[str, torch.Tensor], settings: Dict[str, Dict[str, Any]], sparsity, scope: str,
            normalize: str) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    pool: Dict[str, torch.Tensor] = {}
    for fqn, sc in scores.items():
        s = settings[fqn]
        if scope == "global" and not s["overridden_sparsity"] and s["pattern"].kind not in ("nm", "row_balanced"):
            pool[fqn] = sc
        else:
            out[fqn] = _layer_mask(sc, s, fqn)
    if pool:
        out.update(_global_masks(pool, settings, masks.check_sparsity(sparsity), normalize))
    return {fqn: out[fqn] for fqn in scores}  # input order


def masks_from_scores(
    scores: Mapping[str, torch.Tensor],
    sparsity: Optional[float] = None,
    pattern: Union[str, Pattern] = "unstructured",
    *,
    scope: str = "layer",
    min_sparsity: float = 0.0,
    max_sparsity: float = 1.0,
    overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
    pad: bool = False,
    normalize: str = "mean",
) -> Dict[str, torch.Tensor]:
    """Masks from your own scores ``{fqn: score}`` (higher = keep), with :func:`prune`'s structure,
    scope, floors, ceilings and overrides (an override's ``criterion`` key is ignored here)."""
    overrides = dict(overrides or {})
    _validate(sparsity, pattern, "magnitude", scope, normalize, overrides, list(scores))
    defaults = dict(sparsity=sparsity, pattern=pattern, criterion="magnitude", min_sparsity=min_sparsity,
                    max_sparsity=max_sparsity, pad=pad)
    settings = {fqn: _layer_settings(fqn, defaults, overrides) for fqn in scores}
    return _choose(dict(scores), settings, sparsity, scope, normalize)


def prune(
    model: nn.Module,
    sparsity: Optional[float] = None,
    pattern: Union[str, Pattern] = "unstructured",
    criterion: str = "magnitude",
    filter_fn: Optional[FilterFn] = None,
    apply: bool = True,
    *,
    calib: Union[Calibration, Any, None] = None,
    loss_fn: Optional[Callable] = None,
    scope: str = "layer",
    min_sparsity: float = 0.0,
    max_sparsity: float = 1.0,
    overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
    pad: bool = False,
    normalize: str = "mean",
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """One-shot pruning of every nn.Linear that ``filter_fn(module, fqn)`` accepts.

    Returns ``{fqn: bool mask}`` (True = kept, weight-shaped, on the weight's device) and, with
    ``apply=True``, zeroes the pruned weights in place.

    sparsity: fraction of weights to prune; may be None for an N:M pattern (else it must be 1 - N/M).
    pattern: ``"unstructured"``, ``"N:M"`` along the input dimension (``"2:4"``), ``"RxC"`` blocks
      (``"16x16"``, ``"1x8"`` vectors), ``"rows"`` (output neurons) or ``"columns"`` (input features);
      see :mod:`sparsekit.prune.masks` for each contract.
    criterion: ``magnitude``, ``gradient``, ``taylor``, ``activation`` (``wanda``) or ``random``
      (see :mod:`sparsekit.prune.criteria`).
    calib: a :class:`Calibration` from :func:`sparsekit.calibrate`, or an iterable of batches to
      calibrate on here (with `loss_fn`); needed by gradient, taylor and activation.
    scope: ``"layer"`` -- every layer at `sparsity` (clamped into ``[min_sparsity, max_sparsity]``);
      ``"global"`` -- one threshold over the units (elements, blocks, rows, columns) of all layers,
      scores divided by each layer's mean unit score (``normalize="mean"``; ``"none"`` compares raw
      scores), so that `sparsity` of all the pooled weights goes (to within one unit) while every
      layer has between ``min_sparsity`` and ``max_sparsity`` of its own units pruned (a target
      that the floors and ceilings rule out is a ValueError). Ties go to the earlier layer, then the
      lower index. N:M layers have a fixed sparsity and are not pooled.
    overrides: ``{fqn: {"sparsity", "pattern", "criterion", "min_sparsity", "max_sparsity", "pad"}}``
      per layer; a layer whose override sets ``sparsity`` is pruned on its own, outside the pool.
    pad: let shapes that a structure cannot tile be padded (see :mod:`sparsekit.prune.masks`)
      instead of raising a ValueError.
    normalize: see `scope`.
    seed: seeds the random criterion (together with each layer's fqn).
    """
    overrides = dict(overrides or {})
    layers = linear_layers(model, filter_fn)
    _validate(sparsity, pattern, criterion, scope, normalize, overrides, list(layers))
    defaults = dict(sparsity=sparsity, pattern=pattern, criterion=criterion, min_sparsity=min_sparsity,
                    max_sparsity=max_sparsity, pad=pad)
    settings = {fqn: _layer_settings(fqn, defaults, overrides) for fqn in layers}
    used = {s["criterion"] for s in settings.values()}
    if calib is not None and not isinstance(calib, Calibration):
        if used & {"gradient", "taylor", "activation"}:
            calib = calibrate(model, calib, loss_fn, criterion=next(iter(used)) if len(used) == 1 else None,
                              filter_fn=lambda m, fqn: fqn in layers)
        else:
            calib = None  # magnitude / random need nothing
    scores = {fqn: criteria.score(settings[fqn]["criterion"], mod, fqn, calib, seed) for fqn, mod in layers.items()}
    out = _choose(scores, settings, sparsity, scope, normalize)
    if apply:
        apply_masks(model, out)
    return out


from .interop import from_torch_prune, load_masks, save_masks, to_torch_prune  # noqa: E402
from .l1 import l1_penalty, threshold_masks  # noqa: E402
from .neurons import neuron_scores, sequential_pairs, shrink_linear_pair, shrink_pairs, shrink_sequential  # noqa: E402
from .recovery import distillation_loss, finetune  # noqa: E402
from .schedule import GradualPruner, sparsity_schedule  # noqa: E402
from .second_order import GramCollector, collect_grams, sparsegpt, sparsegpt_layer  # noqa: E402
from .hybrid import HybridResult, hybrid  # noqa: E402

