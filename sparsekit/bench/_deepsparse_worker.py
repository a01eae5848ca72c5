"""DeepSparse side process for `sparsekit bench` (run with the peers virtualenv's python, not imported).

    python _deepsparse_worker.py SPEC.json    ->  one JSON object on the last line of stdout

It imports nothing from sparsekit or torch: only numpy, onnx and deepsparse, which the side
virtualenv of `make peers` has (deepsparse==1.8.0 brings onnx). SPEC.json says:

    {"variants": {"name": ["w0.npy", ...]},   # per variant, L weights (N x K float32, masked: zeros kept)
     "biases": null or {"name": ["b0.npy" or null, ...]},
     "sequence": true,                         # y = layer_L(...layer_1(x)); false: every layer reads x
     "inputs": {"M": "x_M.npy", ...},          # M x K float32 activations per batch size
     "threads": 2, "min_run_time": 0.3, "flush_bytes": 268435456, "dir": "/tmp/...",
     "kernels": true}                          # also say which kernels DeepSparse compiled (sparse or dense)

For each variant the worker builds an fp32 ONNX graph itself (per layer a MatMul with the
transposed weight, + Add for a bias; chained in sequence or all on the input), compiles
``deepsparse.Engine(model, batch_size=M, num_cores=threads)`` for every M, checks nothing (the
caller does) and times ``engine.run`` as sparsekit's timing.py does on the CPU: one warm-up call,
then the median of at least 7 calls (until min_run_time seconds, at most 200) with a buffer larger
than the last-level cache written before each. It writes each M's output (the last layer's, or in
the other mode all layers' outputs concatenated along the columns) to DIR/out_NAME_M.npy and prints

    {"ok": true, "deepsparse": "1.8.0", "engine": "...", "results": {"name": {"M": {"ms": .., "out": path,
     "compile_s": ..}}}}

With "model" in SPEC.json instead of "variants" it builds a LLaMA-shaped decoder (model_graphs:
prefill over the prompt and one decode step against the prompt's keys and values) and times both;
see run_model.

Either prints {"ok": false, "error": "..."} when something fails (exit code 0 either way when the JSON is
written; the caller turns an error into an "n/a (reason)" row).
"""
import json
import os
import statistics
import sys
import time
import traceback


#: graphs whose weights pass this many bytes keep them in PATH.data beside the graph (protobuf stops at 2 GiB)
EXTERNAL_BYTES = 1 << 30


