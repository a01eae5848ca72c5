"""Hybrid compression in one call: neuron pruning (smaller dense layers), then 2:4 or block
sparsity, then int8 weights, each step's structure shaped for the kernel that will run it, with the
weight bytes and the error against the dense model reported after every step.

Steps (each optional), in place on the model:

1. **neurons** -- every consecutive ``nn.Linear`` pair with only elementwise modules between them
   (:func:`sparsekit.prune.sequential_pairs`, or your `pairs`) keeps its best hidden neurons
   (:func:`sparsekit.prune.shrink_pairs`); the kept count is rounded to a multiple of `multiple`
   (16: the kernels' tile). Scores: ``"activation"`` neuron scores (calibration) for the data-aware
   methods, ``"weight"`` for magnitude. With ``method="second_order"`` the second layer of each pair
   is then refitted by least squares to the calibration outputs it had before the cut (its bias
   included): ``[W_b, b] <- argmin ||[W_b, b] [x; 1] - [W'_b, b'] [x_kept; 1]||`` (damped).
2. **sparsity** -- ``"2:4"`` (along the reduction dimension, what the 2:4 kernels read) or blocks of
   the kernel's tile (``"block"`` with ``tile=(16, 16)``, or an explicit ``"RxC"``), chosen by the
   method: second-order (:func:`sparsekit.prune.second_order.sparsegpt`, sequential, with weight
   reconstruction), activation-aware (Wanda) or magnitude.
3. **int8** -- symmetric per-channel int8 weights: second-order runs GPTQ-style quantization with the
   masks held (rounding errors compensated), the others round to nearest. 2:4 layers become
   ``Sparse24Int8Weight``; block layers ``Int8Weight`` (sparsekit has no BSR+int8 format).

After each step the pruned layers are packed in their format (``nbytes`` of the buffers is the
weight bytes; layers outside `filter_fn` count as dense) and the model runs on `eval_batches` with
those layers' outputs computed by the packed format (``format.matmul``: the kernels, int8
activations per token included), giving ``rel_error = ||f(x) - f_dense(x)|| / ||f_dense(x)||``
against the dense model's outputs (stored before the first step) and, with `metric_fn`, a metric.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..formats import BSRWeight, Int8Weight, Sparse24Int8Weight, Sparse24Weight, quantize_rows
from ..formats.base import SparseFormat
from .batches import as_batch, main_output, tokens
from .calibrate import Calibration
from .masks import parse_pattern
from .neurons import sequential_pairs, shrink_pairs
from .second_order import collect_grams, sparsegpt

__all__ = ["hybrid", "HybridResult", "round_channels", "refit_after_shrink", "METHODS"]

METHODS = ("second_order", "activation", "magnitude")
_METHOD_ALIASES = {"sparsegpt": "second_order", "obs": "second_order", "second-order": "second_order",
                   "wanda": "activation", "activation-aware": "activation"}


@dataclass
class HybridResult:
    """What :func:`hybrid` did. ``steps``: one dict per step (``step``, ``formats`` {fqn: format},
    ``shapes`` {fqn: [out, in]}, ``weight_bytes`` (all nn.Linear weights), ``layer_bytes``,
    ``rel_error``, ``metric``, ``seconds``, ``info``); ``masks``: the final keep-masks; ``packed``:
    the final packed weights {fqn: SparseFormat}; ``kept``: the neurons kept per pair {fqn_a: indices}."""

    steps: List[Dict[str, Any]] = field(default_factory=list)
    masks: Dict[str, torch.Tensor] = field(default_factory=dict)
    packed: Dict[str, SparseFormat] = field(default_factory=dict)
    kept: Dict[str, torch.Tensor] = field(default_factory=dict)

    def markdown(self, metric_name: str = "metric") -> str:
        """The steps as a markdown table."""
        d = self.steps[0]["weight_bytes"] if self.steps else 0
        lines = [f"| step | formats | weight bytes | vs dense | rel. output error | {metric_name} |",
                 "|---|---|---:|---:|---:|---:|"]
        for s in self.steps:
            fm = ", ".join(sorted(set(s["formats"].values())))
            err = "-" if s["rel_error"] is None else f"{s['rel_error']:.4f}"
            met = "-" if s["metric"] is None else f"{s['metric']:.4f}"
            lines.append(f"| {s['step']} | {fm} | {s['weight_bytes']:,} | {s['weight_bytes'] / d:.3f}x | {err} "
                         f"| {met} |")
        return "\n".join(lines)


def round_channels(n: float, hidden: int, multiple: int = 16) -> int:
    """``n`` neurons rounded to the nearest multiple of `multiple`, at least `multiple` and at most
    `hidden` (rounded down to a multiple when it does not divide); `hidden` itself when it is not
    larger than `multiple`."""
    if multiple < 1:
        raise ValueError(f"expected multiple >= 1, got {multiple}")
    if hidden <= multiple:
        return hidden
    k = int(round(n / multiple)) * multiple
    if k > hidden:
        k = (hidden // multiple) * multiple
    return max(k, multiple)


@torch.no_grad()
def refit_after_shrink(second: nn.Linear, kept: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor],
                       gram: torch.Tensor, total: torch.Tensor, n_tokens: int, percdamp: float = 0.01) -> None:
    """Refits `second` (already cut to the input columns `kept`) in place, by damped least squares,
    so that its outputs on the calibration inputs match those of the uncut layer (weight `W`,
    ``(N, K)``, and bias `b`). `gram` (``K x K``, the sum of ``x xᵀ``), `total` (the sum of ``x``)
    and `n_tokens` describe the uncut layer's inputs. The bias is refitted too (it absorbs the mean
    contribution of the removed neurons); a layer without bias stays without."""
    dev = second.weight.device
    K = W.shape[1]
    G = torch.zeros(K + 1, K + 1, dtype=torch.float64, device=dev)
    G[:K, :K] = gram.to(dev, torch.float64)
    G[:K, K] = G[K, :K] = total.to(dev, torch.float64)
    G[K, K] = float(n_tokens)
    bias = b if b is not None else W.new_zeros(W.shape[0])
    Wf = torch.cat([W.to(dev, torch.float64), bias.to(dev, torch.float64)[:, None]], 1)
    if b is None:  # no bias: no constant input
        G, Wf, idx = G[:K, :K], Wf[:, :K], kept.to(dev)
    else:
        idx = torch.cat([kept.to(dev), torch.tensor([K], device=dev)])
    A = G[idx][:, idx]
    B = G[idx]  # rows: kept inputs (+ the constant); columns: every original input
    lam = percdamp * float(torch.diagonal(A).mean()) if A.numel() else 0.0
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=dev)
    for _ in range(9):
        L, bad = torch.linalg.cholesky_ex(A + lam * eye)
        if int(bad) == 0:
            break
        lam = max(lam * 10, 1e-6 * float(torch.diagonal(A).mean().clamp_min(1e-30)))
    Z = torch.cholesky_solve(B @ Wf.T, L).T  # (N, |kept| (+1))
    second.weight.copy_(Z[:, :len(kept)].to(second.weight.dtype))
    if b is not None:
        second.bias.copy_(Z[:, len(kept)].to(second.bias.dtype))


def _dense_bytes(m: nn.Linear) -> int:
    return m.weight.numel() * m.weight.element_size()


def _linears(model: nn.Module) -> Dict[str, nn.Linear]:
    return {f: m for f, m in model.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def _outputs(model: nn.Module, batches: Sequence[Any], packed: Optional[Dict[str, SparseFormat]] = None,
             metric_fn: Optional[Callable[[nn.Module], float]] = None):
    """Model outputs on `batches` (and `metric_fn(model)`) with the layers in `packed` computed by
    their packed format."""
    mods = dict(model.named_modules())
    handles = []
    for fqn, pk in (packed or {}).items():
        def hook(mod, args, out, pk=pk):
            return pk.matmul(args[0], mod.bias)
        handles.append(mods[fqn].register_forward_hook(hook))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        dev = next(iter(model.parameters())).device
        outs = []
        for batch in batches:  # real tokens only (padding of dict batches left out)
            b = as_batch(batch, dev, "an evaluation batch")
            outs.append(tokens(main_output(b.forward(model)).detach(), b.mask, use_current=False))
        met = metric_fn(model) if metric_fn is not None else None
    finally:
        for h in handles:
            h.remove()
        for m, t in modes:
            m.training = t
    return outs, met


def _rel(outs: List[torch.Tensor], ref: List[torch.Tensor]) -> float:
    num = sum(float((o.float() - r.float()).square().sum()) for o, r in zip(outs, ref))
    den = sum(float(r.float().square().sum()) for r in ref)
    return (num / den) ** 0.5 if den > 0 else 0.0


def hybrid(
    model: nn.Module,
    calib_batches: Iterable[Any],
    eval_batches: Optional[Iterable[Any]] = None,
    *,
    neurons: Union[float, int, Dict[str, Union[float, int]], None] = 0.75,
    pairs: Optional[Sequence[Tuple[str, str]]] = None,
    multiple: int = 16,
    pattern: Optional[str] = "2:4",
    sparsity: Optional[float] = None,
    tile: Tuple[int, int] = (16, 16),
    int8: bool = True,
    method: str = "second_order",
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    percdamp: float = 0.01,
    blocksize: int = 128,
    metric_fn: Optional[Callable[[nn.Module], float]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> HybridResult:
    """Neurons -> 2:4 or blocks -> int8 on `model`, in place (see the module doc).

    calib_batches: calibration batches (tensors, ``(input, target, ...)`` or dicts run as
      ``model(**batch)``; :mod:`sparsekit.prune.batches`); iterated several times.
    eval_batches: held-out batches for the error after each step (None: no error is measured).
    neurons: the kept fraction (float) or count (int) of hidden neurons per pair, or ``{fqn_a: ...}``;
      rounded with :func:`round_channels`; None skips the step.
    pairs: the ``(fqn_a, fqn_b)`` pairs to shrink (default: :func:`sequential_pairs`).
    pattern: ``"2:4"``, ``"block"`` (blocks of `tile`), ``"RxC"`` or None (no sparsity step).
    sparsity: the block sparsity (needed for blocks; 2:4 fixes 50%).
    int8: add the int8 step.
    method: ``"second_order"`` (``"sparsegpt"``), ``"activation"`` (``"wanda"``) or ``"magnitude"``.
    filter_fn: the layers that the sparsity and int8 steps apply to (default: every nn.Linear).
    metric_fn: ``metric_fn(model) -> float`` (e.g. held-out accuracy), run after every step with the
      packed formats in the forward.
    """
    meth = _METHOD_ALIASES.get(method, method)
    if meth not in METHODS:
        raise ValueError(f"hybrid: unknown method {method!r}; expected one of {list(METHODS)}")
    calib = list(calib_batches)
    if not calib:
        raise ValueError("hybrid: no calibration batches were given")
    evalb = list(eval_batches) if eval_batches is not None else None
    p = None
    if pattern is not None:
        p = parse_pattern(f"{tile[0]}x{tile[1]}" if pattern == "block" else pattern)
        if p.kind == "nm":
            sparsity = None
        elif p.kind == "block":
            tile = (p.r, p.c)
            if sparsity is None:
                raise ValueError(f"hybrid: block pattern {p.name} needs a sparsity")
        else:
            raise ValueError(f"hybrid: expected pattern '2:4' (N:M), 'block' or 'RxC', got {pattern!r}")
    say = log or (lambda s: None)
    res = HybridResult()
    ref = _outputs(model, evalb)[0] if evalb is not None else None

    def record(step: str, packed: Dict[str, SparseFormat], t0: float, info: Dict[str, Any]):
        lin = _linears(model)
        lb = {f: (packed[f].nbytes if f in packed else _dense_bytes(m)) for f, m in lin.items()}
        fm = {f: (packed[f].name if f in packed else "dense") for f in lin}
        err, met = None, None
        if evalb is not None:
            outs, met = _outputs(model, evalb, packed, metric_fn)
            err = _rel(outs, ref)
        elif metric_fn is not None:
            met = _outputs(model, [], packed, metric_fn)[1]
        s = dict(step=step, formats=fm, shapes={f: list(m.weight.shape) for f, m in lin.items()},
                 weight_bytes=sum(lb.values()), layer_bytes=lb, rel_error=err, metric=met,
                 seconds=time.perf_counter() - t0, info=info)
        res.steps.append(s)
        say(f"hybrid {step}: {s['weight_bytes']:,} weight bytes, rel. error "
            f"{'-' if err is None else f'{err:.4f}'}, metric {'-' if met is None else f'{met:.4f}'}")

    record("dense", {}, time.perf_counter(), {})

    # ---- 1. neurons
    if neurons is not None:
        t0 = time.perf_counter()
        prs = list(pairs) if pairs is not None else sequential_pairs(model)
        if not prs:
            raise ValueError("hybrid: found no nn.Linear pair to shrink; pass pairs=[(fqn_a, fqn_b)] or neurons=None")
        info: Dict[str, Any] = {}
        for fa, fb in prs:
            a, b = model.get_submodule(fa), model.get_submodule(fb)
            k = neurons[fa] if isinstance(neurons, dict) else neurons
            want = k * a.out_features if isinstance(k, float) else k
            count = round_channels(want, a.out_features, multiple)
            col = None
            if meth != "magnitude":
                col = collect_grams(model, {fb: b}, calib)
            W_b, b_b = b.weight.detach().clone(), (b.bias.detach().clone() if b.bias is not None else None)
            cal = Calibration({fb: col.stats(fb)}) if col is not None else None
            _, kept = shrink_pairs(model, [(fa, fb)], {fa: count}, "weight" if cal is None else "activation", cal,
                                   return_kept=True)
            kept = kept[fa]
            res.kept[fa] = kept
            if meth == "second_order":
                refit_after_shrink(model.get_submodule(fb), kept, W_b, b_b, col.gram[fb], col.sum[fb],
                                   col.n_tokens[fb], percdamp)
            info[fa] = dict(hidden=a.out_features, kept=count)
        record("neurons", {}, t0, info)

    # ---- 2. sparsity
    layers = {f: m for f, m in _linears(model).items() if filter_fn is None or filter_fn(m, f)}
    masks: Dict[str, torch.Tensor] = {f: torch.ones_like(m.weight, dtype=torch.bool) for f, m in layers.items()}
    if p is not None:
        t0 = time.perf_counter()
        flt = lambda m, f: f in layers  # noqa: E731
        if meth == "second_order":
            masks, rep = sparsegpt(model, calib, sparsity, p, flt, sequential=True, percdamp=percdamp,
                                   blocksize=blocksize, return_report=True)
            info = {f: {k: v for k, v in r.items() if k in ("sparsity", "rel_error_calib", "percdamp_used",
                                                             "dead_inputs", "note")} for f, r in rep["layers"].items()}
        else:
            from . import prune
            masks = prune(model, sparsity, p, criterion=meth, filter_fn=flt,
                          calib=calib if meth == "activation" else None)
            info = {}
        packed = {f: (Sparse24Weight.from_dense(layers[f].weight.detach(), masks[f]) if p.kind == "nm"
                      else BSRWeight.from_dense(layers[f].weight.detach(), masks[f], blocksize=tile)) for f in masks}
        record(p.name if p.kind == "nm" else f"{p.name} blocks", packed, t0, info)
        res.packed = packed

    # ---- 3. int8
    if int8:
        t0 = time.perf_counter()
        if meth == "second_order":
            sparsegpt(model, calib, masks=masks, quantize_int8=True, percdamp=percdamp, blocksize=blocksize,
                      filter_fn=lambda m, f: f in layers)
        else:
            with torch.no_grad():
                for f, m in layers.items():
                    w = torch.where(masks[f], m.weight.detach().float(), torch.zeros((), device=m.weight.device))
                    q, s = quantize_rows(w)
                    m.weight.copy_((q.float() * s[:, None]).to(m.weight.dtype))
        packed, exact = {}, {}
        for f, m in layers.items():
            w = m.weight.detach()
            pk = (Sparse24Int8Weight.from_dense(w, masks[f]) if p is not None and p.kind == "nm"
                  else Int8Weight.from_dense(w))
            packed[f] = pk
            exact[f] = bool(torch.equal(pk.to_dense().to(w.dtype), w * masks[f]))
        record("int8", packed, t0, {"packed_exactly": exact})
        res.packed = packed
    res.masks = masks
    return res
