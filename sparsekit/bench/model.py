"""Model-level benchmark: a decoder-only transformer, pruned and converted by sparsekit for each
format, against the dense model: prefill latency, decode tokens/s, weight bytes, peak memory and
conversion time.

The model is Hugging Face ``transformers``' LlamaForCausalLM from a LlamaConfig with random weights
(nothing is downloaded) when transformers imports (``arch="llama"``), else the built-in
:class:`TinyDecoder` (same linear layers: q/k/v/o, gate/up/down; no rotary embedding, which moves
no weight bytes). Every attention and MLP projection is pruned to the format's pattern
(sparsekit.prune, magnitude, per layer) and converted (sparsekit.convert); lm_head and the
embeddings stay dense. Before timing, the converted model's logits are checked against the pruned
model holding the same weights (int8 formats: dequantized; W8A8 formats within the error of their
per-token activation quantization); "rel_error" is against the pruned
model itself, so for int8 formats it is the quantization error.

Prefill: one forward over ``batch x prompt`` tokens (M = batch * prompt), logits of the last
position only. Decode: one token per sequence at position ``prompt`` against a KV cache filled
with the prompt, repeated at that same position (a static cache rewound each step), so that every
timed call does the same work; tokens/s = batch / step time. On CUDA both are also timed replayed
from a CUDA graph; on the CPU eagerly. With ``compile`` (the CLI's ``--compile``, on by default with a GPU)
decode is also timed through ``torch.compile(fullgraph=True)``, mode "reduce-overhead" (CUDA graphs) on
CUDA, dense and every format, its logits checked against the eager step's. Peak memory: torch.cuda.max_memory_allocated on CUDA; not
measured on the CPU (the process's high-water mark is already set by the dense model).

Peers on the CPU (``peers=True``; the CLI's default): quantize_dynamic int8 of the projections, and
DeepSparse on ONNX graphs of the (pruned) model that its side process builds from the weights
(bench/deepsparse_peer.py): its decode step takes the prompt's keys and values as graph inputs.
"""
from __future__ import annotations

import copy
import gc
import inspect
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import convert
from ..nn import SparseLinear
from ..prune import prune
from .layer import convert_config, fixed_sparsity, prune_pattern, rel_error
from .progress import Progress
from .timing import short_error, time_ms

# hidden, intermediate, heads, kv heads, layers, vocab
PRESETS = {
    "llama-7b": dict(hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=32, vocab=32000),
    "llama2-13b": dict(hidden=5120, intermediate=13824, heads=40, kv_heads=40, layers=40, vocab=32000),
    "llama3-8b": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32, vocab=128256),
    "small": dict(hidden=1024, intermediate=2816, heads=16, kv_heads=16, layers=2, vocab=8192),
    "tiny": dict(hidden=128, intermediate=352, heads=4, kv_heads=4, layers=2, vocab=512),
}


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- the built-in decoder


class _Block(nn.Module):
    def __init__(self, d, ff, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)
        self.norm1, self.norm2 = nn.RMSNorm(d), nn.RMSNorm(d)

    def forward(self, x, cache: Optional[tuple], start: int):
        B, T, _ = x.shape
        h = self.norm1(x)
        q = self.q_proj(h).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        if cache is not None:  # static cache: write this step's keys and values in place
            cache[0][:, :, start:start + T] = k
            cache[1][:, :, start:start + T] = v
            k, v = cache[0][:, :, :start + T], cache[1][:, :, :start + T]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=self.kv_heads != self.heads)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, -1))
        h = self.norm2(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TinyDecoder(nn.Module):
    """A LLaMA-shaped decoder without rotary embeddings: the built-in model when transformers is absent."""

    def __init__(self, hidden, intermediate, heads, kv_heads, layers, vocab):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(_Block(hidden, intermediate, heads, kv_heads) for _ in range(layers))
        self.norm = nn.RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids, caches: Optional[list] = None, start: int = 0):
        x = self.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if caches is None else caches[i], start)
        return self.lm_head(self.norm(x[:, -1:]))

    def new_cache(self, batch, length):
        p = self.lm_head.weight
        return [tuple(torch.zeros(batch, b.kv_heads, length, b.hd, device=p.device, dtype=p.dtype) for _ in "kv")
                for b in self.layers]


