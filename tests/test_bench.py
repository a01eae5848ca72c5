"""sparsekit.bench: the model bench on both model paths, the progress bar, the records' fields,
the report, and PyTorch's peers reported as "n/a (reason)" where they cannot run."""
import io
import json

import pytest
import torch

from sparsekit.bench import peers
from sparsekit.bench.layer import bench_layer
from sparsekit.bench.model import PRESETS, TinyDecoder, bench_model, transformers_available
from sparsekit.bench.progress import Progress
from sparsekit.bench.report import report
from sparsekit.bench.timing import environment

CPU = torch.device("cpu")
TINY = dict(PRESETS["tiny"], vocab=128)


@pytest.fixture(autouse=True)
def _no_side_python(monkeypatch, tmp_path):
    """DeepSparse (a subprocess from the side virtualenv) has its own tests: test_bench_peers.py."""
    monkeypatch.setenv("SPARSEKIT_PEERS_PYTHON", str(tmp_path / "no-python"))


def _model_records(arch):
    return bench_model(TINY, ["csr", "2:4", "int8-wo", "2:4+int8"], [0.8], torch.float32, CPU, arch=arch, prompt=8,
                       min_run_time=0.01)


def _check_model_records(recs, arch):
    assert [r["format"] for r in recs] == ["dense", "csr", "2:4", "int8-wo", "2:4+int8"]
    assert all(r["arch"] == arch and r["prefill_M"] == 8 and "error" not in r for r in recs), recs
    dense, csr, s24, wo, s24q = recs
    assert dense["decode_speedup"] == 1.0 and dense["decode_tok_s"] > 0
    assert {dense["baseline_prefill_dtype"], dense["baseline_decode_dtype"]} <= {"float32", "bfloat16"}
    assert csr["sparsity"] == 0.8 and s24["sparsity"] == 0.5 and wo["sparsity"] == 0.0
    assert csr["rel_error"] < 1e-3 and s24["rel_error"] < 1e-3 and 0 < wo["rel_error"] < 5e-2
    assert s24q["sparsity"] == 0.5 and 0 < s24q["rel_error"] < 0.1
    # lm_head and embeddings stay dense; the pruned projections shrink
    assert csr["weight_bytes"] < dense["dense_weight_bytes"] and wo["weight_bytes"] < dense["dense_weight_bytes"]
    assert all(r["convert_s"] >= 0 and r["peak_mem_bytes"] is None for r in recs[1:])


@pytest.mark.skipif(not transformers_available(), reason="transformers is not installed")
def test_model_bench_transformers_llama():
    recs = _model_records("llama")
    _check_model_records(recs, "llama")
    assert recs[0]["model"].startswith("transformers Llama")


@pytest.mark.skipif(not transformers_available(), reason="transformers is not installed")
def test_model_bench_compiled_decode_column():
    """--compile: the decode step through torch.compile(fullgraph=True), dense and each format, checked
    against eager (aot_eager here: the same graph capture as inductor, without its minute of codegen)."""
    from sparsekit.bench.report import model_table

    recs = bench_model(TINY, ["csr", "int8"], [0.8], torch.float32, CPU, arch="llama", prompt=8,
                       min_run_time=0.01, compile="aot_eager")
    assert [r["format"] for r in recs] == ["dense", "csr", "int8"]
    for r in recs:
        assert "decode_compiled_error" not in r, r
        assert r["decode_compiled_ms"] > 0 and r["decode_compiled_speedup"] > 0
    assert recs[0]["decode_compiled_speedup"] == 1.0
    table = model_table(recs)
    assert "compiled decode speedup" in table and "1.00x" in table
    # without it, no column
    assert "compiled" not in model_table(_model_records("builtin"))


def test_model_bench_builtin_decoder():
    _check_model_records(_model_records("builtin"), "builtin")


def test_builtin_decode_step_matches_full_forward():
    torch.manual_seed(0)
    m = TinyDecoder(**TINY).eval()
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        cache = m.new_cache(2, 9)
        m(ids[:, :8], cache, 0)
        step = m(ids[:, 8:], cache, 8)
        torch.testing.assert_close(step, m(ids), rtol=1e-5, atol=1e-5)


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream,enabled,drawn", [(_Tty(), True, True), (_Tty(), False, False),
                                                  (io.StringIO(), True, False)])
def test_progress_draws_only_on_a_terminal(stream, enabled, drawn):
    with Progress(4, enabled=enabled, stream=stream) as p:
        for i in range(4):
            p.step(f"item {i}")
    text = stream.getvalue()
    assert ("4/4" in text and "[" + "#" * 24 + "]" in text) == drawn, text
    assert drawn or text == ""


def test_layer_records_have_fields_and_environment(tmp_path):
    recs = bench_layer(64, 96, [1, 5], [0.5], torch.float32, CPU, min_run_time=0.01, fmts=("csr", "int8"))
    timed = [r for r in recs if "ms" in r]
    assert {r["impl"] for r in timed} >= {"dense", "dense-bf16", "sparsekit-csr", "torch-csr", "sparsekit-int8"}
    for r in timed:
        moved = r["weight_bytes"] + (r["M"] * 96 + r["M"] * 64) * (2 if r["impl"] == "dense-bf16" else 4)
        assert r["bytes_moved"] == moved
        assert r["gbps"] == pytest.approx(moved / (r["ms"] * 1e-3) / 1e9)
        assert r["tflops"] == pytest.approx(2 * r["M"] * 64 * 96 / (r["ms"] * 1e-3) / 1e12)
        # the plain read of the same bytes, measured beside the row
        assert r["read_gbps"] > 0 and r["read_bw_ratio"] == pytest.approx(r["gbps"] / r["read_gbps"])
    env = environment(CPU)
    for key in ("device", "cpu_model", "cpu_threads", "torch", "cuda", "triton", "driver", "sparsekit",
                "sparsekit_commit", "transformers"):
        assert key in env
    assert env["torch"] == torch.__version__ and env["cpu_threads"] == torch.get_num_threads()


