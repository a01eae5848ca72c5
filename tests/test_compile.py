"""Issue 19, item 3: torch.compile(fullgraph=True) of a converted 2-layer Llama runs on the CPU without graph
breaks and gives eager's output.

Compiling is slow on the 2-core CI machines, so one model carries every format at once: its 14 projections
(2 layers x q/k/v/o/gate/up/down) are converted round-robin to csr, bsr, bitmap, 2:4, int8, int8-wo and 2:4+int8
(each format twice), and that model is compiled per backend: aot_eager (dynamo + the fake kernels +
AOTAutograd; two shapes) and inductor (the real CPU path, C++ codegen: the slow one; M = 1 only). fullgraph=True
raises on any graph break. transformers'
LlamaForCausalLM from a tiny LlamaConfig when transformers imports, else the built-in decoder of
sparsekit/bench/model.py."""
import itertools

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.bench.model import TinyDecoder, transformers_available
from sparsekit.nn import SparseLinear

from conftest import requires_ext

FORMATS = ["csr", "bsr", "bitmap", "2:4", "int8", "int8-wo", "2:4+int8"]
DIMS = dict(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=2, vocab=128)


def _masks_and_overrides(model):
    fmts = itertools.cycle(FORMATS)
    masks, overrides = {}, {}
    g = torch.Generator().manual_seed(0)
    for fqn, m in model.named_modules():
        if not isinstance(m, nn.Linear) or "lm_head" in fqn:
            continue
        fmt = next(fmts)
        N, K = m.weight.shape
        if fmt.startswith("2:4"):
            mask = torch.zeros(N, K, dtype=torch.bool)
            mask[:, 1::4] = True
            mask[:, 2::4] = True
        elif fmt == "bsr":
            mask = (torch.rand(N // 16, K // 16, generator=g) < 0.5).repeat_interleave(16, 0).repeat_interleave(16, 1)
        else:
            mask = torch.rand(N, K, generator=g) < 0.5
        masks[fqn] = mask
        overrides[fqn] = {"format": fmt}
    return masks, overrides


def converted_llama():
    torch.manual_seed(0)
    if transformers_available():
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(hidden_size=DIMS["hidden"], intermediate_size=DIMS["intermediate"],
                          num_attention_heads=DIMS["heads"], num_key_value_heads=DIMS["kv_heads"],
                          num_hidden_layers=DIMS["layers"], vocab_size=DIMS["vocab"], max_position_embeddings=64,
                          attn_implementation="sdpa")
        model = LlamaForCausalLM(cfg).eval()

        def run(m, ids):
            return m(input_ids=ids, use_cache=False).logits
    else:
        model = TinyDecoder(**DIMS).eval()

        def run(m, ids):
            return m(ids)
    masks, overrides = _masks_and_overrides(model)
    sparsekit.convert(model, sparsekit.SparseConfig(format="csr", overrides=overrides),
                      filter_fn=lambda m, fqn: fqn in masks, masks=masks)
    return model, run


@requires_ext
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_converted_llama_fullgraph_matches_eager(backend):
    model, run = converted_llama()
    got = sorted({m.format for m in model.modules() if isinstance(m, SparseLinear)})
    assert got == sorted(FORMATS)
    torch._dynamo.reset()
    compiled = torch.compile(lambda ids: run(model, ids), fullgraph=True, backend=backend)
    with torch.no_grad():
        # aot_eager: a prompt, then one token (M = 1, decode's shape: a recompile with dynamic shapes through
        # the fake kernels); inductor (C++ codegen, about a minute on 2 cores): decode's shape only
        for T in (5, 1) if backend == "aot_eager" else (1,):
            ids = torch.randint(0, DIMS["vocab"], (1, T), generator=torch.Generator().manual_seed(T))
            want = run(model, ids)
            y = compiled(ids)
            assert y.shape == want.shape
            # the W8A8 layers quantize activations per token: the compiled graph may fuse the float math
            # around them differently, and a rounding flip moves a logit by one quantization step
            torch.testing.assert_close(y, want, rtol=2e-2, atol=2e-2)


@requires_ext
@pytest.mark.skipif(not transformers_available(), reason="transformers is not installed")
def test_generate_with_a_static_cache_runs_converted_layers():
    """The README's `generate(..., cache_implementation="static")` with every format converted: the static KV
    cache (what transformers compiles into CUDA graphs on a GPU) gives the same greedy tokens as the default
    cache. (On the CPU transformers does not compile the step; the graph-break-free trace is the test above.)"""
    model, _ = converted_llama()
    ids = torch.randint(0, DIMS["vocab"], (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        static = model.generate(ids, max_new_tokens=6, do_sample=False, cache_implementation="static", pad_token_id=0)
        dynamic = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert static.shape == (2, 11)
    assert torch.equal(static, dynamic)