# ----------------------------------------------------------------------------- building and running


def build_model(arch: str, dims: Dict[str, int]) -> nn.Module:
    """arch "llama": transformers' LlamaForCausalLM (random weights); "builtin": TinyDecoder."""
    torch.manual_seed(0)
    if arch == "builtin":
        return TinyDecoder(**dims).eval()
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
                      num_attention_heads=dims["heads"], num_key_value_heads=dims["kv_heads"],
                      num_hidden_layers=dims["layers"], vocab_size=dims["vocab"], max_position_embeddings=8192)
    return LlamaForCausalLM(cfg).eval()


class Runner:
    """prefill() and step() for either model, with the same inputs every call."""

    def __init__(self, model: nn.Module, batch: int, prompt: int, seed: int = 0):
        self.model, self.prompt = model, prompt
        p = next(model.parameters())
        g = torch.Generator().manual_seed(seed)
        vocab = model.lm_head.out_features
        self.ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(p.device)
        self.tok = torch.randint(0, vocab, (batch, 1), generator=g).to(p.device)
        self.hf = not isinstance(model, TinyDecoder)
        if self.hf:
            from transformers import StaticCache

            # max_batch_size, device and dtype: needed by transformers 4.x, ignored by 5.x
            self.cache = StaticCache(config=model.config, max_cache_len=prompt + 1, max_batch_size=batch,
                                     device=p.device, dtype=p.dtype)
            self.pos = torch.tensor([prompt], device=p.device)
            # transformers 5.2x renamed the argument (the old name warns); 4.x knows only the old one
            self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
            model(input_ids=self.ids, **{self.cache_arg: self.cache}, cache_position=torch.arange(prompt, device=p.device),
                  use_cache=True, logits_to_keep=1)
        else:
            self.cache = model.new_cache(batch, prompt + 1)
            model(self.ids, self.cache, 0)

    def prefill(self) -> torch.Tensor:
        if self.hf:
            return self.model(input_ids=self.ids, use_cache=False, logits_to_keep=1).logits
        return self.model(self.ids)

    def step(self) -> torch.Tensor:
        if not self.hf:
            return self.model(self.tok, self.cache, self.prompt)
        out = self.model(input_ids=self.tok, **{self.cache_arg: self.cache}, cache_position=self.pos, use_cache=True).logits
        for layer in getattr(self.cache, "layers", ()):  # transformers 5: rewind each layer's write position
            if torch.is_tensor(getattr(layer, "cumulative_length", None)):
                layer.cumulative_length.fill_(self.prompt)
        return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
               if t.dim() > 0)


def _logits(run: Runner) -> Dict[str, torch.Tensor]:
    return {"logits_prefill": run.prefill().float(), "logits_step": run.step().float()}


#: the compiled decode step's logits against the eager one's (the same kernels, fused differently around them)
COMPILED_TOL = 2e-2


def _compiled_decode(run: "Runner", model: nn.Module, device, min_run_time, compile: str, eager_step) -> Dict:
    """The decode step through torch.compile(fullgraph=True): mode "reduce-overhead" on CUDA (CUDA graphs),
    inductor's default on the CPU; `compile` names the backend ("inductor"; tests: "aot_eager"). Its logits
    are checked against the eager step's. {"decode_compiled_ms": ...} or {"decode_compiled_error": reason}."""
    import torch._dynamo

    mode = "reduce-overhead" if device.type == "cuda" and compile == "inductor" else None
    try:
        torch._dynamo.reset()  # each variant compiles afresh (no recompilation limit across models)
        run.model = torch.compile(model, backend=compile, mode=mode, fullgraph=True, dynamic=False)
        for _ in range(3):  # compile, then (CUDA) record the graphs
            got = run.step().float()
        _sync(device)
        err = rel_error(got, eager_step)
        if not err <= COMPILED_TOL:
            raise AssertionError(f"compiled decode differs from eager: relative error {err:.3g}")
        return {"decode_compiled_ms": time_ms(run.step, device, min_run_time, graph=False)["ms"]}
    except Exception as e:  # noqa: BLE001  (a graph break, a backend failure: reported in the record)
        return {"decode_compiled_error": short_error(e)}
    finally:
        run.model = model
        torch._dynamo.reset()