def build_onnx(weights, biases, sequence, path):
    """Writes the fp32 ONNX graph of the chain to `path` (weights as external data when large)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    N0, K = weights[0].shape
    nodes, inits, outputs = [], [], []
    prev = "x"
    for i, w in enumerate(weights):
        N = w.shape[0]
        if w.shape[1] != (K if not sequence or i == 0 else weights[i - 1].shape[0]):
            raise ValueError(f"layer {i}: weight {w.shape} does not fit the chain")
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T.astype(np.float32)), f"w{i}"))
        out = f"y{i}"
        b = None if biases is None else biases[i]
        if b is None:
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        else:
            inits.append(numpy_helper.from_array(b.astype(np.float32), f"b{i}"))
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out]))
        if sequence:
            prev = out
        else:
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", N]))
    if sequence:
        outputs = [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", weights[-1].shape[0]])]
    graph = helper.make_graph(nodes, "sparsekit_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="sparsekit")
    model.ir_version = 8
    if sum(w.nbytes for w in weights) > EXTERNAL_BYTES:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data", size_threshold=1024)
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, path)
    return path


class _Graph:
    """A small onnx.helper front end: named constants and nodes with generated output names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, array, name=None):
        import numpy as np
        from onnx import numpy_helper

        self.n += 1
        name = name or f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, *inputs, **attrs):
        from onnx import helper

        self.n += 1
        out = f"{op_type.lower()}{self.n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def _decoder(g, cfg, w, x_ids, T, past, cos, sin, mask):
    """Nodes of the decoder on token ids `x_ids` ([B, T]) -> (last position's logits, [(k, v) per layer]);
    `past`: [(k, v)] names of the cached keys and values or None; cos / sin: names of [1, 1, T, hd] or None."""
    import numpy as np

    B, D, H, KVH = cfg["batch"], cfg["hidden"], cfg["heads"], cfg["kv_heads"]
    hd, rep = D // H, H // KVH
    eps = g.const(np.array(cfg["eps"], np.float32))

    def norm(x, weight):
        var = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
        return g.op("Mul", g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, eps)))), weight)

    def linear(x, name):
        return g.op("MatMul", x, w[name])

    def heads(x, n):  # [B, T, n * hd] -> [B, n, T, hd]
        return g.op("Transpose", g.op("Reshape", x, g.const(np.array([B, T, n, hd], np.int64))), perm=[0, 2, 1, 3])

    def rope(x):
        if cos is None:
            return x
        half = hd // 2
        x1 = g.op("Slice", x, g.const(np.array([0], np.int64)), g.const(np.array([half], np.int64)),
                  g.const(np.array([3], np.int64)))
        x2 = g.op("Slice", x, g.const(np.array([half], np.int64)), g.const(np.array([hd], np.int64)),
                  g.const(np.array([3], np.int64)))
        rot = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rot, sin))

    x = g.op("Gather", w["embed"], x_ids, axis=0)  # [B, T, D]
    present = []
    for i in range(cfg["layers"]):
        p = f"layers.{i}."
        h = norm(x, w[p + "norm1"])
        q = rope(heads(linear(h, p + "q"), H))
        k = rope(heads(linear(h, p + "k"), KVH))
        v = heads(linear(h, p + "v"), KVH)
        present.append((k, v))
        if past is not None:
            k = g.op("Concat", past[i][0], k, axis=2)
            v = g.op("Concat", past[i][1], v, axis=2)
        S = T + (0 if past is None else cfg["prompt"])
        if rep > 1:  # grouped-query attention: each key / value head serves `rep` query heads in a row
            shape = g.const(np.array([B, KVH, rep, S, hd], np.int64))
            flat = g.const(np.array([B, H, S, hd], np.int64))
            axis = g.const(np.array([2], np.int64))  # opset 13: Unsqueeze takes its axes as an input
            k = g.op("Reshape", g.op("Expand", g.op("Unsqueeze", k, axis), shape), flat)
            v = g.op("Reshape", g.op("Expand", g.op("Unsqueeze", v, axis), shape), flat)
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])),
                      g.const(np.array(1.0 / hd**0.5, np.float32)))
        if mask is not None:
            scores = g.op("Add", scores, mask)
        a = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        a = g.op("Reshape", g.op("Transpose", a, perm=[0, 2, 1, 3]), g.const(np.array([B, T, D], np.int64)))
        x = g.op("Add", x, linear(a, p + "o"))
        h = norm(x, w[p + "norm2"])
        gate = linear(h, p + "gate")
        x = g.op("Add", x, linear(g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), linear(h, p + "up")),
                                  p + "down"))
    last = x if T == 1 else g.op("Slice", x, g.const(np.array([T - 1], np.int64)), g.const(np.array([T], np.int64)),
                                  g.const(np.array([1], np.int64)))
    return g.op("MatMul", norm(last, w["norm"]), w["lm_head"]), present


