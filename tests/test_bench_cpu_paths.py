"""bench/cpu_paths.py (the CPU 2:4 and BSR paths side by side) runs on a small chain and leaves the switches it turns
(the instruction set, the dense-panel threshold) as it found them."""
import importlib.util
import sys
from pathlib import Path

import pytest

import sparsekit._ext as ext

pytestmark = pytest.mark.skipif(not ext.available(), reason="needs the compiled extension")


def _load():
    path = Path(__file__).resolve().parents[1] / "bench" / "cpu_paths.py"
    spec = importlib.util.spec_from_file_location("cpu_paths", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("op,cols", [("2:4", 4), ("bsr", 3)])
def test_cpu_paths_table(op, cols, monkeypatch, capsys):
    C = ext.C
    before = (C.cpu_isa(), C.cpu_dense_min_m())
    args = ["cpu_paths.py", "--op", op, "--shape", "64x64", "--layers", "2", "--m", "1,3", "--rounds", "1"]
    if op == "bsr":
        args += ["--blocks", "16"]
    monkeypatch.setattr(sys, "argv", args)
    _load().main()
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith(("| bfloat16", "| float32"))]
    assert len(rows) == 4  # two dtypes x two M
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")][-cols:]
        assert all(float(c) >= 0 for c in cells), r
    assert (C.cpu_isa(), C.cpu_dense_min_m()) == before


@pytest.mark.parametrize("op", ["csr", "bitmap", "bsr"])
def test_cpu_kept_ns_lines(op, capsys):
    """bench/cpu_kept_ns.py prints one line per dtype, sparsity and M, and leaves the thread count as it was."""
    import torch

    path = Path(__file__).resolve().parents[1] / "bench" / "cpu_kept_ns.py"
    spec = importlib.util.spec_from_file_location("cpu_kept_ns", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    mod.main(["--op", op, "--shape", "64x64", "--layers", "2", "--m", "1,17", "--sparsity", "0.5",
              "--dtypes", "float32,bfloat16", "--threads", "1", "--reps", "1"])
    lines = [r for r in capsys.readouterr().out.splitlines() if r.startswith(op + " ")]
    assert len(lines) == 4  # two dtypes x two M
    for r in lines:
        assert float(r.split()[-2]) > 0, r
    assert torch.get_num_threads() == threads
