"""DeepSparse side process for `sparsekit bench` (run with the peers virtualenv's python, not imported).

    python _deepsparse_worker.py SPEC.json    ->  one JSON object on the last line of stdout

It imports nothing from sparsekit or torch: only numpy, onnx and deepsparse, which the side
virtualenv of `make peers` has (deepsparse==1.8.0 brings onnx). SPEC.json says:

    {"variants": {"name": ["w0.npy", ...]},   # per variant, L weights (N x K float32, masked: zeros kept)
     "biases": null or {"name": ["b0.npy" or null, ...]},
     "sequence": true,                         # y = layer_L(...layer_1(x)); false: every layer reads x
     "inputs": {"M": "x_M.npy", ...},          # M x K float32 activations per batch size
     "threads": 2, "min_run_time": 0.3, "flush_bytes": 268435456, "dir": "/tmp/..."}

For each variant the worker builds an fp32 ONNX graph itself (per layer a MatMul with the
transposed weight, + Add for a bias; chained in sequence or all on the input), compiles
``deepsparse.Engine(model, batch_size=M, num_cores=threads)`` for every M, checks nothing (the
caller does) and times ``engine.run`` as sparsekit's timing.py does on the CPU: one warm-up call,
then the median of at least 7 calls (until min_run_time seconds, at most 200) with a buffer larger
than the last-level cache written before each. It writes each M's output (the last layer's, or in
the other mode all layers' outputs concatenated along the columns) to DIR/out_NAME_M.npy and prints

    {"ok": true, "deepsparse": "1.8.0", "engine": "...", "results": {"name": {"M": {"ms": .., "out": path,
     "compile_s": ..}}}}

or {"ok": false, "error": "..."} when something fails (exit code 0 either way when the JSON is
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
    return {"ok": True, "deepsparse": deepsparse.__version__, "engine": engine_desc, "results": results}


def main(argv):
    if len(argv) != 2:
        print(json.dumps({"ok": False, "error": "usage: _deepsparse_worker.py SPEC.json"}))
        return 2
    try:
        with open(argv[1]) as f:
            out = run(json.load(f))
    except Exception as e:  # reported to the caller as "n/a (reason)"
        traceback.print_exc(file=sys.stderr)
        lines = str(e).strip().splitlines()
        out = {"ok": False, "error": f"{type(e).__name__}: {lines[0][:200] if lines else ''}"}
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