def model_graphs(cfg, tensors, d):
    """Writes prefill.onnx ([B, prompt] ids -> last logits and every layer's keys and values) and
    decode.onnx (one token at position `prompt` with the cached keys and values) to `d`.

    cfg: batch, prompt, hidden, heads, kv_heads, layers, eps; tensors: {name: array}: embed [V, D],
    norm, lm_head [V, D], and per layer "layers.i." + norm1, norm2, q, k, v, o, gate, up, down (the
    nn.Linear weights, N x K), plus cos_prefill / sin_prefill [prompt, hd] and cos_decode / sin_decode
    [1, hd] for rotary embeddings (absent: none, as in the built-in decoder)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    B, P, KVH, hd = cfg["batch"], cfg["prompt"], cfg["kv_heads"], cfg["hidden"] // cfg["heads"]
    paths = {}
    for what in ("prefill", "decode"):
        g = _Graph()
        w = {}
        for name, t in tensors.items():
            if name.startswith(("cos_", "sin_")):
                continue
            # linear weights are transposed for MatMul (x @ W^T); the embedding is gathered as it is
            w[name] = g.const(t.T if t.ndim == 2 and name != "embed" else t, name.replace(".", "_"))
        T = P if what == "prefill" else 1
        rope = {}
        for c in ("cos", "sin"):
            t = tensors.get(f"{c}_{what}")
            rope[c] = None if t is None else g.const(t.reshape(1, 1, T, hd).astype(np.float32), f"{c}_{what}")
        inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [B, T])]
        past, mask = None, None
        if what == "decode":
            past = [(f"past_k{i}", f"past_v{i}") for i in range(cfg["layers"])]
            for k, v in past:
                inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, KVH, P, hd]) for n in (k, v)]
        else:
            mask = g.const(np.triu(np.full((T, T), -1e9, np.float32), 1))
        logits, present = _decoder(g, cfg, w, "ids", T, past, rope["cos"], rope["sin"], mask)
        V = tensors["lm_head"].shape[0]
        outputs = [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [B, 1, V])]
        if what == "prefill":
            outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, KVH, T, hd])
                        for kv in present for n in kv]
        graph = helper.make_graph(g.nodes, f"sparsekit_{what}", inputs, outputs, g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="sparsekit")
        model.ir_version = 8
        paths[what] = os.path.join(d, f"{what}.onnx")
        if sum(t.nbytes for t in tensors.values()) > EXTERNAL_BYTES:
            onnx.save_model(model, paths[what], save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{what}.onnx.data", size_threshold=1024)
        else:
            onnx.checker.check_model(model)
            onnx.save_model(model, paths[what])
    return paths


def run_model(spec):
    """Builds the decoder's two graphs from spec["model"] (cfg, {name: .npy}), compiles both with
    batch_size = batch and times them: prefill on spec ids, decode on the token after them with the
    prefill's keys and values. Writes the logits of each to DIR/logits_prefill.npy, logits_step.npy."""
    import numpy as np
    import deepsparse

    d, m = spec["dir"], spec["model"]
    cfg = m["cfg"]
    tensors = {name: np.load(f) for name, f in m["tensors"].items()}
    paths = model_graphs(cfg, tensors, d)
    del tensors
    ids, tok = np.load(m["ids"]).astype(np.int64), np.load(m["tok"]).astype(np.int64)
    threads, mrt = int(spec.get("threads", 1)), float(spec.get("min_run_time", 0.3))
    flush = int(spec.get("flush_bytes", 256 * 2**20))
    out = {"ok": True, "deepsparse": deepsparse.__version__}
    # one engine at a time: each holds its own copy of every weight (two at once ran out of memory at
    # llama-7b's size on a 24 GiB machine)
    t0 = time.perf_counter()
    prefill = deepsparse.Engine(paths["prefill"], batch_size=cfg["batch"], num_cores=threads)
    out["compile_s"] = time.perf_counter() - t0
    out["engine"] = " ".join(str(prefill).split())
    first = prefill.run([ids])
    out["prefill_ms"] = _median_ms(lambda: prefill.run([ids]), mrt, flush)
    del prefill
    past = [np.ascontiguousarray(a) for a in first[1:]]
    step_inputs = [tok] + past
    t0 = time.perf_counter()
    decode = deepsparse.Engine(paths["decode"], batch_size=cfg["batch"], num_cores=threads)
    out["compile_s"] += time.perf_counter() - t0
    step = decode.run(step_inputs)
    out["decode_ms"] = _median_ms(lambda: decode.run(step_inputs), mrt, flush)
    del decode
    for name, y in (("logits_prefill", first[0]), ("logits_step", step[0])):
        out[name] = os.path.join(d, name + ".npy")
        np.save(out[name], y)
    return out


