"""bench/gpu_goals.py: the GPU-speed and host-time goals checked cell by cell on a run's JSON lines (synthetic
records here: the script reads what `sparsekit bench layer` / `bench model` write on a GPU)."""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import gpu_goals  # noqa: E402

ENV = {"device": "NVIDIA H200", "sparsekit_commit": "abc1234"}


def layer(fmt, M, graph, eager=None, sparsity=0.0, N=14336, K=4096, dtype="bfloat16", device="cuda", **kw):
    r = dict(N=N, K=K, M=M, dtype=dtype, device=device, impl=f"sparsekit-{fmt}", sparsity=sparsity,
             speedup=eager if eager is not None else graph, graph_speedup=graph, gbps=2500.0, read_bw_ratio=0.62,
             bytes_cap=1.78, env=ENV)
    r.update(kw)
    return r


def model(fmt, sparsity, decode_graph, compiled=None, prefill=None):
    return dict(device="cuda", dtype="float16", arch="llama", batch=1, prompt=2048, prefill_M=2048, format=fmt,
                sparsity=sparsity, decode_graph_speedup=decode_graph, decode_graph_ms=0.5,
                decode_compiled_speedup=compiled, prefill_graph_speedup=prefill, env=ENV)


def by(rows, goal, what):
    return [r for r in rows if r["goal"] == goal and r["what"] == what]


def test_layer_cells_against_the_goal_of_their_m_bucket():
    rows = gpu_goals.layer_checks([
        layer("2:4", 1, 1.6), layer("2:4", 7, 1.1), layer("2:4", 333, 1.2), layer("2:4", 2048, 1.2),
        layer("bitmap", 16, 3.2, sparsity=0.9), layer("bitmap", 16, 1.4, sparsity=0.7),
        layer("bitmap", 16, 9.0, sparsity=0.5),          # no goal at 50 %
        layer("bitmap", 333, 0.1, sparsity=0.7),         # none above M = 16 either (auto's business)
        layer("bsr:64", 2048, 4.1, sparsity=0.9), layer("bsr:32", 1, 1.0, sparsity=0.9),
    ])
    speed = {(r["what"], r["cell"]): (r["met"], r["need"]) for r in rows if r["goal"] == "layer speed (graphs)"}
    assert speed == {
        ("2:4", "bfloat16 14336x4096 M=1"): (True, 1.5), ("2:4", "bfloat16 14336x4096 M=7"): (False, 1.3),
        ("2:4", "bfloat16 14336x4096 M=333"): (True, 1.1), ("2:4", "bfloat16 14336x4096 M=2048"): (False, 1.3),
        ("bitmap90", "bfloat16 14336x4096 M=16"): (True, 3.0), ("bitmap70", "bfloat16 14336x4096 M=16"): (False, 1.5),
        ("bsr64_90", "bfloat16 14336x4096 M=2048"): (True, 4.0)}


def test_only_half_precision_gpu_records_without_errors_count():
    rows = gpu_goals.layer_checks([layer("2:4", 7, 1.0, device="cpu"), layer("2:4", 7, 1.0, dtype="float32"),
                                   layer("2:4", 7, None, error="n/a (no cuSPARSELt)"),
                                   dict(layer("dense", 7, 1.0), impl="dense"), layer("2:4", 7, 1.0, dtype="float16")])
    assert [(r["what"], r["cell"]) for r in rows] == [("2:4", "float16 14336x4096 M=7")]


def test_a_cell_without_a_graph_time_is_short_and_says_not_measured():
    rows = gpu_goals.layer_checks([layer("int8", 16, None, eager=2.0)])
    assert len(rows) == 1 and not rows[0]["met"] and rows[0]["got"] is None
    assert "not measured" in gpu_goals.report(rows)


def test_auto_and_the_eager_goals():
    rows = gpu_goals.layer_checks([
        layer("auto", 48, 0.96, sparsity=0.7), layer("auto", 1, 1.02, sparsity=0.9),
        layer("2:4", 1, 1.6, eager=1.0),                      # eager 0.625x of graphs: short
        layer("int8-wo", 1, 1.0, eager=0.9),                  # 0.9x of graphs: met
        layer("bsr:64", 1, 7.5, eager=3.1, sparsity=0.9),     # 3x eagerly: met
        layer("2:4", 1, 1.6, eager=1.0, N=4096, K=14336),     # the eager goals are on 14336x4096 only
    ])
    auto = by(rows, "auto never slower than dense", "auto 70%") + by(rows, "auto never slower than dense", "auto 90%")
    assert [r["met"] for r in auto] == [False, True]
    eager = {r["what"]: (r["met"], round(r["got"], 3)) for r in rows if r["goal"] == "eager as fast as graphs"}
    assert eager == {"2:4": (False, 0.625), "int8-wo": (True, 0.9), "bsr64_90": (True, 3.1)}


