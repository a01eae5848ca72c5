"""One call from a pretrained model to a smaller, faster one:
``sparsekit.compress(model, recipe, calib, eval)``.

The steps, each a piece that also works alone:

1. **prune** the chosen ``nn.Linear`` layers (:func:`sparsekit.prune.sparsegpt` for
   ``method="second-order"``: masks chosen with weight reconstruction, layer after layer;
   ``"activation"``: Wanda scores, no reconstruction; ``"magnitude"``: no data);
2. **recover** (optional, ``recover_steps > 0``): distillation from the dense model on the
   calibration batches, masks fixed (:func:`sparsekit.prune.finetune`);
3. **int8** (int8 recipes): second-order rounds the kept weights to the int8 grid compensating the
   rounding error (GPTQ-style, masks held); the other methods round to nearest when packing;
4. **convert** (:func:`sparsekit.convert`): ``format="auto"`` times, per layer, dense against every
   sparse format the mask allows at the number of rows the layer sees on the first evaluation batch,
   and keeps the fastest (a layer can stay dense); int8 recipes pack as ``int8`` / ``2:4+int8``;
5. **report** (:class:`CompressReport`): per-layer relative error of each layer's output against the
   dense weight on the same input, agreement of the whole model's main output with the dense model's
   on the evaluation batches, weight bytes, and the latency of the dense and the compressed model on
   one evaluation batch, measured here.

Recipes (:data:`RECIPES`; a :class:`Recipe` or a dict of its fields works as well):

* ``"50%"``: unstructured, half of each layer; packed as the fastest of csr / bitmap / dense;
* ``"P%"``: unstructured at P percent (0 < P < 100); packed as above;
* ``"2:4"``: 2 of every 4 weights along the input dimension; the fastest of 2:4 / csr / bitmap / dense;
* ``"2:4+int8"``: 2:4, then int8 weights; packed as ``2:4+int8`` (int8 activations per token, W8A8);
* ``"int8"``: int8 weights, no pruning; packed as ``int8`` (W8A8).

Defaults (all recipes): ``method="second-order"``, damping ``percdamp=0.01``, no recovery
(``recover_steps=0``; with steps: AdamW at ``lr=5e-5``, distillation ``"mse"`` on the main output,
gradient norm clipped to 1). Recovery fits the calibration batches: the report gives the agreement
before and after it, so that you see whether it helped on held-out data.

Layers: by default every ``nn.Linear`` except the model's output embeddings (a Hugging Face model's
``get_output_embeddings()``, e.g. ``lm_head``); for 2:4 recipes layers whose ``in_features`` is not a
multiple of 4 are skipped (listed in the report). ``filter_fn(module, fqn)`` chooses instead.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Recipe", "RECIPES", "METHODS", "get_recipe", "compress", "CompressResult", "CompressReport"]

METHODS = ("second-order", "activation", "magnitude")
_METHOD_ALIASES = {"second_order": "second-order", "sparsegpt": "second-order", "obs": "second-order",
                   "wanda": "activation", "activation-aware": "activation"}
_INT8_FORMATS = {None: ("int8", "int8-wo"), "2:4": ("2:4+int8",)}


@dataclass(frozen=True)
class Recipe:
    """What :func:`compress` does.

    pattern: ``"unstructured"``, ``"2:4"`` (or another structure of :func:`sparsekit.prune`:
      ``"RxC"`` blocks, packed as BSR by ``format="auto"``), or None: no pruning (int8 only).
    sparsity: the fraction pruned per layer (None for 2:4, which fixes 50%).
    int8: int8 weights after pruning (with pattern None or ``"2:4"``: sparsekit has int8 formats for
      dense and 2:4 weights only).
    method: ``"second-order"`` (SparseGPT / GPTQ: reconstruction from the calibration Gram
      matrices; the best one-shot quality), ``"activation"`` (Wanda: one pass, cheaper, no
      reconstruction; int8 rounds to nearest) or ``"magnitude"`` (no data).
    recover_steps, lr, distill: recovery by distillation from the dense model (0: none); ``distill``
      ``"mse"`` (outputs) or ``"kl"`` (logits).
    percdamp: second-order damping, a fraction of the Gram matrices' mean diagonal.
    """

    pattern: Optional[str] = "unstructured"
    sparsity: Optional[float] = 0.5
    int8: bool = False
    method: str = "second-order"
    recover_steps: int = 0
    lr: float = 5e-5
    distill: str = "mse"
    percdamp: float = 0.01
    name: Optional[str] = None

    def __post_init__(self):
        from .prune.masks import check_sparsity, parse_pattern

        m = _METHOD_ALIASES.get(self.method, self.method)
        if m not in METHODS:
            raise ValueError(f"Recipe: unknown method {self.method!r}; expected one of {list(METHODS)}")
        object.__setattr__(self, "method", m)
        if self.pattern is None:
            if not self.int8:
                raise ValueError("Recipe: pattern=None (no pruning) and int8=False leave nothing to do")
            if self.sparsity not in (None, 0, 0.0):
                raise ValueError(f"Recipe: pattern=None prunes nothing; got sparsity={self.sparsity}")
            object.__setattr__(self, "sparsity", None)
        else:
            p = parse_pattern(self.pattern)  # ValueError for an unknown structure
            if p.kind == "nm":
                if self.sparsity is not None and abs(check_sparsity(self.sparsity) - p.fixed_sparsity) > 1e-6:
                    raise ValueError(f"Recipe: pattern {p.name!r} fixes sparsity at {p.fixed_sparsity:g}; "
                                     f"got {self.sparsity}")
                object.__setattr__(self, "sparsity", None)
            elif self.sparsity is None:
                raise ValueError(f"Recipe: pattern {p.name!r} needs a sparsity in (0, 1)")
            else:
                check_sparsity(self.sparsity)
            object.__setattr__(self, "pattern", p.name)
            if self.int8 and p.name != "2:4":
                raise ValueError(f"Recipe: int8 goes with pattern '2:4' or None (no pruning); sparsekit has no "
                                 f"int8 format for {p.name!r} weights")
        if not isinstance(self.recover_steps, int) or self.recover_steps < 0:
            raise ValueError(f"Recipe: expected recover_steps an int >= 0, got {self.recover_steps!r}")
        if self.recover_steps and self.pattern is None:
            raise ValueError("Recipe: recovery trains around pruning masks; an int8-only recipe has none "
                             "(use recover_steps=0)")
        if not self.lr > 0:
            raise ValueError(f"Recipe: expected lr > 0, got {self.lr}")
        if self.distill not in ("mse", "kl"):
            raise ValueError(f"Recipe: expected distill 'mse' or 'kl', got {self.distill!r}")
        if not self.percdamp >= 0:
            raise ValueError(f"Recipe: expected percdamp >= 0, got {self.percdamp}")
        if self.name is None:
            base = ("int8" if self.pattern is None else
                    f"{self.sparsity * 100:g}%" if self.pattern == "unstructured" else self.pattern)
            object.__setattr__(self, "name", base + ("+int8" if self.int8 and self.pattern else ""))


RECIPES: Dict[str, Recipe] = {
    "50%": Recipe("unstructured", 0.5, name="50%"),
    "2:4": Recipe("2:4", None, name="2:4"),
    "2:4+int8": Recipe("2:4", None, int8=True, name="2:4+int8"),
    "int8": Recipe(None, None, int8=True, name="int8"),
}


def get_recipe(recipe: Union[str, Recipe, Mapping[str, Any]], **overrides) -> Recipe:
    """A :class:`Recipe` from a name (:data:`RECIPES`, or ``"P%"`` for unstructured at P percent), a
    Recipe or a dict of its fields; `overrides` (fields) replace the recipe's values."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(recipe, Recipe):
        r = recipe
    elif isinstance(recipe, Mapping):
        bad = set(recipe) - {f.name for f in dataclasses.fields(Recipe)}
        if bad:
            raise ValueError(f"get_recipe: unknown Recipe field(s) {sorted(bad)}")
        r = Recipe(**recipe)
    elif isinstance(recipe, str):
        key = recipe.strip().lower().replace(" ", "")
        if key in RECIPES:
            r = RECIPES[key]
        else:
            m = re.fullmatch(r"(\d+(?:\.\d+)?)%", key)
            if not m or not 0 < float(m.group(1)) < 100:
                raise ValueError(f"unknown recipe {recipe!r}; expected one of {list(RECIPES)}, 'P%' with "
                                 f"0 < P < 100, or a sparsekit.compress.Recipe")
            r = Recipe("unstructured", float(m.group(1)) / 100, name=f"{float(m.group(1)):g}%")
    else:
        raise TypeError(f"get_recipe: expected a recipe name, a Recipe or a dict, got {type(recipe).__name__}")
    if overrides:
        bad = set(overrides) - {f.name for f in dataclasses.fields(Recipe)}
        if bad:
            raise ValueError(f"get_recipe: unknown Recipe field(s) {sorted(bad)}")
        r = dataclasses.replace(r, **overrides)
    return r