def _measure(model, batch, prompt, device, min_run_time, compile: Optional[str] = None) -> Dict:
    """Prefill and decode timings (eager, and graph on CUDA; with `compile`, decode also through
    torch.compile), logits for the checks, weight bytes and, on CUDA, peak memory: the weights plus the
    most that the cache, prefill and decode add to them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    run = Runner(model, batch, prompt)
    out = dict(_logits(run), weight_bytes=_weight_bytes(model), peak_mem_bytes=None)
    for what, fn in (("prefill", run.prefill), ("decode", run.step)):
        t = time_ms(fn, device, min_run_time)
        out[f"{what}_ms"], out[f"{what}_graph_ms"] = t["ms"], t["graph_ms"]
        if "graph_error" in t:
            out[f"{what}_graph_error"] = t["graph_error"]
    if compile:
        out.update(_compiled_decode(run, model, device, min_run_time, compile, out["logits_step"]))
    if device.type == "cuda":
        out["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device) - before + out["weight_bytes"]
    return out


def variants(fmts: Sequence[str], sparsities: Sequence[float]):
    for fmt in fmts:
        for sp in [None] if fixed_sparsity(fmt) else sparsities:
            yield fmt, sp


def _not_lm_head(module, fqn) -> bool:
    return not fqn.endswith("lm_head")


def sparsify(dense: nn.Module, fmt: str, sparsity: Optional[float], device) -> tuple:
    """A pruned copy (the reference) and a converted copy of `dense`; seconds to prune and to convert."""
    pruned = copy.deepcopy(dense)
    _sync(device)
    t0 = time.perf_counter()
    pattern = prune_pattern(fmt)
    if pattern is not None:
        prune(pruned, sparsity=None if pattern == "2:4" else sparsity, pattern=pattern, filter_fn=_not_lm_head)
    converted = copy.deepcopy(pruned)
    _sync(device)
    t1 = time.perf_counter()
    convert(converted, convert_config(fmt), filter_fn=_not_lm_head)
    _sync(device)
    return pruned, converted, t1 - t0, time.perf_counter() - t1


def bench_model(dims: Dict[str, int], fmts: Sequence[str], sparsities: Sequence[float], dtype: torch.dtype,
                device: torch.device, arch: str = "llama", batch: int = 1, prompt: int = 128,
                min_run_time: float = 0.3, progress: Optional[Progress] = None, peers: bool = False,
                compile: Optional[str] = None) -> List[Dict]:
    """One record for the dense model (the baseline: on the CPU, for prefill and for decode each,
    the faster of float32 and bfloat16, whichever of the two the model is in) and one per (format, sparsity);
    with `compile` (a torch.compile backend, "inductor") the decode step also compiled, dense and each format;
    with `peers` on the CPU also PyTorch's dynamic int8 (quantize_dynamic, fbgemm and onednn) of the same
    projections and DeepSparse on the dense model and on the model pruned to each unstructured sparsity
    (model_peers)."""
    if arch == "llama" and not transformers_available():
        arch = "builtin"
    with torch.no_grad():
        dense = build_model(arch, dims).to(device=device, dtype=dtype)
        desc = dict(model=f"{'transformers Llama' if arch == 'llama' else 'built-in decoder'} " + " ".join(
            f"{k}={v}" for k, v in dims.items()), arch=arch, params=sum(p.numel() for p in dense.parameters()),
            batch=batch, prompt=prompt, prefill_M=batch * prompt, dtype=str(dtype).replace("torch.", ""),
            device=device.type)
        dense_runs = [dict(_measure(dense, batch, prompt, device, min_run_time, compile), dtype=desc["dtype"])]
        other = {torch.float32: torch.bfloat16, torch.bfloat16: torch.float32}.get(dtype)
        if device.type == "cpu" and other is not None:  # BENCHMARKING.md rule 2: the faster of fp32 and bf16
            dense_runs.append(dict(_measure(copy.deepcopy(dense).to(other), batch, prompt, device, min_run_time,
                                            compile), dtype=str(other).replace("torch.", "")))
        base = _best_dense(dense_runs)
        records = [_model_record(desc, "dense", 0.0, base, base, err=0.0)]
        if progress is not None:
            progress.step("dense")
        for fmt, sp in variants(fmts, sparsities):
            records.append(_bench_variant(dense, desc, fmt, sp, base, batch, prompt, device, min_run_time, compile))
            if progress is not None:
                progress.step(f"{fmt} {'' if sp is None else f'{sp:.0%}'}")
        if peers and device.type == "cpu":
            records += model_peers(dense, desc, fmts, sparsities, base, batch, prompt, device, min_run_time)
    return records


#: quantize_dynamic's int8 weights have one scale per tensor (sparsekit's int8: one per row), and its
#: activations one per call: 0.12 relative error in the logits of the 2-layer `small` Llama, against
#: 0.04 for sparsekit's int8; a wrong kernel is off by ~100%. rel_error shows the real figure.
QUANTIZE_DYNAMIC_TOL = 0.3


def model_peers(dense, desc, fmts, sparsities, base, batch, prompt, device, min_run_time) -> List[Dict]:
    """CPU peers of the model bench: quantize_dynamic (fbgemm, onednn) of every projection of a float32
    copy of the model (lm_head dense, as sparsekit's formats leave it), checked against the dense model within the error of
    int8 (rel_error: against the dense model); DeepSparse (deepsparse-dense, then deepsparse per
    unstructured sparsity) from the side virtualenv, "n/a (reason)" where it cannot run."""
    from .peers import Unavailable

    records = []
    ref = None
    dense32 = dense if next(dense.parameters()).dtype == torch.float32 else copy.deepcopy(dense).float()
    for engine in ("fbgemm", "onednn"):
        name = f"torch-quantize_dynamic-{engine}"
        try:
            model = _quantize_dynamic(dense32, engine)
            if ref is None:
                ref = _logits(Runner(dense32, batch, prompt))
            with _quantized_engine(engine):
                m = _measure(model, batch, prompt, device, min_run_time)
            m["weight_bytes"] += _packed_int8_bytes(model)
            err = max(rel_error(m[k], ref[k]) for k in ref)
            if not err <= QUANTIZE_DYNAMIC_TOL:
                raise AssertionError(f"quantized model differs from the dense model: relative error {err:.3g}")
        except Unavailable as e:
            records.append(dict(desc, format=name, sparsity=0.0, error=f"n/a ({e})"))
            continue
        except (RuntimeError, NotImplementedError, ValueError, AssertionError) as e:
            records.append(dict(desc, format=name, sparsity=0.0, error=f"n/a ({short_error(e)})"))
            continue
        records.append(_model_record(desc, name, 0.0, m, base, err))
    # DeepSparse's worker needs the memory: the float32 copy and the quantized models go first
    model = dense32 = None
    gc.collect()
    sps = sorted({sp for fmt, sp in variants(fmts, sparsities) if prune_pattern(fmt) == "unstructured"})
    if sps:
        records.append(_deepsparse_model(dense, desc, "deepsparse-dense", 0.0, base, batch, prompt, min_run_time))
        for sp in sps:
            records.append(_deepsparse_model(dense, desc, "deepsparse", sp, base, batch, prompt, min_run_time))
    return records


#: DeepSparse's logits against the pruned model's: fp32 both, summed in another order
DEEPSPARSE_TOL = 1e-3


def _deepsparse_model(dense, desc, name, sp, base, batch, prompt, min_run_time) -> Dict:
    """DeepSparse on the model pruned unstructured to `sp` (0: the dense model): the worker builds the
    fp32 ONNX graphs of prefill and of a decode step from the weights (bench/deepsparse_peer.py);
    checked against the pruned model's own logits, then timed in the side process."""
    from .deepsparse_peer import run_deepsparse_model
    from .peers import Unavailable

    try:
        model = copy.deepcopy(dense).float()
        if sp:
            prune(model, sparsity=sp, pattern="unstructured", filter_fn=_not_lm_head)
        run = Runner(model, batch, prompt)
        ref = _logits(run)
        got = run_deepsparse_model(model, run.ids, run.tok, min_run_time=min_run_time)
        err = max(rel_error(got[k].reshape(ref[k].shape), ref[k]) for k in ref)
        if not err <= DEEPSPARSE_TOL:
            raise AssertionError(f"DeepSparse's logits differ from the model's: relative error {err:.3g}")
    except Unavailable as e:
        return dict(desc, format=name, sparsity=sp, error=f"n/a ({e})")
    except (RuntimeError, NotImplementedError, ValueError, AssertionError) as e:
        return dict(desc, format=name, sparsity=sp, error=f"n/a ({short_error(e)})")
    m = dict(prefill_ms=got["prefill_ms"], decode_ms=got["decode_ms"], prefill_graph_ms=None, decode_graph_ms=None,
             weight_bytes=None, peak_mem_bytes=None)
    return _model_record(desc, name, sp, m, base, err, peer_version=f"deepsparse {got['version']}",
                         convert_s=got["compile_s"])


def _packed_int8_bytes(model: nn.Module) -> int:
    """The int8 weights (and a scale and zero point each) that quantize_dynamic's Linear layers keep
    in packed params, which model.parameters() does not see."""
    total = 0
    for mod in model.modules():
        if type(mod).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(mod, "weight", None)):
            w = mod.weight()
            total += w.numel() * w.element_size() + 8
    return total