def test_unavailable_peers_are_reported_not_raised(monkeypatch):
    def broken(wm, x):
        raise peers.Unavailable("not in this build")

    monkeypatch.setattr(peers, "torch_csr", broken)
    recs = bench_layer(32, 64, [1], [0.5], torch.float32, CPU, min_run_time=0.01, fmts=("csr", "2:4", "int8-wo"))
    by = {r["impl"]: r for r in recs}
    assert by["torch-csr"]["error"] == "n/a (not in this build)" and "ms" not in by["torch-csr"]
    assert by["torch-2:4-semi-structured"]["error"] == "n/a (to_sparse_semi_structured runs on CUDA only)"
    if "ms" not in by["torchao-int8-wo"]:
        assert by["torchao-int8-wo"]["error"].startswith("n/a (torchao")
    assert "ms" in by["sparsekit-csr"] and "ms" in by["sparsekit-2:4"]


def test_report_writes_markdown_and_plots(tmp_path):
    layer = tmp_path / "layer.jsonl"
    recs = bench_layer(32, 64, [1, 4], [0.5, 0.9], torch.float32, CPU, min_run_time=0.01, fmts=("csr", "2:4"))
    layer.write_text("".join(json.dumps(dict(r, env=environment(CPU))) + "\n" for r in recs))
    text = report(str(layer), str(tmp_path / "out"))
    assert "| 32x64 | 4 | 90% | sparsekit-csr |" in text and "n/a (to_sparse_semi_structured" in text
    assert "| GB/s | of read BW | TFLOP/s |" in text
    csr = next(r for r in recs if r["impl"] == "sparsekit-csr" and r["M"] == 4 and r["sparsity"] == 0.9)
    assert f"| {csr['gbps']:.1f} | {csr['read_bw_ratio']:.0%} | {csr['tflops']:.3f} |" in text
    assert (tmp_path / "out" / "layer.md").read_text() == text
    for png in ("layer_vs_sparsity.png", "layer_vs_m.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    model = tmp_path / "model.jsonl"
    model.write_text("".join(json.dumps(r) + "\n" for r in _model_records("builtin")))
    text = report(str(model), str(tmp_path / "out"))
    assert "prefill ms (M=8)" in text and "| int8-wo | 0% |" in text
    assert (tmp_path / "out" / "model_speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_run_cpu_repeat_keeps_the_median_run_per_row():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("run_cpu", Path(__file__).resolve().parents[1] / "bench" / "run_cpu.py")
    run_cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_cpu)

    def rec(impl, ms, run):
        return dict(N=8, K=8, M=1, sparsity=0.0 if impl == "dense" else 0.9, impl=impl, ms=ms, baseline="dense",
                    baseline_ms=None, speedup=None, run=run)

    runs = [[rec("dense", d, i), rec("sparsekit-csr", c, i), dict(rec("torch-csr", None, i), error="n/a")]
            for i, (d, c) in enumerate([(3.0, 1.0), (1.0, 5.0), (2.0, 2.0)])]
    out = run_cpu.median_of_runs(runs)
    assert [r["impl"] for r in out] == ["dense", "sparsekit-csr", "torch-csr"]
    dense, csr, peer = out
    assert dense["ms"] == 2.0 and dense["run"] == 2 and dense["speedup"] == 1.0
    assert csr["ms"] == 2.0 and csr["run"] == 2 and csr["baseline_ms"] == 2.0 and csr["speedup"] == 1.0
    assert peer["ms"] is None and peer["error"] == "n/a"
    assert run_cpu.median_of_runs(runs[:1]) is runs[0]


def test_the_demo_ends_with_one_sentence_on_what_was_gained():
    from sparsekit.bench.report import gained_sentence

    dense = dict(format="dense", sparsity=0.0, decode_tok_s=10.0, decode_speedup=1.0, prefill_speedup=1.0,
                 weight_bytes=400, baseline_prefill_dtype="bfloat16", baseline_decode_dtype="bfloat16")
    slow = dict(dense, format="2:4", sparsity=0.5, decode_tok_s=8.0, decode_speedup=0.8, weight_bytes=300)
    fast = dict(dense, format="bsr:32", sparsity=0.9, decode_tok_s=25.0, decode_speedup=2.5, prefill_speedup=3.0,
                weight_bytes=100)
    broken = dict(format="csr", sparsity=0.9, error="n/a (why)")
    peer = dict(fast, format="deepsparse", decode_speedup=9.0)
    line = gained_sentence([dense, slow, fast, broken, peer, dict(peer, format="torch-quantize_dynamic-fbgemm")])
    assert line.startswith("Gained: with bsr:32 at 90% sparsity") and "2.50x" in line and "4.0x fewer" in line
    assert "as fast as dense bfloat16 (25.0 against 10.0 tokens/s)" in line and "\n" not in line
    assert gained_sentence([dense, slow]).startswith("Gained nothing here: the best format, 2:4")
    assert gained_sentence([dense, broken]).startswith("No sparse format ran here")
