"""Second-order pruning with weight reconstruction (OBS, applied layer by layer as SparseGPT does),
optionally jointly with int8 weight quantization (GPTQ's quantize-then-compensate).

The objective
-------------
For an ``nn.Linear`` with weight ``W`` (N x K) and calibration inputs ``X`` (T tokens x K), changing
the weight by ``dW`` changes the layer's output on the calibration data by ``X dWᵀ``, of squared
norm ``tr(dW H dWᵀ)`` with ``H = XᵀX`` (K x K), the input Gram matrix. Every row has the same ``H``.
Optimal Brain Surgeon removes weight ``q`` of a row and moves the others to compensate:

    w  <-  w - (w_q / [H⁻¹]_qq) · H⁻¹[:, q]          (output error grows by w_q² / (2 [H⁻¹]_qq))

(:func:`obs_update` is this closed form). SparseGPT applies it to the columns left to right,
freezing a column once it is done: with the upper Cholesky factor ``U`` of ``H⁻¹`` (``H⁻¹ = UᵀU``),
row ``q`` of ``U`` is ``(H_{q:,q:})⁻¹[0, :] / sqrt((H_{q:,q:})⁻¹[0, 0])``, the inverse Gram of the
columns not yet frozen, so pruning (or quantizing) column ``q`` to ``ŵ_q`` and applying
``W[:, q:] -= ((w_q - ŵ_q) / U_qq) · U[q, q:]`` is exactly the OBS update of that sub-problem, for all
rows at once. The updates of the columns after the current window of ``blocksize`` columns are
batched (lazy): ``W[:, i2:] -= Err · U[i1:i2, i2:]``.

Which weights go (the saliency ``w² / U_jj²``):

* ``unstructured``, ``selection="adaptive"`` (default): a ranking of the whole layer on the initial
  saliencies says how many weights each window of ``mask_blocksize`` columns loses (so the layer
  loses exactly ``round(sparsity * N * K)``, spread over the columns as the weights' importance
  is); which ones go is chosen again, when the window is reached, on the weights updated so far.
  ``"row"``: the same per row (each row loses exactly ``round(sparsity * K)``). ``"uniform"``:
  SparseGPT's own rule, the same fraction in every window of `blocksize` columns. ``"layer"``:
  chosen once on the initial saliencies, no re-selection. On the MLPs of
  bench/prune_second_order.py, "adaptive" with windows of 8 columns gives 1.1-4.7x lower held-out
  layer error than "uniform" with 128 (the budget per window follows where the important inputs
  are; small windows follow the updates).
* ``N:M`` (``2:4``) along the input (reduction) dimension: each group of M columns, when it is
  reached, keeps the N highest saliencies of the already-updated weights of each row.
* ``RxC`` blocks, ``rows``, ``columns``: whole tiles, by mean saliency over the tile, chosen once for
  the layer (``round(sparsity * n_tiles)`` tiles, as :func:`sparsekit.prune.masks.block`).
* ``mask=...``: a fixed keep-mask (from any criterion); only the reconstruction runs.

Ties are broken as in :mod:`sparsekit.prune.masks`: at equal saliency the lower index goes first.

int8 (``quantize_int8=True``)
-----------------------------
A first sweep without rounding gives the float result; each row's int8 grid is
``scale = max|w_row| / 127`` over its kept weights (the weights before pruning would not do:
compensation moves weights beyond their range, which would then clip). A second sweep rounds each
kept weight (half to even) when its column is reached and compensates the rounding error like a
pruned weight. The row's largest kept weight of the float result (the anchor) is kept and set to
``±127 · scale``, so that the output is on exactly the grid that
:func:`sparsekit.formats.quantize_rows` computes: ``Sparse24Int8Weight.from_dense(w, mask)`` (2:4)
or ``Int8Weight.from_dense(w)`` packs it without a further rounding (``info["qweight"]``,
``info["scale"]`` are those buffers).

Numerical safety
----------------
``H`` is symmetrized; an input that was zero on every calibration token (a dead input: zero
diagonal) is decoupled (its diagonal set to the mean of the others), its weights are pruned first
(they cost nothing on the calibration data) and the kept ones are left as they are. The damping
``λ = percdamp · mean(diag H)`` is added to the diagonal; when a Cholesky factorization still fails
(fewer tokens than inputs, collinear inputs, float32 round-off), ``λ`` is raised tenfold and the
retry is counted. ``info`` reports the damping, the retries, the dead inputs, a lower bound of the
damped condition number and whether ``H`` is rank-deficient; the output weight is always finite.
A Gram matrix with NaN or Inf (non-finite calibration inputs) is a ``ValueError``.

Cost
----
:func:`sparsegpt_layer`: the inverse Cholesky O(K³) plus the sweep O(N K²) (the same order as one
``N x K`` by ``K x K`` matmul); memory: ``H``, ``U`` (K x K each) and two copies of ``W``.
:func:`sparsegpt` in sequential mode: one forward pass over the calibration batches per pruned
layer (each pass stops right after the layer it serves, so on a chain of L layers the passes cost
about L/2 full forwards), plus one forward of the first batch to find the order; memory beyond the
model: one ``K x K`` Gram matrix, no stored activations, no copy of the model.
"""
from __future__ import annotations