class _quantized_engine:
    def __init__(self, engine):
        self.engine = engine

    def __enter__(self):
        self.before = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine

    def __exit__(self, *exc):
        torch.backends.quantized.engine = self.before


def _quantize_dynamic(dense: nn.Module, engine: str) -> nn.Module:
    """A copy of `dense` with every projection (not lm_head) replaced by torch.ao's dynamic int8 Linear."""
    import warnings

    from .peers import Unavailable

    if next(dense.parameters()).dtype != torch.float32:
        raise Unavailable("quantize_dynamic takes a float32 model")
    if engine not in torch.backends.quantized.supported_engines:
        raise Unavailable(f"quantized engine {engine} is not in this torch build")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise Unavailable(f"torch.ao.quantization: {e}") from None
    names = {fqn for fqn, mod in dense.named_modules() if isinstance(mod, nn.Linear) and _not_lm_head(mod, fqn)}
    with _quantized_engine(engine), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation
        return quantize_dynamic(copy.deepcopy(dense), names, dtype=torch.qint8)


def _best_dense(runs: List[Dict]) -> Dict:
    """The first run's fields with, for prefill and for decode each, the timings of the fastest
    run and its dtype ("prefill_dtype", "decode_dtype")."""
    best = dict(runs[0])
    for what in ("prefill", "decode"):
        fastest = min(runs, key=lambda r: r[f"{what}_ms"])
        best.update({k: v for k, v in fastest.items() if k.startswith(what + "_") and "compiled" not in k})
        best[f"{what}_dtype"] = fastest["dtype"]
    compiled = [r for r in runs if r.get("decode_compiled_ms")]
    if compiled:  # the compiled decode: the faster dtype compiled (it may differ from the eager one)
        fastest = min(compiled, key=lambda r: r["decode_compiled_ms"])
        best["decode_compiled_ms"], best["decode_compiled_dtype"] = fastest["decode_compiled_ms"], fastest["dtype"]
    elif any("decode_compiled_error" in r for r in runs):
        best["decode_compiled_error"] = next(r["decode_compiled_error"] for r in runs if "decode_compiled_error" in r)
    return best