# ----------------------------------------------------------------------------- report


class CompressReport(dict):
    """What :func:`compress` did and measured: a dict (JSON-serialisable: :meth:`to_json`) with
    ``recipe``, ``format``, ``layers`` {fqn: shape, sparsity, format, dense_bytes, bytes,
    rel_error (eval), calib_error (second-order), note (damping raised, rank-deficient Gram ...), auto (the
    timing of format="auto")}, ``skipped``,
    ``agreement`` (and ``agreement_one_shot`` with recovery), ``recovery``, ``weight_bytes``,
    ``model_bytes``, ``latency``, ``seconds``, ``env``. :meth:`markdown` prints it."""

    def to_json(self, path: Optional[str] = None, indent: int = 1) -> str:
        s = json.dumps(self, indent=indent)
        if path is not None:
            with open(path, "w") as f:
                f.write(s + "\n")
        return s

    def markdown(self) -> str:
        r = self
        rec = r["recipe"]
        L = [f"# sparsekit compress: recipe {rec['name']}", ""]
        L.append(f"method {rec['method']}, pattern {rec['pattern']}, sparsity {rec['sparsity']}, int8 {rec['int8']}, "
                 f"recovery steps {rec['recover_steps']}; format requested: {r['format']}; "
                 f"{len(r['layers'])} layers compressed" + (f", {len(r['skipped'])} skipped" if r["skipped"] else ""))
        L.append("")
        wb, mb = r["weight_bytes"], r["model_bytes"]
        L += ["| | dense | compressed | dense / compressed |", "|---|---:|---:|---:|",
              f"| weight bytes (compressed layers) | {wb['dense']:,} | {wb['compressed']:,} | {wb['ratio']:.3f}x |",
              f"| model bytes (parameters + buffers) | {mb['dense']:,} | {mb['compressed']:,} | {mb['ratio']:.3f}x |"]
        lat = r.get("latency")
        if lat:
            L.append(f"| latency, ms (median, {lat['device']}, {lat['threads']} threads, batch "
                     f"{lat['batch_shape']}) | {lat['dense_ms']:.2f} | {lat['compressed_ms']:.2f} | "
                     f"{lat['speedup']:.2f}x |")
        L.append("")
        for key, title in (("agreement_one_shot", "Output agreement with the dense model, one-shot (before recovery)"),
                           ("agreement", "Output agreement with the dense model")):
            a = r.get(key)
            if not a:
                continue
            L += [f"{title}, on the {a['data']} batches ({a['n_tokens']} tokens"
                  + (f", {a['n_sequences']} sequences" if a.get("n_sequences") else "") + "):", "",
                  "| measure | value |", "|---|---:|",
                  f"| mean cosine per token | {a['token_cosine_mean']:.4f} |",
                  f"| min cosine per token | {a['token_cosine_min']:.4f} |",
                  f"| relative error ‖y − y_dense‖ / ‖y_dense‖ | {a['rel_error']:.4f} |"]
            if a.get("pooled_cosine_mean") is not None:
                L += [f"| mean cosine of mean-pooled sequence outputs | {a['pooled_cosine_mean']:.4f} |",
                      f"| min cosine of mean-pooled sequence outputs | {a['pooled_cosine_min']:.4f} |"]
            if a.get("nn_agreement") is not None:
                L.append(f"| nearest-neighbour agreement (pooled) | {a['nn_agreement']:.3f} |")
            L.append("")
        rc = r.get("recovery")
        if rc:
            L += [f"Recovery: {rc['steps']} steps, lr {rc['lr']}, distill {rc['distill']}, loss {rc['first_loss']:.4g} "
                  f"-> {rc['last_loss']:.4g}.", ""]
        L += ["| layer | shape | sparsity | format | bytes | vs dense | rel. error (eval) | calib error |",
              "|---|---|---:|---|---:|---:|---:|---:|"]
        for fqn, x in r["layers"].items():
            err = "-" if x.get("rel_error") is None else f"{x['rel_error']:.4f}"
            ce = "-" if x.get("calib_error") is None else f"{x['calib_error']:.4f}"
            L.append(f"| {fqn} | {x['shape'][0]}x{x['shape'][1]} | {x['sparsity']:.3f} | {x['format']} | "
                     f"{x['bytes']:,} | {x['bytes'] / max(x['dense_bytes'], 1):.3f}x | {err} | {ce} |")
        if r["skipped"]:
            L += ["", "Skipped: " + ", ".join(f"{k} ({v})" for k, v in r["skipped"].items())]
        s = r["seconds"]
        L += ["", "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items()) + f". {r['env']['note']}"]
        return "\n".join(L) + "\n"


@dataclass
class CompressResult:
    """``model`` (the compressed model), ``report`` (:class:`CompressReport`), ``masks`` ({fqn: keep});
    unpacks as ``model, report = sparsekit.compress(...)``."""

    model: nn.Module
    report: CompressReport
    masks: Dict[str, torch.Tensor]

    def __iter__(self):
        return iter((self.model, self.report))


# ----------------------------------------------------------------------------- helpers


def _default_layers(model: nn.Module, filter_fn, rec: Recipe):
    """(layers {fqn: nn.Linear}, skipped {fqn: reason})."""
    skip_ids = set()
    get_out = getattr(model, "get_output_embeddings", None)
    if filter_fn is None and callable(get_out):
        try:
            out = get_out()
        except Exception:  # noqa: BLE001 -- a model that does not implement it
            out = None
        if isinstance(out, nn.Linear):
            skip_ids.add(id(out))
    layers, skipped = {}, {}
    for fqn, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if filter_fn is not None and not filter_fn(m, fqn):
            continue
        if id(m) in skip_ids:
            skipped[fqn] = "output embeddings (pass filter_fn to include)"
            continue
        if rec.pattern == "2:4" and m.in_features % 4:
            skipped[fqn] = f"in_features={m.in_features} is not a multiple of 4 (2:4)"
            continue
        if rec.pattern not in (None, "unstructured", "2:4"):
            from .prune.masks import parse_pattern

            p = parse_pattern(rec.pattern)
            if p.kind == "block" and (m.out_features % p.r or m.in_features % p.c):
                skipped[fqn] = f"shape ({m.out_features}, {m.in_features}) is not tiled by {p.name} blocks"
                continue
        layers[fqn] = m
    return layers, skipped


def _model_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.device, t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


class _Modes:
    """Puts models in eval mode and restores their modes."""

    def __init__(self, *models):
        self.saved = [(m, m.training) for model in models for m in model.modules()]

    def __enter__(self):
        for m, _ in self.saved:
            m.training = False
        return self

    def __exit__(self, *exc):
        for m, t in self.saved:
            m.training = t


@torch.no_grad()
def _forward_all(model: nn.Module, batches: List[Any], hooks: Optional[Dict[nn.Module, Callable]] = None):
    """Main outputs and token masks of every batch; `hooks` {module: forward hook} during the run."""
    from .prune.batches import as_batch, main_output

    handles = [m.register_forward_hook(h) for m, h in (hooks or {}).items()]
    dev = _device_of(model)
    outs = []
    try:
        with _Modes(model):
            for batch in batches:
                b = as_batch(batch, dev, "an evaluation batch")
                y = main_output(b.forward(model)).detach()
                outs.append((y, b.mask))
    finally:
        for h in handles:
            h.remove()
    return outs


def _agreement(outs, ref, data: str) -> Dict[str, Any]:
    """Cosine per token, relative error and (for (batch, seq, hidden) outputs) cosine of the
    mean-pooled sequences and nearest-neighbour agreement, on real tokens only."""
    from .prune.batches import tokens

    cos_t, num, den, n_tok = [], 0.0, 0.0, 0
    pooled, pooled_ref = [], []
    for (y, mask), (yr, _) in zip(outs, ref):
        y, yr = y.float(), yr.float()
        rows, rows_r = tokens(y, mask, use_current=False), tokens(yr, mask, use_current=False)
        cos_t.append(F.cosine_similarity(rows, rows_r, dim=-1, eps=1e-12))
        num += float((rows - rows_r).square().sum())
        den += float(rows_r.square().sum())
        n_tok += rows.shape[0]
        if y.dim() == 3:
            m = (mask if mask is not None else torch.ones(y.shape[:2], dtype=torch.bool, device=y.device))
            m = m.to(y.device).unsqueeze(-1).float()
            pooled.append(F.normalize((y * m).sum(1) / m.sum(1).clamp_min(1), dim=-1))
            pooled_ref.append(F.normalize((yr * m).sum(1) / m.sum(1).clamp_min(1), dim=-1))
    c = torch.cat(cos_t)
    a: Dict[str, Any] = dict(data=data, n_batches=len(outs), n_tokens=n_tok,
                             token_cosine_mean=float(c.mean()), token_cosine_min=float(c.min()),
                             rel_error=(num / den) ** 0.5 if den > 0 else 0.0,
                             n_sequences=None, pooled_cosine_mean=None, pooled_cosine_min=None, nn_agreement=None)
    if pooled:
        e, er = torch.cat(pooled), torch.cat(pooled_ref)
        pc = (e * er).sum(-1)
        a.update(n_sequences=int(e.shape[0]), pooled_cosine_mean=float(pc.mean()), pooled_cosine_min=float(pc.min()))
        if e.shape[0] >= 3:
            def nn_idx(x):
                s = x @ x.T
                s.fill_diagonal_(-2.0)
                return s.argmax(1)
            a["nn_agreement"] = float((nn_idx(e) == nn_idx(er)).float().mean())
    return a


def _layer_error_hooks(model: nn.Module, dense_weights: Dict[str, tuple]):
    """Forward hooks that add ||y - (x W_denseᵀ + b_dense)||² and ||x W_denseᵀ + b_dense||² over real
    tokens for each layer; returns (hooks {module: fn}, num, den)."""
    from .prune.batches import tokens

    num = {f: 0.0 for f in dense_weights}
    den = {f: 0.0 for f in dense_weights}
    hooks = {}
    for fqn, (w, b) in dense_weights.items():
        mod = model.get_submodule(fqn)

        def hook(m, args, out, fqn=fqn, w=w, b=b):
            x = args[0]
            ref = F.linear(x.to(w.dtype), w, b)
            r, o = tokens(ref).float(), tokens(out).float()
            num[fqn] += float((o - r).square().sum())
            den[fqn] += float(r.square().sum())
        hooks[mod] = hook
    return hooks, num, den


def _rows_seen(model: nn.Module, layer: nn.Module, batch: Any) -> int:
    """How many rows `layer` gets on `batch` (all leading dims, padding included: the kernel runs them)."""
    got = []

    def pre(m, args):
        if not got:
            got.append(args[0].numel() // max(args[0].shape[-1], 1))
    h = layer.register_forward_pre_hook(pre)
    try:
        _forward_all(model, [batch])
    finally:
        h.remove()
    return got[0] if got else 1


def _latency(dense: nn.Module, model: nn.Module, batch: Any, reps: int = 5):
    """(dense ms, compressed ms) on `batch`: on the CPU the two models are timed alternately, `reps`
    calls each after a warm-up call, caches flushed before each call, medians (alternating keeps a
    load that changes during the measurement from favouring one model); on CUDA
    :func:`sparsekit.bench.timing.time_ms` (CUDA events, L2 flushed)."""
    import statistics

    from .bench.timing import _flush_caches, time_ms
    from .prune.batches import as_batch

    fns = []
    for m in (dense, model):
        b = as_batch(batch, _device_of(m), "an evaluation batch")

        def run(m=m, b=b):
            with torch.no_grad():
                b.forward(m)
        fns.append(run)
    dev = _device_of(model)
    with _Modes(dense, model):
        if dev.type == "cuda":
            return time_ms(fns[0], dev)["ms"], time_ms(fns[1], dev)["ms"]
        for f in fns:
            f()
        ts = ([], [])
        for _ in range(reps):
            for i, f in enumerate(fns):
                _flush_caches()
                t0 = time.perf_counter()
                f()
                ts[i].append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts[0]), 1e3 * statistics.median(ts[1])


def _batch_shape(batch: Any) -> List[int]:
    from .prune.batches import as_batch

    b = as_batch(batch, torch.device("cpu"))
    x = b.input if not isinstance(b.input, Mapping) else next(
        (v for v in b.input.values() if isinstance(v, torch.Tensor)), None)
    return list(x.shape) if isinstance(x, torch.Tensor) else []


def _as_list(batches, who: str, allow_none: bool = False):
    if batches is None:
        if allow_none:
            return None
        raise ValueError(f"compress: expected {who} batches, got None")
    if isinstance(batches, (torch.Tensor, Mapping)):
        batches = [batches]
    try:
        out = list(batches)
    except TypeError:
        raise TypeError(f"compress: expected {who} to be an iterable of batches (tensors, (input, target) tuples "
                        f"or dicts of model inputs), got {type(batches).__name__}") from None
    if not out:
        raise ValueError(f"compress: no {who} batches were given (empty)")
    return out


# ----------------------------------------------------------------------------- compress


def compress(
    model: nn.Module,
    recipe: Union[str, Recipe, Mapping[str, Any]],
    calib: Iterable[Any],
    eval: Optional[Iterable[Any]] = None,  # noqa: A002 -- the name the API promises
    *,
    recover_steps: Optional[int] = None,
    method: Optional[str] = None,
    format: str = "auto",  # noqa: A002
    filter_fn: Optional[Callable[[nn.Module, str], bool]] = None,
    device: Union[str, torch.device, None] = None,
    inplace: bool = False,
    report: bool = True,
    latency: bool = True,
    latency_reps: int = 5,
    auto_rows: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> CompressResult:
    """Compresses `model` with `recipe` (see the module doc); returns a :class:`CompressResult`
    (``model, report = compress(...)`` works too).

    calib: calibration batches (a tensor, ``(input, target)`` or a dict run as ``model(**batch)``;
      padding tokens, ``attention_mask == 0``, are left out everywhere); iterated several times.
    eval: held-out batches for the report (agreement, per-layer error, latency); None: the report is
      computed on the calibration batches and says so.
    recover_steps, method: override the recipe's fields.
    format: ``"auto"`` (default; see the module doc), ``"dense"`` (pruned weights left in
      ``nn.Linear``), or a format name of :func:`sparsekit.formats.names` (int8 recipes: their int8
      format only).
    filter_fn: ``filter_fn(module, fqn)`` chooses the layers (default: module doc).
    device: run (and leave) the models there (default: where `model` is).
    inplace: compress `model` itself (a dense copy is kept while needed); default: a copy is
      compressed and `model` stays as it was (it serves as the dense reference).
    report: measure agreement, per-layer error and latency (False: bytes only, faster).
    latency: time the dense and compressed models on the first evaluation batch (``report=True``):
      on the CPU alternately, `latency_reps` calls each, medians; on CUDA with CUDA events.
    auto_rows: the rows that ``format="auto"`` times each layer at (default: the rows a layer gets
      on the first evaluation batch, e.g. batch x sequence length).
    """
    from . import __version__
    from .convert import SparseConfig, convert
    from .formats import names as format_names
    from .nn import SparseLinear
    from .prune import finetune, prune
    from .prune.second_order import sparsegpt

    t_start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress: expected an nn.Module, got {type(model).__name__}")
    rec = get_recipe(recipe, recover_steps=recover_steps, method=method)
    if format not in ("auto", "dense") and format not in format_names():
        raise ValueError(f"compress: unknown format {format!r}; expected 'auto', 'dense' or one of {format_names()}")
    if rec.int8:
        allowed = _INT8_FORMATS[rec.pattern]
        if format == "auto":
            fmt = allowed[0]
        elif format in allowed:
            fmt = format
        else:
            raise ValueError(f"compress: recipe {rec.name!r} quantizes to int8; expected format 'auto' or one of "
                             f"{list(allowed)}, got {format!r}")
    else:
        if format in ("int8", "int8-wo", "2:4+int8"):
            raise ValueError(f"compress: format {format!r} quantizes; use an int8 recipe ('2:4+int8', 'int8')")
        if format == "2:4" and rec.pattern != "2:4":
            raise ValueError(f"compress: format '2:4' needs the 2:4 pattern; recipe {rec.name!r} has {rec.pattern!r}")
        fmt = format
    if not isinstance(latency_reps, int) or latency_reps < 1:
        raise ValueError(f"compress: expected latency_reps an int >= 1, got {latency_reps!r}")
    if auto_rows is not None and (not isinstance(auto_rows, int) or auto_rows < 1):
        raise ValueError(f"compress: expected auto_rows an int >= 1 or None, got {auto_rows!r}")
    calib = _as_list(calib, "calibration")
    evalb = _as_list(eval, "evaluation", allow_none=True)
    data_name = "evaluation" if evalb is not None else "calibration"
    evalb = evalb if evalb is not None else calib
    say = log or (lambda s: None)

    if device is not None:
        model.to(device)
    layers_in, skipped = _default_layers(model, filter_fn, rec)
    if not layers_in:
        raise ValueError("compress: no nn.Linear layer to compress" + (f" (skipped: {skipped})" if skipped else
                                                                       " (check filter_fn)"))
    names = list(layers_in)
    need_dense = report or rec.recover_steps > 0
    if inplace:
        work = model
        dense = copy.deepcopy(model) if need_dense else None
    else:
        dense = model
        work = copy.deepcopy(model)
    layers = {f: work.get_submodule(f) for f in names}
    flt = lambda m, f: f in layers  # noqa: E731
    secs: Dict[str, float] = {}
    dense_bytes_layers = {f: m.weight.numel() * m.weight.element_size() for f, m in layers.items()}
    model_bytes_dense = _model_bytes(work)

    ref = None
    if report:
        t0 = time.perf_counter()
        ref = _forward_all(dense, evalb)
        secs["dense eval"] = time.perf_counter() - t0
    rows = auto_rows or (_rows_seen(work, layers[names[0]], evalb[0]) if fmt == "auto" else 1)

    def agreement(m):
        return _agreement(_forward_all(m, evalb), ref, data_name)

    # ---- 1. prune (and, second-order without recovery, int8 in the same sweep)
    t0 = time.perf_counter()
    calib_err: Dict[str, float] = {}
    notes: Dict[str, str] = {}
    quant_now = rec.int8 and rec.method == "second-order" and rec.recover_steps == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*damping raised.*")
        if rec.pattern is not None:
            if rec.method == "second-order":
                masks, so = sparsegpt(work, calib, rec.sparsity, rec.pattern, flt, quantize_int8=quant_now,
                                      percdamp=rec.percdamp, return_report=True, log=log)
                calib_err = {f: r["rel_error_calib"] for f, r in so["layers"].items()}
                notes = {f: r["note"] for f, r in so["layers"].items() if r.get("note")}
            else:
                masks = prune(work, rec.sparsity, rec.pattern, criterion=rec.method, filter_fn=flt,
                              calib=calib if rec.method == "activation" else None)
        else:
            masks = {f: torch.ones_like(m.weight, dtype=torch.bool) for f, m in layers.items()}
            if quant_now:
                _, so = sparsegpt(work, calib, masks=masks, quantize_int8=True, percdamp=rec.percdamp,
                                  filter_fn=flt, return_report=True, log=log)
                calib_err = {f: r["rel_error_calib"] for f, r in so["layers"].items()}
    secs["prune"] = time.perf_counter() - t0
    say(f"compress: pruned {len(masks)} layers ({rec.name}, {rec.method}) in {secs['prune']:.1f} s")

    # ---- 2. recovery
    out: Dict[str, Any] = {}
    if rec.recover_steps > 0:
        if report:
            out["agreement_one_shot"] = agreement(work)
        t0 = time.perf_counter()
        opt = torch.optim.AdamW([p for p in work.parameters() if p.requires_grad], lr=rec.lr, weight_decay=0.0)
        losses = finetune(work, masks, calib, opt, teacher=dense, distill=rec.distill, steps=rec.recover_steps,
                          max_norm=1.0)
        for p in work.parameters():
            p.grad = None
        secs["recover"] = time.perf_counter() - t0
        out["recovery"] = dict(steps=len(losses), lr=rec.lr, distill=rec.distill, first_loss=losses[0],
                               last_loss=losses[-1])
        say(f"compress: recovery {len(losses)} steps, loss {losses[0]:.4g} -> {losses[-1]:.4g}")
        if rec.int8 and rec.method == "second-order":  # GPTQ-style on the recovered weights, masks held
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*damping raised.*")
                _, so = sparsegpt(work, calib, masks=masks, quantize_int8=True, percdamp=rec.percdamp,
                                  filter_fn=flt, return_report=True)
            calib_err = {f: r["rel_error_calib"] for f, r in so["layers"].items()}
            secs["int8"] = time.perf_counter() - t0

    # ---- 3. convert
    t0 = time.perf_counter()
    if fmt != "dense":
        convert(work, SparseConfig(fmt, batch_size=rows), filter_fn=flt, masks=masks)
    secs["convert"] = time.perf_counter() - t0
    work.eval()

    # ---- 4. report
    lrep: Dict[str, Dict[str, Any]] = {}
    for f in names:
        m = work.get_submodule(f)
        mask = masks[f]
        if isinstance(m, SparseLinear):
            fm, nb = m.format, m.weight_format.nbytes
        else:
            fm, nb = "dense", dense_bytes_layers[f]
        choice = getattr(m, "_sparsekit_choice", None)
        lrep[f] = dict(shape=list(mask.shape), sparsity=float((~mask).sum()) / max(mask.numel(), 1), format=fm,
                       dense_bytes=dense_bytes_layers[f], bytes=int(nb), rel_error=None,
                       calib_error=calib_err.get(f), note=notes.get(f, ""),
                       auto=None if choice is None else dict(rows=choice["batch_size"], speedup=choice["speedup"],
                                                             tried_ms=choice["tried"]))
    if report:
        t0 = time.perf_counter()
        dw = {}
        for f in names:
            dm = dense.get_submodule(f)
            dw[f] = (dm.weight.detach(), None if dm.bias is None else dm.bias.detach())
        hooks, num, den = _layer_error_hooks(work, dw)
        outs = _forward_all(work, evalb, hooks)
        for f in names:
            lrep[f]["rel_error"] = (num[f] / den[f]) ** 0.5 if den[f] > 0 else 0.0
        out["agreement"] = _agreement(outs, ref, data_name)
        secs["evaluate"] = time.perf_counter() - t0
        if latency:
            t0 = time.perf_counter()
            d_ms, c_ms = _latency(dense, work, evalb[0], latency_reps)
            dev = _device_of(work)
            out["latency"] = dict(device=str(dev), threads=torch.get_num_threads(), batch_shape=_batch_shape(evalb[0]),
                                  reps=latency_reps, dense_ms=d_ms, compressed_ms=c_ms,
                                  speedup=d_ms / c_ms if c_ms > 0 else None)
            secs["latency"] = time.perf_counter() - t0
    wd, wc = sum(dense_bytes_layers.values()), sum(x["bytes"] for x in lrep.values())
    mc = _model_bytes(work)
    secs["total"] = time.perf_counter() - t_start
    rep = CompressReport(
        recipe=dataclasses.asdict(rec), format=format, formats_chosen=sorted({x["format"] for x in lrep.values()}),
        auto_rows=rows if fmt == "auto" else None,
        layers=lrep, skipped=skipped,
        weight_bytes=dict(dense=wd, compressed=wc, ratio=wd / wc if wc else None),
        model_bytes=dict(dense=model_bytes_dense, compressed=mc, ratio=model_bytes_dense / mc if mc else None),
        agreement=out.get("agreement"), agreement_one_shot=out.get("agreement_one_shot"),
        recovery=out.get("recovery"), latency=out.get("latency"), seconds=secs,
        env=dict(torch=torch.__version__, sparsekit=__version__, device=str(_device_of(work)),
                 threads=torch.get_num_threads(),
                 note=((f"latency: medians of {latency_reps} calls per model, the two models alternated, caches "
                        "flushed before each call" if _device_of(work).type != "cuda" else
                        "latency: sparsekit.bench.timing.time_ms (CUDA events, L2 flushed)")
                       if out.get("latency") else "latency not measured")))
    if dense is not None and inplace:
        del dense
    return CompressResult(work, rep, masks)


# ----------------------------------------------------------------------------- text data (the CLI's path)


def read_lines(path: str, max_samples: Optional[int] = None, who: str = "text file") -> List[str]:
    """The non-empty lines of a UTF-8 text file (stripped), the first `max_samples` of them."""
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{who} {path!r} does not exist (or is not a file)")
    with open(path, encoding="utf-8") as f:
        lines = [s.strip() for s in f]
    lines = [s for s in lines if s]
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"expected max_samples >= 1, got {max_samples}")
        lines = lines[:max_samples]
    if not lines:
        raise ValueError(f"{who} {path!r} has no non-empty lines: nothing to calibrate or evaluate on")
    return lines


def text_batches(tokenizer, texts: List[str], batch_size: int = 16,
                 max_length: int = 128) -> List[Dict[str, torch.Tensor]]:
    """Dict batches (``input_ids``, ``attention_mask``, ...) of `texts` in order, padded per batch and
    truncated to `max_length` tokens, for ``model(**batch)``."""
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"expected batch_size >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        out.append(dict(enc))
    return out