import itertools
import time
import warnings
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from . import masks as _masks
from ._guard import check_plain_weight
from .batches import as_batch, tokens
from .calibrate import LayerStats
from .masks import Pattern, parse_pattern

__all__ = ["GramCollector", "collect_grams", "run_batches", "sparsegpt_layer", "sparsegpt", "obs_update",
           "damped_inverse_cholesky", "gram_error", "SELECTIONS"]

SELECTIONS = ("adaptive", "row", "layer", "uniform")
FilterFn = Callable[[nn.Module, str], bool]


# ----------------------------------------------------------------------------- Gram matrices


class GramCollector:
    """Forward pre-hooks that add ``XᵀX`` of each hooked ``nn.Linear``'s inputs to a running sum.

    ``gram[fqn]`` is the sum over every token seen (shape ``(in_features, in_features)``, in `dtype`,
    on the device of the layer's inputs); ``n_tokens[fqn]`` counts the tokens (all leading dims of
    the input flattened; padding tokens of dict batches, ``attention_mask == 0``, are left out: see
    :mod:`sparsekit.prune.batches`) and ``sum[fqn]`` is the sum of the inputs (``(in_features,)``, for a
    bias term). Nothing else is kept. Use as a context manager or call :meth:`remove`.

    stop_after: with an int ``c``, raises an internal exception after the ``c``-th call of a hooked
      layer within one forward, which :func:`run_batches` catches: the rest of the model is not
      run (used by the sequential mode of :func:`sparsegpt`, one layer at a time).
    """

    def __init__(self, layers: Mapping[str, nn.Linear], dtype: torch.dtype = torch.float32,
                 stop_after: Optional[int] = None):
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"GramCollector: expected dtype float32 or float64, got {dtype}")
        self.dtype = dtype
        self.layers = dict(layers)
        self.gram: Dict[str, Optional[torch.Tensor]] = {fqn: None for fqn in self.layers}
        self.sum: Dict[str, Optional[torch.Tensor]] = {fqn: None for fqn in self.layers}
        self.n_tokens: Dict[str, int] = {fqn: 0 for fqn in self.layers}
        self.stop_after = stop_after
        self._calls = 0
        self.handles = [m.register_forward_pre_hook(self._hook(fqn)) for fqn, m in self.layers.items()]

    def _hook(self, fqn: str):
        def hook(mod, args):
            self.add(fqn, tokens(args[0]))  # without the padding tokens of a dict batch (attention_mask 0)
            if self.stop_after is not None:
                self._calls += 1
                if self._calls >= self.stop_after:
                    raise _StopForward()
        return hook

    def new_forward(self) -> None:
        """Resets the per-forward call count (for `stop_after`)."""
        self._calls = 0

    @torch.no_grad()
    def add(self, fqn: str, x: torch.Tensor) -> None:
        """Adds one input batch (any leading dims, last dim = in_features) of layer `fqn`."""
        K = self.layers[fqn].in_features
        if x.shape[-1] != K:
            raise ValueError(f"GramCollector: expected inputs of {fqn!r} with last dim {K}, got shape {tuple(x.shape)}")
        x2 = x.detach().reshape(-1, K).to(self.dtype)
        g = x2.T @ x2
        s = x2.sum(0)
        if self.gram[fqn] is None:
            self.gram[fqn], self.sum[fqn] = g, s
        else:
            self.gram[fqn].add_(g.to(self.gram[fqn].device))
            self.sum[fqn].add_(s.to(self.sum[fqn].device))
        self.n_tokens[fqn] += x2.shape[0]

    def H(self, fqn: str) -> torch.Tensor:
        """The mean Gram matrix ``XᵀX / n_tokens`` of layer `fqn`."""
        g = self.gram.get(fqn)
        if g is None or self.n_tokens[fqn] == 0:
            raise ValueError(f"GramCollector: no inputs were seen for layer {fqn!r}")
        return g / self.n_tokens[fqn]

    def stats(self, fqn: str) -> LayerStats:
        """The activation statistics :mod:`.calibrate` gathers, from the Gram diagonal (for the
        activation-aware criterion and neuron scores)."""
        g = self.gram.get(fqn)
        if g is None:
            raise ValueError(f"GramCollector: no inputs were seen for layer {fqn!r}")
        return LayerStats(self.layers[fqn].in_features, act_sq_sum=torch.diagonal(g).double().clone(),
                          n_tokens=self.n_tokens[fqn])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> "GramCollector":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class _StopForward(BaseException):
    """Raised by a hook to end a forward pass early; BaseException so that a model's own
    ``except Exception`` does not swallow it."""