def _stored_weights(pruned: nn.Module, converted: nn.Module) -> nn.Module:
    """The pruned model with the weights each converted layer holds (int8 formats: dequantized):
    the exact reference for the kernels, quantization error left out."""
    ref = copy.deepcopy(pruned)
    for fqn, mod in converted.named_modules():
        if isinstance(mod, SparseLinear):
            ref.get_submodule(fqn).weight.copy_(mod.to_dense())
    return ref


def _tolerance(fmt: str, dtype: torch.dtype) -> float:
    """int8 and 2:4+int8 also quantize the activations (per token), which the reference does not: about
    1% per layer, 6% in the logits of two LLaMA-7B-sized layers; a wrong kernel is off by ~100%."""
    return 0.1 if fmt in ("int8", "2:4+int8") else (1e-3 if dtype == torch.float32 else 3e-2)


def _bench_variant(dense, desc, fmt, sp, base, batch, prompt, device, min_run_time, compile=None) -> Dict:
    """Checks the converted model against the pruned one holding the same weights, then times it;
    rel_error is against the pruned model itself (for int8 formats: the quantization error)."""
    dtype = next(dense.parameters()).dtype
    try:
        pruned, model, prune_s, convert_s = sparsify(dense, fmt, sp, device)
        ref = _logits(Runner(pruned, batch, prompt))
        exact = _logits(Runner(_stored_weights(pruned, model), batch, prompt)) if "int8" in fmt else ref
        del pruned
        m = _measure(model, batch, prompt, device, min_run_time, compile)
        check = max(rel_error(m[k], exact[k]) for k in exact)
        if not check <= _tolerance(fmt, dtype):
            raise AssertionError(f"converted model differs from the pruned model: relative error {check:.3g}")
    except (RuntimeError, NotImplementedError, ValueError, AssertionError) as e:
        return dict(desc, format=fmt, sparsity=sp, error=f"n/a ({short_error(e)})")
    sparsity = 0.5 if prune_pattern(fmt) == "2:4" else (sp or 0.0)
    err = max(rel_error(m[k], ref[k]) for k in ref)
    return _model_record(desc, fmt, sparsity, m, base, err, prune_s=prune_s, convert_s=convert_s)