def test_model_goals():
    rows = gpu_goals.model_checks([
        model("2:4", 0.5, 1.4, compiled=1.2), model("bsr:64", 0.9, 2.6, compiled=2.55, prefill=1.1),
        model("int8-wo", 0.0, 1.5), model("csr", 0.9, 0.5, compiled=0.5), dict(model("dense", 0.0, 1.0)),
    ])
    got = {(r["goal"], r["what"]): r["met"] for r in rows}
    assert got == {("model decode (graphs)", "2:4"): True, ("compiled decode as fast as graphs", "2:4"): False,
                   ("model decode (graphs)", "bsr64_90"): True, ("model prefill", "bsr64_90"): False,
                   ("compiled decode as fast as graphs", "bsr64_90"): True,
                   ("model decode (graphs)", "int8-wo"): False,
                   ("compiled decode as fast as graphs", "int8-wo"): False,  # no compiled time: not measured
                   ("compiled decode as fast as graphs", "csr 90%"): True}


def test_report_lists_each_short_cell_with_what_it_achieved(tmp_path):
    lay = tmp_path / "gpu_layers.jsonl"
    lay.write_text("".join(json.dumps(r) + "\n" for r in [layer("2:4", 1, 1.6), layer("2:4", 7, 1.1),
                                                            layer("2:4", 16, 0.9)]))
    md, js = tmp_path / "goals.md", tmp_path / "goals.jsonl"
    assert gpu_goals.main(["--layer", str(lay), "--model", str(tmp_path / "missing.jsonl"), "--md", str(md),
                           "--json", str(js)]) == 0
    text = md.read_text()
    assert "NVIDIA H200" in text and "abc1234" in text
    assert "| layer speed (graphs) | 2:4 | 1 / 3 | bfloat16 14336x4096 M=16 | 0.90x | 1.30x |" in text
    short = text.split("Cells short of their goal (2 of 4)")[1]  # + M = 1's eager cell
    assert short.index("M=16") < short.index("M=7")  # worst first
    assert "2500 GB/s, 62% of read BW, 51% of the bytes cap 1.78x" in short
    assert [json.loads(line)["met"] for line in js.read_text().splitlines()] == [True, True, False, False]


def test_no_records_is_an_error(tmp_path):
    assert gpu_goals.main(["--layer", str(tmp_path / "none.jsonl")]) == 2


@pytest.mark.parametrize("fmt,sp,name", [("bitmap", 0.7, "bitmap70"), ("bitmap", 0.9000001, "bitmap90"),
                                         ("bitmap", 0.8, None), ("bsr:64", 0.9, "bsr64_90"), ("bsr:64", 0.5, None),
                                         ("bsr:32", 0.9, None), ("2:4+int8", 0.5, "2:4+int8"), ("csr", 0.9, None)])
def test_goal_names(fmt, sp, name):
    assert gpu_goals.goal_name(fmt, sp) == name


def test_host_time_and_eager_goals_from_bench_overhead(tmp_path):
    recs = [dict(kind="cuda-host", format="F.linear", N=64, K=64, M=1, host_us=4.0),
            dict(kind="cuda-host", format="2:4", N=64, K=64, M=1, host_us=8.5, flinear_host_us=4.0),
            dict(kind="cuda-host", format="bsr:16", N=64, K=64, M=1, host_us=12.0, flinear_host_us=4.0),
            dict(kind="cuda-host", format="csr", N=64, K=64, M=1, error="n/a (boom)"),
            dict(kind="cuda-host", format="bitmap", N=64, K=64, M=32, host_us=25.0),  # no goal at M = 32
            dict(kind="cuda-graph", format="int8", N=14336, K=4096, M=1, speedup=0.8, graph_speedup=1.0,
                 eager_over_graph=0.8),
            dict(kind="cuda-graph", format="bsr:64", N=14336, K=4096, M=1, speedup=3.2, graph_speedup=5.0,
                 eager_over_graph=0.64),
            dict(kind="cpu", format="2:4", N=64, K=64, M=1, overhead_us=1.0)]
    rows = gpu_goals.overhead_checks(recs)
    got = {(r["goal"], r["what"]): (r["met"], r["unit"]) for r in rows}
    assert got == {("host time per call", "2:4"): (True, "us"), ("host time per call", "bsr:16"): (False, "us"),
                   ("eager as fast as graphs (bench overhead)", "int8"): (False, "%"),
                   ("eager as fast as graphs (bench overhead)", "bsr64_90"): (True, "x")}
    text = gpu_goals.report(rows)
    assert "| host time per call | bsr:16 | 64x64 M=1 | 12.0 us | 10.0 us | F.linear 4.0 us |" in text
    assert "| eager as fast as graphs (bench overhead) | int8 | 14336x4096 M=1 | 80% | 85% |" in text
    path = tmp_path / "o.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert gpu_goals.main(["--overhead", str(path)]) == 0
