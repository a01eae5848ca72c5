"""DeepSparse 1.8.0 as a peer of sparsekit's unstructured formats on the CPU (BENCHMARKING.md rule 3).

DeepSparse (Neural Magic's sparse CPU engine, deprecated after 1.8.0) runs fp32 ONNX graphs and
finds the zeros in their weights itself. It does not live in sparsekit's environment: `make peers`
creates a side virtualenv (.venv-peers) with deepsparse==1.8.0, and this module runs
``_deepsparse_worker.py`` with that virtualenv's python in a subprocess, handing it the masked
weights and the activations as .npy files in a temporary folder. The worker builds the ONNX graph
(per layer a MatMul with the transposed weight, chained as the bench chains its layers), compiles
an Engine per batch size with the thread count of this process, times it as timing.py does and
writes the outputs back, which are checked here against the reference before a time is reported.

The side python: $SPARSEKIT_PEERS_PYTHON, else .venv-peers/bin/python in the current folder or in
the source checkout sparsekit runs from. When none is found, or the worker fails, the peer is
:class:`Unavailable` with the reason (the table prints "n/a (reason)").
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .peers import Unavailable

WORKER = Path(__file__).with_name("_deepsparse_worker.py")
ENV_VAR = "SPARSEKIT_PEERS_PYTHON"


def peers_python() -> str:
    """The side virtualenv's python; raises Unavailable with the reason when there is none."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise Unavailable(f"{ENV_VAR}={explicit} is not an executable python")
        return explicit
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        py = root / ".venv-peers" / "bin" / "python"
        if py.is_file() and os.access(py, os.X_OK):
            return str(py)
    raise Unavailable(f"no side virtualenv: run `make peers` (deepsparse==1.8.0 in .venv-peers) or set {ENV_VAR}")


def run_deepsparse(variants: Dict[str, Sequence[torch.Tensor]], xs: Dict[int, torch.Tensor], sequence: bool,
                   threads: Optional[int] = None, min_run_time: float = 0.3, timeout: float = 3600.0,
                   python: Optional[str] = None) -> Dict:
    """Times DeepSparse on each variant (a list of L weights, N x K) at every M of `xs`.

    Returns {"version": str, "engine": str, "results": {name: {M: {"ms": float, "out": tensor, "compile_s":
    float}}}} with "out" the last layer's output (sequence) or all layers' outputs side by side; raises
    Unavailable with the reason when the side python is missing or the worker fails."""
    import numpy as np

    python = python or peers_python()
    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="sparsekit-deepsparse-") as d:
        spec = {"variants": {}, "sequence": bool(sequence), "inputs": {}, "threads": int(threads),
                "min_run_time": float(min_run_time), "dir": d, "kernels": True,
                "flush_bytes": int(os.environ.get("SPARSEKIT_FLUSH_BYTES", 256 * 2**20))}
        for name, ws in variants.items():
            files: List[str] = []
            for i, w in enumerate(ws):
                files.append(os.path.join(d, f"{name}_w{i}.npy"))
                np.save(files[-1], w.detach().float().cpu().contiguous().numpy())
            spec["variants"][name] = files
        for M, x in xs.items():
            spec["inputs"][str(M)] = os.path.join(d, f"x_{M}.npy")
            np.save(spec["inputs"][str(M)], x.detach().float().cpu().contiguous().numpy())
        out = _call(python, spec, d, timeout)
        results = {name: {int(M): dict(r, out=torch.from_numpy(np.load(r["out"]))) for M, r in per_m.items()}
                   for name, per_m in out["results"].items()}
    return {"version": out.get("deepsparse"), "engine": out.get("engine"), "results": results}