def run_batches(model: nn.Module, batches: Iterable[Any], collector: Optional[GramCollector] = None) -> int:
    """Runs every batch through `model` (no grad); a batch is a tensor, ``(input, target, ...)`` or a
    dict of model inputs (``model(**batch)``; :mod:`sparsekit.prune.batches`), moved to the device of
    the model's first parameter. Returns the number of batches."""
    device = next(iter(model.parameters())).device
    n = 0
    with torch.no_grad():
        for batch in batches:
            b = as_batch(batch, device, "a calibration batch")
            if collector is not None:
                collector.new_forward()
            try:
                b.forward(model)
            except _StopForward:
                pass
            n += 1
    return n


# ----------------------------------------------------------------------------- closed forms and helpers


def obs_update(w: torch.Tensor, Hinv: torch.Tensor, q: int) -> torch.Tensor:
    """The closed-form OBS update that removes weight ``q`` of each row of `w` (``(..., K)``) with
    inverse Gram `Hinv` (K x K): ``w - (w[..., q] / Hinv[q, q]) · Hinv[:, q]``. Weight q becomes 0."""
    return w - (w[..., q:q + 1] / Hinv[q, q]) * Hinv[:, q]


def gram_error(weight: torch.Tensor, new_weight: torch.Tensor, H: torch.Tensor) -> float:
    """``||X (W' - W)ᵀ|| / ||X Wᵀ||`` on the inputs whose Gram matrix is ``H = XᵀX`` (no bias),
    computed from ``H`` alone: ``sqrt(tr(dW H dWᵀ) / tr(W H Wᵀ))``."""
    dt = torch.float64 if torch.float64 in (weight.dtype, new_weight.dtype, H.dtype) else torch.float32
    Hm = H.to(weight.device, dt)
    W = weight.detach().to(dt)
    dW = new_weight.detach().to(weight.device, dt) - W
    num = float(((dW @ Hm) * dW).sum().clamp_min(0))
    den = float(((W @ Hm) * W).sum().clamp_min(0))
    return (num / den) ** 0.5 if den > 0 else (0.0 if num == 0 else float("inf"))


def damped_inverse_cholesky(H: torch.Tensor, percdamp: float = 0.01, max_retries: int = 8
                            ) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """``(U, info)``: the upper Cholesky factor of ``(H + λI)⁻¹`` (``UᵀU = (H + λI)⁻¹``) with
    ``λ = percdamp · mean(diag H)``, raised tenfold (at least to ``1e-6 · mean(diag H)``) until both
    factorizations succeed and the Cholesky pivots of ``H + λI`` lie within a factor ``1/eps`` of each
    other (beyond that the factors hold round-off rather than ``H``). ``info``: ``damp`` (λ),
    ``percdamp_used`` (λ / mean diag), ``retries``, ``cond_lower_bound`` (of ``H + λI``, from the
    Cholesky pivots)."""
    if percdamp < 0:
        raise ValueError(f"expected percdamp >= 0, got {percdamp}")
    K = H.shape[0]
    mean_diag = float(torch.diagonal(H).mean()) if K else 1.0
    if not mean_diag > 0:
        mean_diag = 1.0
    damp = percdamp * mean_diag
    idx = torch.arange(K, device=H.device)
    max_cond = 1.0 / torch.finfo(H.dtype).eps
    for attempt in range(max_retries + 1):
        Hd = H.clone()
        Hd[idx, idx] += damp
        L, bad = torch.linalg.cholesky_ex(Hd)
        if int(bad) == 0:
            # (H + λI)⁻¹ = L⁻ᵀL⁻¹ by solving against I: torch.cholesky_inverse computes the same but is 10x
            # slower on the CPU in float32 (7 s against 0.7 s for 1536 x 1536 here), equally accurate
            inv = torch.cholesky_solve(torch.eye(K, dtype=L.dtype, device=L.device), L)
            U, bad2 = torch.linalg.cholesky_ex(inv, upper=True)
            dU = torch.diagonal(U)
            piv = torch.diagonal(L).square()
            cond_lb = float(piv.max() / piv.min()) if K else 1.0
            # pivots further apart than 1/eps: the factorization holds round-off only, not H
            if int(bad2) == 0 and bool(torch.isfinite(U).all()) and bool((dU > 0).all()) and cond_lb < max_cond:
                return U, dict(damp=damp, percdamp_used=damp / mean_diag, retries=attempt, cond_lower_bound=cond_lb)
        damp = max(damp * 10.0, 1e-6 * mean_diag)
    raise FloatingPointError(f"damped_inverse_cholesky: the Gram matrix ({K}x{K}) is not positive definite even "
                             f"with damping {damp / 10:.3g} (= {damp / 10 / mean_diag:.3g} x its mean diagonal)")