def _model_record(desc, fmt, sparsity, m, base, err, **extra) -> Dict:
    rec = dict(desc, format=fmt, sparsity=sparsity, baseline_prefill_dtype=base["prefill_dtype"],
               baseline_decode_dtype=base["decode_dtype"], rel_error=err, **extra)
    batch = desc["batch"]
    for what in ("prefill", "decode"):
        rec[f"{what}_ms"], rec[f"dense_{what}_ms"] = m[f"{what}_ms"], base[f"{what}_ms"]
        rec[f"{what}_speedup"] = base[f"{what}_ms"] / m[f"{what}_ms"]
        g, bg = m.get(f"{what}_graph_ms"), base.get(f"{what}_graph_ms")
        rec[f"{what}_graph_ms"] = g
        if g and bg:
            rec[f"{what}_graph_speedup"] = bg / g
        if f"{what}_graph_error" in m:
            rec[f"{what}_graph_error"] = m[f"{what}_graph_error"]
    c, bc = m.get("decode_compiled_ms"), base.get("decode_compiled_ms")
    if c is not None or "decode_compiled_error" in m:
        rec["decode_compiled_ms"], rec["dense_decode_compiled_ms"] = c, bc
        if c and bc:
            rec["decode_compiled_speedup"] = bc / c
        if "decode_compiled_error" in m:
            rec["decode_compiled_error"] = m["decode_compiled_error"]
    best_decode_ms = min(v for v in (m["decode_ms"], m.get("decode_graph_ms")) if v)
    rec["decode_tok_s"] = batch / (best_decode_ms * 1e-3)
    rec.update(weight_bytes=m["weight_bytes"], dense_weight_bytes=base["weight_bytes"],
               peak_mem_bytes=m["peak_mem_bytes"])
    return rec
