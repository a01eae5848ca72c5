"""The bench's chains (--chain L) and its peers beyond PyTorch's sparse paths: quantize_dynamic
(fbgemm / onednn) and DeepSparse in a side process (bench/deepsparse_peer.py, _deepsparse_worker.py).
DeepSparse itself is needed only by the tests marked for the side virtualenv (`make peers`); the
others hand the bench a fake side python that speaks the worker's JSON protocol."""
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparsekit.bench import deepsparse_peer, peers
from sparsekit.bench.layer import bench_layer, layer_steps, parse_formats, parse_shapes
from sparsekit.bench.report import layer_table

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _side_python():
    py = os.environ.get("SPARSEKIT_PEERS_PYTHON") or str(ROOT / ".venv-peers" / "bin" / "python")
    if not os.access(py, os.X_OK):
        return None
    ok = subprocess.run([py, "-c", "import deepsparse, onnx"], capture_output=True).returncode == 0
    return py if ok else None


SIDE = _side_python()
needs_side = pytest.mark.skipif(SIDE is None, reason="no side virtualenv with deepsparse (make peers)")


@pytest.fixture
def no_side(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEKIT_PEERS_PYTHON", str(tmp_path / "nowhere" / "python"))


def _by(recs):
    return {(r["impl"], r["M"], r["sparsity"]): r for r in recs}


# ----------------------------------------------------------------------------- chains


def test_chain_semantics_sequence_and_same_input():
    g = torch.Generator().manual_seed(0)
    sq = [torch.randn(8, 8, generator=g) for _ in range(3)]
    x = torch.randn(2, 8, generator=g)
    assert peers.sequential(sq)
    torch.testing.assert_close(peers.reference(sq, x), x @ sq[0].t() @ sq[1].t() @ sq[2].t())
    rect = [torch.randn(6, 8, generator=g) for _ in range(2)]
    assert not peers.sequential(rect)
    torch.testing.assert_close(peers.reference(rect, x), torch.cat([x @ w.t() for w in rect], dim=1))
    fn, check = peers.chain([lambda a, w=w: F.linear(a, w) for w in rect], x, False)
    torch.testing.assert_close(fn(), x @ rect[1].t())  # the timed call returns the last output


@pytest.mark.parametrize("N,K", [(32, 32), (24, 32)])
def test_chain_runs_every_format_and_counts_all_layers(no_side, N, K):
    L = 3
    recs = bench_layer(N, K, [1, 3], [0.5], torch.float32, CPU, min_run_time=0.005, fmts=("csr", "auto", "int8"),
                       chain=L)
    assert [r["M"] for r in recs] == sorted(r["M"] for r in recs)  # ordered by M
    by = _by(recs)
    for M in (1, 3):
        dense = by[("dense", M, 0.0)]
        assert dense["chain"] == L and dense["weight_bytes"] == L * N * K * 4
        assert dense["bytes_moved"] == L * N * K * 4 + L * (M * K + M * N) * 4
        assert dense["tflops"] == pytest.approx(2 * M * N * K * L / (dense["ms"] * 1e-3) / 1e12)
        for impl in ("sparsekit-csr", "sparsekit-auto", "torch-csr"):
            r = by[(impl, M, 0.5)]
            assert "ms" in r, r  # checked against the chained reference before it was timed
        assert "ms" in by[("sparsekit-int8", M, 0.0)]
        assert len(by[("sparsekit-auto", M, 0.5)]["auto_formats"]) == L
        csr = by[("sparsekit-csr", M, 0.5)]
        assert csr["weight_bytes"] > L * (N * K // 2) * 8 * 0.9  # about L x (value + column index) per kept weight
    assert "(x3)" in layer_table(recs)


def test_chain_check_catches_a_peer_that_skips_layers(no_side, monkeypatch):
    def first_layer_only(wms, x):
        w = wms[0]
        return peers.Candidate(lambda: F.linear(x, w), peers._nbytes(*wms))

    monkeypatch.setattr(peers, "torch_csr", first_layer_only)
    by = _by(bench_layer(16, 16, [2], [0.5], torch.float32, CPU, min_run_time=0.005, fmts=("csr",), chain=2))
    assert by[("torch-csr", 2, 0.5)]["error"].startswith("n/a (AssertionError: torch-csr: relative error")
    assert "ms" in by[("sparsekit-csr", 2, 0.5)]


def test_chain_must_be_positive():
    with pytest.raises(ValueError, match="chain must be >= 1"):
        bench_layer(8, 8, [1], [0.5], torch.float32, CPU, chain=0)


def test_shapes_by_name():
    assert parse_shapes("llama2-7b") == parse_shapes("llama-7b") == [(4096, 4096), (11008, 4096), (4096, 11008)]
    assert parse_shapes("LLaMA-2-13B") == [(5120, 5120), (13824, 5120), (5120, 13824)]
    assert parse_shapes("llama3-8b") == [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]
    assert parse_shapes("llama-7b,llama3-8b,4096x4096") == [(4096, 4096), (11008, 4096), (4096, 11008),
                                                               (1024, 4096), (14336, 4096), (4096, 14336)]
    for bad in ("llama9", "4096x", "0x8", ""):
        with pytest.raises(ValueError):
            parse_shapes(bad)
    assert parse_formats("csr,auto") == ("csr", "auto")
    assert layer_steps(("csr", "auto", "int8"), [0.7, 0.9]) == 1 + 2 + 2 + 1


# ----------------------------------------------------------------------------- quantize_dynamic


def test_quantize_dynamic_rows(no_side):
    recs = bench_layer(32, 64, [1, 4], [0.5], torch.float32, CPU, min_run_time=0.005, fmts=("int8",), chain=2)
    by = _by(recs)
    for M in (1, 4):
        fb = by[("torch-quantize_dynamic-fbgemm", M, 0.0)]
        assert "ms" in fb and fb["weight_bytes"] == 2 * (32 * 64 + 8), fb
        one = by[("torch-quantize_dynamic-onednn", M, 0.0)]
        if "onednn" in torch.backends.quantized.supported_engines:
            assert "ms" in one, one
        else:
            assert one["error"].startswith("n/a (quantized engine onednn")


def test_quantize_dynamic_is_checked_and_leaves_the_engine(no_side):
    before = torch.backends.quantized.engine
    wms = [torch.randn(16, 32) / 32**0.5 for _ in range(2)]
    x = torch.randn(3, 32)
    c = peers.quantize_dynamic("fbgemm")(wms, x)
    err = ((c.check() - peers.reference(wms, x)).norm() / peers.reference(wms, x).norm()).item()
    assert 0 < err < c.tol
    assert torch.backends.quantized.engine == before
    with pytest.raises(peers.Unavailable, match="float32"):
        peers.quantize_dynamic("fbgemm")(wms, x.bfloat16())


# ----------------------------------------------------------------------------- DeepSparse


def test_deepsparse_is_na_with_a_reason_without_side_python(no_side):
    recs = bench_layer(16, 16, [1], [0.5], torch.float32, CPU, min_run_time=0.005, fmts=("csr",))
    ds = [r for r in recs if r["impl"].startswith("deepsparse")]
    assert [r["impl"] for r in ds] == ["deepsparse"] and "ms" not in ds[0]
    assert "SPARSEKIT_PEERS_PYTHON=" in ds[0]["error"] and "is not an executable python" in ds[0]["error"]
    assert "n/a (SPARSEKIT_PEERS_PYTHON" in layer_table(recs)
    # no DeepSparse rows without an unstructured format, or with --no-peers
    assert not [r for r in bench_layer(16, 16, [1], [0.5], torch.float32, CPU, min_run_time=0.005, fmts=("2:4",))
                if r["impl"].startswith("deepsparse")]
    assert not [r for r in bench_layer(16, 16, [1], [0.5], torch.float32, CPU, min_run_time=0.005, fmts=("csr",),
                                       peers=False) if r["impl"].startswith("deepsparse")]


def test_peers_python_default_and_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARSEKIT_PEERS_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(deepsparse_peer, "__file__", str(tmp_path / "a" / "b" / "c.py"))
    with pytest.raises(peers.Unavailable, match="make peers"):
        deepsparse_peer.peers_python()
    py = tmp_path / ".venv-peers" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("#!/bin/sh\n")
    py.chmod(0o755)
    assert deepsparse_peer.peers_python() == str(py)


FAKE_WORKER = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    print("DeepSparse, Copyright (fake banner)")
    mode = os.environ.get("FAKE_MODE", "ok")
    if mode == "crash":
        sys.stderr.write("Traceback ...\\nImportError: libdeepsparse.so: cannot open\\n")
        sys.exit(1)
    worker, spec_path = sys.argv[1:]
    assert worker.endswith("_deepsparse_worker.py"), worker
    spec = json.load(open(spec_path))
    if mode == "error":
        print(json.dumps({"ok": False, "error": "RuntimeError: engine compile failed"}))
        sys.exit(0)
    res = {}
    for name, files in spec["variants"].items():
        ws = [np.load(f) for f in files]
        res[name] = {}
        for M, xf in spec["inputs"].items():
            x = np.load(xf)
            if spec["sequence"]:
                y = x
                for w in ws:
                    y = y @ w.T
            else:
                y = np.concatenate([x @ w.T for w in ws], axis=1)
            if mode == "wrong":
                y = y + 1.0
            out = os.path.join(spec["dir"], "out_%s_%s.npy" % (name, M))
            np.save(out, y.astype(np.float32))
            res[name][M] = {"ms": 0.5 if name == "deepsparse" else 1.0, "out": out, "compile_s": 0.01}
    print(json.dumps({"ok": True, "deepsparse": "fake", "engine": "fake engine", "results": res,
                      "threads": spec["threads"]}))
''')


@pytest.fixture
def fake_side(monkeypatch, tmp_path):
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    py = tmp_path / "python"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{worker}" "$@"\n')
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("SPARSEKIT_PEERS_PYTHON", str(py))
    return monkeypatch


@pytest.mark.parametrize("N", [16, 12])
def test_deepsparse_protocol_with_a_fake_side_python(fake_side, N):
    recs = bench_layer(N, 16, [1, 3], [0.5, 0.9], torch.float32, CPU, min_run_time=0.005,
                       fmts=("csr", "bitmap"), chain=2)
    by = _by(recs)
    for M in (1, 3):
        dense = by[("deepsparse-dense", M, 0.0)]
        assert dense["ms"] == 1.0 and dense["weight_bytes"] is None and dense["bytes_cap"] is None
        for sp in (0.5, 0.9):
            r = by[("deepsparse", M, sp)]
            assert r["ms"] == 0.5 and r["peer_version"] == "deepsparse fake" and r["chain"] == 2
            assert r["speedup"] == pytest.approx(r["baseline_ms"] / 0.5)
    # once per sparsity, though csr and bitmap share the mask
    assert sum(r["impl"] == "deepsparse" for r in recs) == 2 * 2
    assert "| deepsparse | 0.500 |" in layer_table(recs)


@pytest.mark.parametrize("mode,message", [("wrong", "n/a (AssertionError: deepsparse: relative error"),
                                          ("error", "n/a (deepsparse: RuntimeError: engine compile failed)"),
                                          ("crash", "n/a (deepsparse worker exited 1: ImportError: libdeepsparse")])
def test_deepsparse_failures_become_na_rows(fake_side, mode, message):
    fake_side.setenv("FAKE_MODE", mode)
    recs = bench_layer(16, 16, [2], [0.5], torch.float32, CPU, min_run_time=0.005, fmts=("csr",))
    r = _by(recs)[("deepsparse", 2, 0.5)]
    assert "ms" not in r and r["error"].startswith(message), r


def test_worker_answers_json_on_bad_input(tmp_path):
    # the worker needs no deepsparse to report a bad spec: it prints {"ok": false, ...} and exits 0
    spec = tmp_path / "spec.json"
    spec.write_text("{not json")
    out = subprocess.run([sys.executable, str(deepsparse_peer.WORKER), str(spec)], capture_output=True, text=True)
    assert out.returncode == 0
    ans = deepsparse_peer._last_json(out.stdout)
    assert ans["ok"] is False and ans["error"].startswith("JSONDecodeError")
    assert deepsparse_peer._last_json("banner\n{\"ok\": true}\n") == {"ok": True}
    assert deepsparse_peer._last_json("no json") is None


def test_worker_imports_neither_torch_nor_sparsekit():
    imports = [line.split()[1] for line in deepsparse_peer.WORKER.read_text().splitlines()
               if line.strip().startswith(("import ", "from "))]
    assert imports and not [m for m in imports if m.split(".")[0] in ("torch", "sparsekit") or m.startswith(".")]


# ----------------------------------------------------------------------------- the real side virtualenv


@needs_side
@pytest.mark.parametrize("N", [32, 24])
def test_deepsparse_runs_the_chain(monkeypatch, N):
    monkeypatch.setenv("SPARSEKIT_PEERS_PYTHON", SIDE)
    recs = bench_layer(N, 32, [1, 5], [0.8], torch.float32, CPU, min_run_time=0.005, fmts=("csr",), chain=3)
    by = _by(recs)
    for M in (1, 5):
        for key in (("deepsparse-dense", M, 0.0), ("deepsparse", M, 0.8)):
            assert "ms" in by[key], by[key]  # built, compiled, checked against the reference, timed
            assert by[key]["peer_version"] == "deepsparse 1.8.0"
        # DeepSparse found the zeros: its kernel-sparse code for the pruned chain, dense GEMMs for the other
        assert "ks_" in by[("deepsparse", M, 0.8)]["deepsparse_kernels"], by[("deepsparse", M, 0.8)]
        assert "ks_" not in by[("deepsparse-dense", M, 0.0)]["deepsparse_kernels"]


@needs_side
def test_worker_graph_with_bias_and_external_data(tmp_path):
    """The ONNX graph the worker builds: MatMul (+ Add) per layer, a symbolic batch dimension, and the
    weights in a .data file once they pass EXTERNAL_BYTES (lowered here), which DeepSparse compiles."""
    code = textwrap.dedent(f'''
        import os, sys, numpy as np, onnx, deepsparse
        sys.path.insert(0, {str(deepsparse_peer.WORKER.parent)!r})
        import _deepsparse_worker as w
        w.EXTERNAL_BYTES = 0
        ws = [np.random.default_rng(i).standard_normal((64, 64)).astype(np.float32) for i in range(2)]
        b = np.arange(64, dtype=np.float32)
        p = w.build_onnx(ws, [None, b], True, {str(tmp_path / "m.onnx")!r})
        assert os.path.exists(p + ".data")
        m = onnx.load(p)
        assert [n.op_type for n in m.graph.node] == ["MatMul", "MatMul", "Add"], m.graph.node
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        x = np.random.default_rng(9).standard_normal((3, 64)).astype(np.float32)
        y = deepsparse.Engine(p, batch_size=3, num_cores=1).run([x])[0]
        ref = (x @ ws[0].T) @ ws[1].T + b
        assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max(), np.abs(y - ref).max()
        print("ok")
    ''')
    out = subprocess.run([SIDE, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


# ----------------------------------------------------------------------------- the model bench's peers


def _model_peer_records(arch):
    from sparsekit.bench.model import PRESETS, bench_model

    dims = dict(PRESETS["tiny"], vocab=128, kv_heads=2)  # grouped-query attention, as in LLaMA-3
    return bench_model(dims, ["csr"], [0.8], torch.float32, CPU, arch=arch, prompt=8, min_run_time=0.005, peers=True)


def test_model_peers_quantize_dynamic_and_deepsparse_na(no_side):
    recs = _model_peer_records("builtin")
    by = {(r["format"], r["sparsity"]): r for r in recs}
    fb = by[("torch-quantize_dynamic-fbgemm", 0.0)]
    assert "error" not in fb and 0 < fb["rel_error"] < 0.1 and fb["decode_tok_s"] > 0
    # the int8 weights in packed params are counted: about a quarter of the projections' float32 bytes
    dense = by[("dense", 0.0)]
    assert fb["weight_bytes"] < dense["weight_bytes"] and fb["weight_bytes"] > 128 * 128 * 4 * 2
    for key in (("deepsparse-dense", 0.0), ("deepsparse", 0.8)):
        assert by[key]["error"].startswith("n/a (SPARSEKIT_PEERS_PYTHON="), by[key]
    assert [r["format"] for r in recs if "error" not in r][:2] == ["dense", "csr"]


@needs_side
@pytest.mark.parametrize("arch", ["builtin", "llama"])
def test_model_peers_deepsparse_runs_the_exported_decoder(monkeypatch, arch):
    from sparsekit.bench.model import transformers_available

    if arch == "llama" and not transformers_available():
        pytest.skip("transformers is not installed")
    monkeypatch.setenv("SPARSEKIT_PEERS_PYTHON", SIDE)
    by = {(r["format"], r["sparsity"]): r for r in _model_peer_records(arch)}
    for key in (("deepsparse-dense", 0.0), ("deepsparse", 0.8)):
        r = by[key]
        # prefill and one decode step, both checked against the (pruned) model's logits before timing
        assert "error" not in r, r
        assert r["rel_error"] < 1e-3 and r["prefill_ms"] > 0 and r["decode_tok_s"] > 0
        assert r["peer_version"] == "deepsparse 1.8.0"