def _stable_scale(s: torch.Tensor) -> torch.Tensor:
    """float32 scales that :func:`quantize_rows` recomputes unchanged from ``127 · scale``."""
    s = s.float()
    for _ in range(8):
        s2 = (s * 127.0) / 127.0
        if torch.equal(s2, s):
            break
        s = s2
    return s


def _cum(total: int, j: int, K: int) -> int:
    """round(total * j / K) in integers (half up), so that windows' counts add up to `total`."""
    return (2 * total * j + K) // (2 * K)


def _prune_lowest_rows(score: torch.Tensor, n_prune: Union[int, torch.Tensor]) -> torch.Tensor:
    """Keep-mask: in each row the `n_prune` (an int, or one count per row) lowest scores go (ties:
    lower column first)."""
    if isinstance(n_prune, int):
        return _masks._prune_lowest_per_row(score, n_prune)
    keep = torch.ones_like(score, dtype=torch.bool)
    order = torch.argsort(score, dim=1, stable=True)
    rank = torch.arange(score.shape[1], device=score.device).expand_as(score)
    keep.scatter_(1, order, rank >= n_prune.to(score.device)[:, None])
    return keep


def _prune_lowest_flat(score: torch.Tensor, n_prune: int) -> torch.Tensor:
    flat = score.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=score.device)
    if n_prune > 0:
        keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    return keep.view(score.shape)


def _tile_shape(p: Pattern, N: int, K: int) -> Tuple[int, int]:
    if p.kind in ("unstructured", "row_balanced"):
        return 1, 1
    if p.kind == "rows":
        return 1, K
    if p.kind == "columns":
        return N, 1
    return p.r, p.c


# ----------------------------------------------------------------------------- one layer