def decoder_tensors(model: torch.nn.Module, prompt: int) -> tuple:
    """(cfg, {name: tensor}) of a LLaMA-shaped decoder for the worker's model_graphs: transformers'
    LlamaForCausalLM (rotary embeddings from its own rotary_emb at positions 0..prompt) or the
    built-in TinyDecoder (no rotary embedding). Linear weights as the model holds them (pruned:
    zeros in place). Raises Unavailable for anything else (say so rather than export it wrongly)."""
    from .model import TinyDecoder

    if isinstance(model, TinyDecoder):
        blocks, inner, names = model.layers, model, dict(norm1="norm1", norm2="norm2", q="q_proj", k="k_proj",
                                                         v="v_proj", o="o_proj", gate="gate_proj", up="up_proj",
                                                         down="down_proj")
        heads, kv_heads = blocks[0].heads, blocks[0].kv_heads
        eps = blocks[0].norm1.eps or torch.finfo(torch.float32).eps
    elif type(model).__name__ == "LlamaForCausalLM":
        c = model.config
        if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False) or c.hidden_act != "silu":
            raise Unavailable("this Llama has biases or another activation: not exported")
        inner = model.model
        blocks = inner.layers
        names = dict(norm1="input_layernorm", norm2="post_attention_layernorm", q="self_attn.q_proj",
                     k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj", gate="mlp.gate_proj",
                     up="mlp.up_proj", down="mlp.down_proj")
        heads, kv_heads, eps = c.num_attention_heads, c.num_key_value_heads, c.rms_norm_eps
    else:
        raise Unavailable(f"{type(model).__name__} is not exported (LlamaForCausalLM and the built-in decoder are)")
    f32 = lambda t: t.detach().float().cpu()  # noqa: E731
    tensors = {"embed": f32(inner.embed_tokens.weight), "norm": f32(inner.norm.weight),
               "lm_head": f32(model.lm_head.weight)}
    for i, b in enumerate(blocks):
        for key, attr in names.items():
            mod = b.get_submodule(attr)
            tensors[f"layers.{i}.{key}"] = f32(mod.weight)
    if not isinstance(model, TinyDecoder):
        x = tensors["embed"][:1].unsqueeze(0)
        for what, pos in (("prefill", torch.arange(prompt)), ("decode", torch.tensor([prompt]))):
            cos, sin = inner.rotary_emb(x, pos.unsqueeze(0))
            tensors[f"cos_{what}"], tensors[f"sin_{what}"] = f32(cos[0]), f32(sin[0])
    cfg = dict(hidden=tensors["embed"].shape[1], heads=heads, kv_heads=kv_heads, layers=len(blocks), eps=float(eps))
    return cfg, tensors


def run_deepsparse_model(model: torch.nn.Module, ids: torch.Tensor, tok: torch.Tensor, threads: Optional[int] = None,
                         min_run_time: float = 0.3, timeout: float = 3600.0, python: Optional[str] = None) -> Dict:
    """Prefill (ids: [batch, prompt]) and one decode step (tok: [batch, 1] at position prompt, against
    the prompt's keys and values) of `model` by DeepSparse, from fp32 ONNX graphs the worker builds
    from the weights. Returns {"prefill_ms", "decode_ms", "logits_prefill", "logits_step", "version",
    "compile_s"}; raises Unavailable with the reason where it cannot run."""
    import numpy as np

    python = python or peers_python()
    batch, prompt = ids.shape
    cfg, tensors = decoder_tensors(model, prompt)
    cfg.update(batch=int(batch), prompt=int(prompt))
    with tempfile.TemporaryDirectory(prefix="sparsekit-deepsparse-") as d:
        files = {}
        for name, t in tensors.items():
            files[name] = os.path.join(d, f"t_{name}.npy")
            np.save(files[name], t.contiguous().numpy())
        spec = {"model": {"cfg": cfg, "tensors": files, "ids": os.path.join(d, "ids.npy"),
                          "tok": os.path.join(d, "tok.npy")},
                "threads": int(threads or torch.get_num_threads()), "min_run_time": float(min_run_time), "dir": d,
                "flush_bytes": int(os.environ.get("SPARSEKIT_FLUSH_BYTES", 256 * 2**20))}
        np.save(spec["model"]["ids"], ids.cpu().numpy().astype(np.int64))
        np.save(spec["model"]["tok"], tok.cpu().numpy().astype(np.int64))
        out = _call(python, spec, d, timeout)
        return {"prefill_ms": out["prefill_ms"], "decode_ms": out["decode_ms"], "version": out.get("deepsparse"),
                "compile_s": out.get("compile_s"),
                "logits_prefill": torch.from_numpy(np.load(out["logits_prefill"])),
                "logits_step": torch.from_numpy(np.load(out["logits_step"]))}


def _call(python: str, spec: dict, d: str, timeout: float) -> dict:
    """Runs the worker on `spec` (written to d/spec.json); its JSON answer, or Unavailable with the reason."""
    with open(os.path.join(d, "spec.json"), "w") as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([python, str(WORKER), os.path.join(d, "spec.json")], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"deepsparse worker ran past {timeout:.0f} s") from None
    except OSError as e:
        raise Unavailable(f"cannot run {python}: {e}") from None
    out = _last_json(proc.stdout)
    if out is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        why = " (SIGKILL: out of memory?)" if proc.returncode == -9 else ""
        raise Unavailable(f"deepsparse worker exited {proc.returncode}{why}: {tail}")
    if not out.get("ok"):
        raise Unavailable(f"deepsparse: {out.get('error', 'failed')}")
    return out


def _last_json(stdout: str) -> Optional[dict]:
    """The worker's answer: the last line of stdout that parses as a JSON object (DeepSparse prints a banner)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None