_FLUSH = None


def _median_ms(fn, min_run_time, flush_bytes):
    import numpy as np

    global _FLUSH
    if _FLUSH is None:
        _FLUSH = np.empty(flush_bytes // 4, dtype=np.float32)
    fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < 7 or (time.perf_counter() - start < min_run_time and len(samples) < 200):
        _FLUSH.fill(1.0)
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def kernels(path, x, threads):
    """What DeepSparse compiled the graph's layers to (deepsparse.engine.model_debug_analysis, one
    iteration): e.g. "ks_gevm_be-89.8% x8" where it runs kernel-sparse code, the dense "gemm" else."""
    from collections import Counter

    from deepsparse.engine import model_debug_analysis

    found = []

    def walk(o):
        if isinstance(o, dict):
            name = o.get("name")
            if isinstance(name, str) and ("gemm" in name or "gevm" in name or o.get("kernel_sparsity")):
                found.append(name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(model_debug_analysis(path, [x], batch_size=x.shape[0], num_cores=threads, num_iterations=1,
                              num_warmup_iterations=0))
    return ", ".join(f"{k} x{n}" for k, n in Counter(found).items()) or "no gemm found"


def run(spec):
    import numpy as np
    import deepsparse

    d = spec["dir"]
    sequence = bool(spec.get("sequence", True))
    threads = int(spec.get("threads", 1))
    inputs = {int(m): np.load(p) for m, p in spec["inputs"].items()}
    results, engine_desc = {}, None
    for name, files in spec["variants"].items():
        weights = [np.load(f) for f in files]
        bfiles = (spec.get("biases") or {}).get(name)
        biases = None if bfiles is None else [None if f is None else np.load(f) for f in bfiles]
        path = build_onnx(weights, biases, sequence, os.path.join(d, f"{name}.onnx"))
        del weights
        results[name] = {}
        for M, x in sorted(inputs.items()):
            t0 = time.perf_counter()
            engine = deepsparse.Engine(path, batch_size=M, num_cores=threads)
            compile_s = time.perf_counter() - t0
            engine_desc = engine_desc or " ".join(str(engine).split())
            x = np.ascontiguousarray(x, dtype=np.float32)
            outs = engine.run([x])
            y = outs[0] if sequence else np.concatenate(outs, axis=1)
            out = os.path.join(d, f"out_{name}_{M}.npy")
            np.save(out, y)
            ms = _median_ms(lambda: engine.run([x]), float(spec.get("min_run_time", 0.3)),
                            int(spec.get("flush_bytes", 256 * 2**20)))
            results[name][str(M)] = {"ms": ms, "out": out, "compile_s": compile_s}
            del engine
            if spec.get("kernels"):
                try:
                    results[name][str(M)]["kernels"] = kernels(path, x, threads)
                except Exception as e:  # an analysis that fails says so; the timing stands
                    results[name][str(M)]["kernels"] = f"unknown ({type(e).__name__}: {str(e)[:80]})"
    return {"ok": True, "deepsparse": deepsparse.__version__, "engine": engine_desc, "results": results}


def main(argv):
    if len(argv) != 2:
        print(json.dumps({"ok": False, "error": "usage: _deepsparse_worker.py SPEC.json"}))
        return 2
    try:
        with open(argv[1]) as f:
            spec = json.load(f)
        out = run_model(spec) if "model" in spec else run(spec)
    except Exception as e:  # reported to the caller as "n/a (reason)"
        traceback.print_exc(file=sys.stderr)
        lines = str(e).strip().splitlines()
        out = {"ok": False, "error": f"{type(e).__name__}: {lines[0][:200] if lines else ''}"}
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