@torch.no_grad()
def sparsegpt_layer(
    weight: torch.Tensor,
    H: torch.Tensor,
    sparsity: Optional[float] = None,
    pattern: Union[str, Pattern] = "unstructured",
    blocksize: int = 128,
    percdamp: float = 0.01,
    quantize_int8: bool = False,
    *,
    mask: Optional[torch.Tensor] = None,
    selection: Optional[str] = None,
    mask_blocksize: Optional[int] = None,
    n_tokens: Optional[int] = None,
    max_retries: int = 8,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Prunes one weight with OBS reconstruction (see the module doc). Returns
    ``(new_weight, mask, info)``: the new weight (`weight`'s dtype and device; `weight` is not
    modified), the bool keep-mask (True = kept) and a dict of what happened.

    weight: ``(N, K)``, an ``nn.Linear`` weight. H: ``(K, K)``, the Gram matrix of the layer's inputs
      (a sum or a mean: only the damping is relative, and it is relative to the mean diagonal).
      Computation runs in float64 when `weight` or `H` is float64, else float32, on `weight`'s device.
    sparsity: the fraction to prune; None for N:M (else it must be ``1 - N/M``); unused with `mask`.
    pattern: ``"unstructured"``, ``"N:M"`` (``"2:4"``, along the input dimension), ``"RxC"`` blocks,
      ``"rows"``, ``"columns"``. N:M needs ``K % M == 0``, blocks must tile the weight.
    blocksize: the block of columns whose updates to the later columns are batched (lazy updates;
      rounded up to a multiple of M or of `mask_blocksize`). It changes the speed, not the result.
    mask_blocksize: unstructured: the window of columns whose mask is chosen at once, on the weights
      updated so far. Default 8 for ``"adaptive"``, 16 for ``"row"``, `blocksize` for ``"uniform"``
      (SparseGPT's 128).
    percdamp: the damping as a fraction of the mean diagonal of ``H``.
    quantize_int8: also round every kept weight to the row's int8 grid, compensating the rounding
      error (the output is exactly packable as ``Int8Weight`` / ``Sparse24Int8Weight``).
    mask: a fixed keep-mask; then no selection is made and only the reconstruction runs.
    selection: for unstructured, ``"adaptive"`` (default), ``"row"``, ``"uniform"`` or ``"layer"``
      (module doc).
    n_tokens: how many calibration tokens built ``H`` (reported; fewer than K means rank-deficient).

    ``info``: ``pattern``, ``sparsity`` (pruned fraction), ``damp``, ``percdamp_used``,
    ``retries`` (tenfold damping raises), ``cond_lower_bound``, ``dead_inputs``, ``rank_deficient``,
    ``obs_loss`` (the sum of the OBS error terms ``err²/2`` in the units of ``H``), ``rel_error_calib``
    (``||X dWᵀ|| / ||X Wᵀ||`` on the calibration inputs, from ``H``), ``seconds``, and with int8
    ``qweight`` (int8), ``scale`` (float32) and ``int8_exact`` (``quantize_rows`` of the output
    gives them back).
    """
    t0 = time.perf_counter()
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"sparsegpt_layer: expected a 2-d floating-point weight, got "
                         f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}")
    N, K = weight.shape
    if not isinstance(H, torch.Tensor) or H.shape != (K, K) or not H.is_floating_point():
        raise ValueError(f"sparsegpt_layer: expected a floating-point Gram matrix of shape ({K}, {K}) for a weight "
                         f"of shape ({N}, {K}), got {getattr(H, 'dtype', type(H).__name__)} "
                         f"{tuple(getattr(H, 'shape', ()))}")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("sparsegpt_layer: the Gram matrix contains NaN or Inf (were the calibration inputs finite?)")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("sparsegpt_layer: the weight contains NaN or Inf")
    p = parse_pattern(pattern)
    dtype = torch.float64 if torch.float64 in (weight.dtype, H.dtype) else torch.float32
    dev = weight.device

    # ---- what is pruned: validate the structure before any work
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"sparsegpt_layer: expected a bool mask of shape {tuple(weight.shape)}, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
        mode = "fixed"
        step = 1
    elif p.kind == "nm":
        if sparsity is not None and abs(_masks.check_sparsity(sparsity) - p.fixed_sparsity) > 1e-6:
            raise ValueError(f"sparsegpt_layer: pattern '{p.name}' fixes sparsity at {p.fixed_sparsity:g}; "
                             f"got sparsity={sparsity}")
        if K % p.m:
            raise ValueError(f"sparsegpt_layer: {p.name} pattern: in_features={K} of weight shape {(N, K)} is "
                             f"not a multiple of M={p.m}")
        if selection not in (None, "adaptive"):
            raise ValueError(f"sparsegpt_layer: pattern '{p.name}' chooses within each group of {p.m}; "
                             f"selection={selection!r} does not apply")
        mode, step = "nm", p.m
    else:
        if sparsity is None:
            raise ValueError(f"sparsegpt_layer: pattern '{p.name}' needs a sparsity in [0, 1], got None")
        sparsity = _masks.check_sparsity(sparsity)
        r, c = _tile_shape(p, N, K)
        if N % r or K % c:
            raise ValueError(f"sparsegpt_layer: {p.name} pattern: the {r}x{c} tile does not tile weight shape {(N, K)}")
        if p.kind == "unstructured":
            sel = selection or "adaptive"
            if sel not in SELECTIONS:
                raise ValueError(f"sparsegpt_layer: expected selection in {list(SELECTIONS)}, got {selection!r}")
            mode = {"adaptive": "window", "row": "row", "layer": "layer", "uniform": "uniform"}[sel]
        elif p.kind == "row_balanced":  # = unstructured with the per-row selection
            if selection not in (None, "row"):
                raise ValueError(f"sparsegpt_layer: pattern '{p.name}' prunes the same share of every row; "
                                 f"selection={selection!r} does not apply")
            mode = "row"
        else:
            if selection not in (None, "layer"):
                raise ValueError(f"sparsegpt_layer: pattern '{p.name}' is chosen once per layer; "
                                 f"selection={selection!r} does not apply")
            mode = "layer"
        step = 1
    if not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"sparsegpt_layer: expected a positive int blocksize, got {blocksize!r}")
    if mask_blocksize is None:
        mb = {"window": 8, "row": 16}.get(mode, blocksize)
    elif not isinstance(mask_blocksize, int) or mask_blocksize < 1:
        raise ValueError(f"sparsegpt_layer: expected a positive int mask_blocksize, got {mask_blocksize!r}")
    else:
        mb = mask_blocksize
    if mode in ("window", "row", "uniform"):
        step = mb
    bs = -(-blocksize // step) * step

    # ---- the Gram matrix: symmetrize, decouple dead inputs, damp, invert
    W0 = weight.detach().to(dev, dtype)
    Hc = H.detach().to(dev, dtype)
    Hc = (Hc + Hc.T) * 0.5
    diag = torch.diagonal(Hc)
    if bool((diag < 0).any()):
        raise ValueError("sparsegpt_layer: the Gram matrix has a negative diagonal entry; expected XᵀX")
    dead = diag == 0
    n_dead = int(dead.sum())
    if n_dead:
        live = diag[~dead]
        fill = float(live.mean()) if live.numel() else 1.0
        Hc[dead, :] = 0
        Hc[:, dead] = 0
        di = torch.nonzero(dead).reshape(-1)
        Hc[di, di] = fill
    U, dinfo = damped_inverse_cholesky(Hc, percdamp, max_retries)
    del Hc
    dU = torch.diagonal(U)

    def saliency(w: torch.Tensor, cols: slice) -> torch.Tensor:
        s = w.square() / dU[cols].square()
        return s.masked_fill(dead[cols], 0.0)  # dead inputs cost nothing on the calibration data

    rows_idx = torch.arange(N, device=dev)

    def sweep(anchor: Optional[torch.Tensor], scale: Optional[torch.Tensor]):
        """The column sweep from the initial weight: (new weight, keep, integer values or None,
        per-row error sums). With `anchor` (one column per row, -1: none) and `scale`, every kept
        weight is rounded to the row's int8 grid and the anchor is kept and set to ±127 steps."""
        W = W0.clone()
        keep = torch.ones(N, K, dtype=torch.bool, device=dev)
        if mode == "fixed":
            keep = mask.to(dev).clone()
        elif mode == "layer":
            keep = _masks.from_pattern(saliency(W, slice(None)).float(), sparsity, p)
        if mode in ("window", "row"):
            # how many weights each window loses, from a ranking of the whole layer on the initial
            # saliencies; which ones go is chosen again when the window is reached
            sc0 = saliency(W, slice(None))
            if anchor is not None:
                sc0[rows_idx[anchor >= 0], anchor[anchor >= 0]] = float("inf")
            plan = (_prune_lowest_flat(sc0, round(sparsity * N * K)) if mode == "window"
                    else _prune_lowest_rows(sc0, round(sparsity * K)))
            pruned_cols = torch.cumsum(torch.cat([(~plan).new_zeros(N, 1), ~plan], 1).long(), dim=1)  # (N, K+1)
            del sc0, plan
        total = round(sparsity * N * K) if mode == "uniform" else 0
        Qint = torch.zeros(N, K, dtype=dtype, device=dev) if anchor is not None else None
        losses = torch.zeros(N, dtype=dtype, device=dev)
        for i1 in range(0, K, bs):
            i2 = min(i1 + bs, K)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            U1 = U[i1:i2, i1:i2]
            for i in range(i2 - i1):
                j = i1 + i
                g = mb if mode in ("window", "row", "uniform") else (p.m if mode == "nm" else 0)
                if g and i % g == 0:  # the next window's (group's) mask, on the weights updated so far
                    j2 = min(j + g, i2)
                    sc = saliency(W1[:, i:i + j2 - j], slice(j, j2))
                    if anchor is not None:
                        hit = (anchor >= j) & (anchor < j2)
                        sc[rows_idx[hit], anchor[hit] - j] = float("inf")
                    if mode == "nm":
                        keep[:, j:j2] = _prune_lowest_rows(sc, p.m - p.n)
                    elif mode == "uniform":
                        keep[:, j:j2] = _prune_lowest_flat(sc, _cum(total, j2, K) - _cum(total, j, K))
                    elif mode == "window":
                        keep[:, j:j2] = _prune_lowest_flat(sc, int((pruned_cols[:, j2] - pruned_cols[:, j]).sum()))
                    else:
                        keep[:, j:j2] = _prune_lowest_rows(sc, pruned_cols[:, j2] - pruned_cols[:, j])
                w = W1[:, i]
                kc = keep[:, j]
                q = torch.where(kc, w, torch.zeros((), dtype=dtype, device=dev))
                if anchor is not None:
                    qi = torch.round(q / scale).clamp_(-127, 127)
                    at = (anchor == j) & kc
                    if bool(at.any()):
                        qi[at] = torch.where(w[at] < 0, -127.0, 127.0).to(dtype)
                    Qint[:, j] = qi
                    q = qi * scale
                Q1[:, i] = q
                err = (w - q) / U1[i, i]
                losses += err.square()
                W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
                Err1[:, i] = err
            W[:, i1:i2] = Q1
            if i2 < K:
                W[:, i2:] -= Err1 @ U[i1:i2, i2:]
        return W, keep, Qint, losses

    W, keep, Qint, losses = sweep(None, None)
    if quantize_int8:
        # the int8 grid of each row: from the float result (compensation moves weights, so the dense
        # weight's range would clip); its largest kept weight is the anchor, kept and set to ±127 steps
        # so that the output is on exactly the grid quantize_rows computes. Then the sweep again,
        # rounding every kept weight and compensating the rounding error too.
        a = torch.where(keep, W.float().abs(), torch.zeros((), device=dev))
        amax, anchor = a.max(dim=1) if K else (a.new_zeros(N), torch.zeros(N, dtype=torch.long, device=dev))
        has = amax > 0
        anchor = torch.where(has, anchor, torch.full_like(anchor, -1))
        scale32 = _stable_scale(torch.where(has, amax / 127.0, torch.ones_like(amax)))
        W, keep, Qint, losses = sweep(anchor, scale32.to(dtype))

    info: Dict[str, Any] = dict(pattern="fixed mask" if mode == "fixed" else p.name,
                                selection={"fixed": "fixed", "nm": "group", "window": "adaptive", "row": "row",
                                           "layer": "layer", "uniform": "uniform"}[mode],
                                sparsity=float((~keep).sum()) / max(keep.numel(), 1),
                                dead_inputs=n_dead, n_tokens=n_tokens,
                                rank_deficient=bool(n_tokens is not None and n_tokens < K), **dinfo)
    if quantize_int8:
        scale32 = torch.where((Qint != 0).any(dim=1), scale32, torch.ones_like(scale32))  # all-zero row: scale 1
        out32 = Qint.float() * scale32[:, None]
        q8 = Qint.to(torch.int8)
        from ..formats.int8 import quantize_rows

        rq, rs = quantize_rows(out32)
        info.update(qweight=q8, scale=scale32, int8_exact=bool(torch.equal(rq, q8) and torch.equal(rs, scale32)))
        out = out32.to(weight.dtype)
    else:
        out = W.to(weight.dtype)
    if not bool(torch.isfinite(out).all()):  # cannot happen after a successful factorization; never hand back NaN
        raise FloatingPointError("sparsegpt_layer: the reconstruction produced a non-finite weight")
    info["obs_loss"] = float(losses.sum()) * 0.5
    info["rel_error_calib"] = gram_error(W0, out.to(dtype), H)
    notes = []
    if n_dead:
        notes.append(f"{n_dead} dead input(s) (zero on every calibration token)")
    if info["rank_deficient"]:
        notes.append(f"rank-deficient Gram ({n_tokens} tokens < {K} inputs)")
    if dinfo["retries"]:
        notes.append(f"damping raised {dinfo['retries']}x to {dinfo['percdamp_used']:.3g} of the mean diagonal")
    info["note"] = "; ".join(notes)
    info["seconds"] = time.perf_counter() - t0
    return out, keep, info


# ----------------------------------------------------------------------------- a whole model


def _forward_order(model: nn.Module, layers: Mapping[str, nn.Linear], batch: Any) -> Tuple[List[str], Counter]:
    """The layers in the order they are first called on `batch`, and their call counts."""
    calls: Counter = Counter()
    order: List[str] = []

    def mk(fqn):
        def hook(mod, args):
            if fqn not in calls:
                order.append(fqn)
            calls[fqn] += 1
        return hook

    handles = [m.register_forward_pre_hook(mk(fqn)) for fqn, m in layers.items()]
    try:
        run_batches(model, [batch])
    finally:
        for h in handles:
            h.remove()
    return order, calls


def collect_grams(model: nn.Module, layers: Mapping[str, nn.Linear], batches: Iterable[Any],
                  dtype: torch.dtype = torch.float32, early_exit: bool = True) -> GramCollector:
    """Runs `batches` through `model` (eval mode, no grad) and returns a (detached) GramCollector
    holding the Gram matrices of `layers`. With `early_exit`, when every one of them is called once
    per forward, each forward stops after the last of them (one extra forward of the first batch
    finds that out)."""
    batches = batches if isinstance(batches, (list, tuple)) else list(batches)
    if not batches:
        raise ValueError("collect_grams: no batches were given")
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        stop = None
        if early_exit:
            _, calls = _forward_order(model, layers, batches[0])
            if all(calls[f] == 1 for f in layers):
                stop = len(layers)
        with GramCollector(layers, dtype, stop_after=stop) as col:
            run_batches(model, batches, col)
    finally:
        for m, t in modes:
            m.training = t
    return col


_REPORT_DROP = ("qweight", "scale")


def sparsegpt(
    model: nn.Module,
    batches: Iterable[Any],
    sparsity: Optional[float] = None,
    pattern: Union[str, Pattern] = "unstructured",
    filter_fn: Optional[FilterFn] = None,
    sequential: bool = True,
    quantize_int8: bool = False,
    percdamp: float = 0.01,
    *,
    blocksize: int = 128,
    selection: Optional[str] = None,
    mask_blocksize: Optional[int] = None,
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    gram_dtype: torch.dtype = torch.float32,
    max_batches: Optional[int] = None,
    early_exit: bool = True,
    return_report: bool = False,
    log: Optional[Callable[[str], None]] = None,
):
    """One-shot second-order pruning (SparseGPT) of every ``nn.Linear`` that ``filter_fn(module, fqn)``
    accepts; the weights are updated in place. Returns ``{fqn: bool mask}`` (True = kept), or
    ``(masks, report)`` with ``return_report=True``.

    batches: calibration batches (tensors, ``(input, target, ...)`` or dicts run as ``model(**batch)``,
      whose padding tokens, ``attention_mask == 0``, stay out of the Gram matrices), moved to the
      device of the model's first parameter; the sequential mode iterates them once per layer, so a one-shot
      iterator is first turned into a list.
    sequential: True -- layer after layer in forward order, each layer's Gram matrix gathered by
      running the batches through the model whose earlier layers are already pruned (the pass stops
      right after that layer; memory: one Gram matrix, no activations stored). False -- one pass
      through the dense model gathers every layer's Gram matrix at once (memory: all of them).
    sparsity, pattern, blocksize, percdamp, quantize_int8, selection, mask_blocksize: see
      :func:`sparsegpt_layer`.
    masks: ``{fqn: keep-mask}`` fixed masks (any criterion): only those layers (that `filter_fn` also
      accepts) are reconstructed (and quantized with ``quantize_int8``); `sparsity` and `pattern`
      are not used. The weights must still hold their dense values (``sparsekit.prune(...,
      apply=False)``): weights already zeroed leave nothing to compensate.
    gram_dtype: float32 (default) or float64 running sums.
    early_exit: stop each sequential pass after the layer it serves (layers called more than once
      per forward always run the whole forward).
    report: ``{"layers": {fqn: info without the int8 buffers}, "order": [...], "passes": int,
      "skipped": [fqn never called], "sequential": bool, "seconds": float}``.
    """
    from . import linear_layers  # late: the package imports this module

    t0 = time.perf_counter()
    layers = linear_layers(model, filter_fn)
    if masks is not None:
        unknown = set(masks) - set(linear_layers(model))
        if unknown:
            raise KeyError(f"sparsegpt: masks name layers that are not nn.Linear layers of the model: "
                           f"{sorted(unknown)}")
        layers = {fqn: m for fqn, m in layers.items() if fqn in masks}
    if not layers:
        raise ValueError("sparsegpt: the model has no nn.Linear layer to prune (check filter_fn / masks)")
    for fqn, m in layers.items():
        check_plain_weight(m, fqn, "sparsegpt")
    if masks is None:  # fail before any pass on a bad structure
        p = parse_pattern(pattern)
        if p.kind == "nm":
            if sparsity is not None and abs(_masks.check_sparsity(sparsity) - p.fixed_sparsity) > 1e-6:
                raise ValueError(f"sparsegpt: pattern '{p.name}' fixes sparsity at {p.fixed_sparsity:g}; "
                                 f"got {sparsity}")
        elif sparsity is None:
            raise ValueError(f"sparsegpt: pattern '{p.name}' needs a sparsity in [0, 1], got None")
        else:
            _masks.check_sparsity(sparsity)
    if max_batches is not None:
        batches = list(itertools.islice(batches, max_batches))
    elif iter(batches) is batches:
        batches = list(batches)
    if not batches:
        raise ValueError("sparsegpt: no calibration batches were given")
    say = log or (lambda s: None)

    def prune_one(fqn: str, H: torch.Tensor, n: int):
        mod = layers[fqn]
        new_w, mask, info = sparsegpt_layer(mod.weight, H, sparsity, pattern, blocksize, percdamp, quantize_int8,
                                            mask=None if masks is None else masks[fqn], selection=selection,
                                            mask_blocksize=mask_blocksize, n_tokens=n)
        with torch.no_grad():
            mod.weight.copy_(new_w)
        if info["retries"]:
            warnings.warn(f"sparsegpt: layer {fqn!r}: {info['note']}", RuntimeWarning, stacklevel=3)
        say(f"sparsegpt {fqn}: sparsity {info['sparsity']:.3f}, calib error {info['rel_error_calib']:.4f}, "
            f"damp {info['percdamp_used']:.3g}{' (' + info['note'] + ')' if info['note'] else ''}")
        return mask, {k: v for k, v in info.items() if k not in _REPORT_DROP}

    out: Dict[str, torch.Tensor] = {}
    rep: Dict[str, Any] = {}
    modes = [(m, m.training) for m in model.modules()]
    passes = 1
    try:
        model.eval()
        first = batches[0] if isinstance(batches, (list, tuple)) else next(iter(batches))
        order, calls = _forward_order(model, layers, first)
        skipped = [fqn for fqn in layers if fqn not in calls]
        if sequential:
            for fqn in order:
                stop = 1 if early_exit and calls[fqn] == 1 else None
                with GramCollector({fqn: layers[fqn]}, gram_dtype, stop_after=stop) as col:
                    run_batches(model, batches, col)
                passes += 1
                if col.gram[fqn] is None:
                    skipped.append(fqn)
                    continue
                out[fqn], rep[fqn] = prune_one(fqn, col.gram[fqn], col.n_tokens[fqn])
                del col
        else:
            with GramCollector({f: layers[f] for f in order}, gram_dtype) as col:
                run_batches(model, batches, col)
            passes += 1
            for fqn in order:
                if col.gram[fqn] is None:
                    skipped.append(fqn)
                    continue
                out[fqn], rep[fqn] = prune_one(fqn, col.gram[fqn], col.n_tokens[fqn])
                col.gram[fqn] = None
    finally:
        for m, t in modes:
            m.training = t
    if skipped:
        warnings.warn(f"sparsegpt: layers never called on the calibration batches were left as they are: {skipped}",
                      RuntimeWarning, stacklevel=2)
    if not return_report:
        return out
    return out, dict(layers=rep, order=order, passes=passes, skipped=skipped, sequential=sequential,
                     seconds=time.perf_counter() - t0)
