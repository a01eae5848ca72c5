"""Checkpoints that load by themselves: sparsekit.save_pretrained / load_pretrained on tiny randomly
initialised transformers models converted in every format (outputs bit-identical after the round
trip, also in a fresh process), a plain nn.Module with a builder, and clear errors for missing,
truncated, corrupted or foreign files."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.nn import SparseLinear

transformers = pytest.importorskip("transformers")

FORMATS = ["csr", "bsr", "bitmap", "2:4", "int8", "int8-wo", "2:4+int8"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_llama(tie=False):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tie)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def ids(seed=1, shape=(2, 9)):
    return torch.randint(0, 64, shape, generator=torch.Generator().manual_seed(seed))


def converted(model, fmt, filter_fn=None, **cfg):
    sparsekit.prune(model, pattern="2:4", filter_fn=filter_fn)
    return sparsekit.convert(model, sparsekit.SparseConfig(fmt, **cfg), filter_fn=filter_fn)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_format_bit_identical(tmp_path, fmt):
    opts = {"blocksize": (8, 4)} if fmt == "bsr" else {}
    model = converted(tiny_llama(), fmt, **opts)
    x = ids()
    with torch.no_grad():
        want = model(x).logits
    sparsekit.save_pretrained(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors",
                                            "sparsekit.json"]
    man = json.loads((tmp_path / "sparsekit.json").read_text())
    assert man["model"] == {"kind": "transformers", "class": "LlamaForCausalLM", "config": "config.json"}
    assert len(man["layers"]) == 15 and all(r["format"] == fmt for r in man["layers"].values())
    loaded = sparsekit.load_pretrained(tmp_path)
    assert type(loaded) is transformers.LlamaForCausalLM and not loaded.training
    for fqn, m in model.named_modules():
        if isinstance(m, SparseLinear):
            l2 = loaded.get_submodule(fqn)
            assert isinstance(l2, SparseLinear) and l2.format == fmt
            for n in m._format_cls.buffer_names:
                assert torch.equal(getattr(m, n), getattr(l2, n)) and getattr(m, n).dtype == getattr(l2, n).dtype
    with torch.no_grad():
        got = loaded(x).logits
    assert torch.equal(got, want)


def test_bf16_bert_partly_converted_and_tied_llama(tmp_path):
    model = tiny_bert().to(torch.bfloat16)
    keep_dense = lambda m, f: "layer.0." in f  # noqa: E731
    model = converted(model, "2:4", filter_fn=keep_dense)
    x = ids()
    with torch.no_grad():
        want = model(input_ids=x).last_hidden_state
    sparsekit.save_pretrained(model, tmp_path / "bert")
    loaded = sparsekit.load_pretrained(tmp_path / "bert")
    assert isinstance(loaded.encoder.layer[1].intermediate.dense, nn.Linear)  # left dense
    assert isinstance(loaded.encoder.layer[0].intermediate.dense, SparseLinear)
    assert loaded.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).last_hidden_state, want)
    # tied input / output embeddings: written once, tied again
    llama = converted(tiny_llama(tie=True), "csr", filter_fn=lambda m, f: f != "lm_head")
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    with torch.no_grad():
        want = llama(x).logits
    sparsekit.save_pretrained(llama, tmp_path / "tied")
    loaded = sparsekit.load_pretrained(tmp_path / "tied")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, want)


def test_loads_in_a_fresh_process(tmp_path):
    model = converted(tiny_llama(), "2:4+int8")
    x = ids()
    with torch.no_grad():
        want = model(x).logits
    sparsekit.save_pretrained(model, tmp_path / "ckpt")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch, sparsekit\n"
            "m = sparsekit.load_pretrained(sys.argv[1])\n"
            "x = torch.load(sys.argv[2])\n"
            "with torch.no_grad():\n"
            "    torch.save(m(x).logits, sys.argv[3])\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt"), str(tmp_path / "x.pt"),
                        str(tmp_path / "y.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), want)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(24, 48), nn.Linear(48, 8, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_plain_module_needs_a_builder(tmp_path):
    torch.manual_seed(0)
    net = Net()
    sparsekit.prune(net, 0.7)
    sparsekit.convert(net, sparsekit.SparseConfig("bsr", blocksize=(8, 8)), filter_fn=lambda m, f: f == "fc1")
    x = torch.randn(5, 24)
    want = net(x)
    sparsekit.save_pretrained(net, tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match="builder="):
        sparsekit.load_pretrained(tmp_path)
    loaded = sparsekit.load_pretrained(tmp_path, builder=Net)
    assert isinstance(loaded.fc1, SparseLinear) and loaded.fc1.format == "bsr" and isinstance(loaded.fc2, nn.Linear)
    assert torch.equal(loaded(x), want)
    with pytest.raises(RuntimeError, match="lacks"):
        sparsekit.load_pretrained(tmp_path, builder=lambda: nn.Sequential(nn.Linear(24, 48)))


def test_missing_corrupted_and_foreign_files(tmp_path):
    model = converted(tiny_llama(), "csr")
    d = tmp_path / "ok"
    sparsekit.save_pretrained(model, d)
    w = (d / "model.safetensors").read_bytes()
    man = (d / "sparsekit.json").read_text()

    def variant(name, weights=w, manifest=man, drop=()):
        v = tmp_path / name
        sparsekit.save_pretrained(model, v)
        (v / "model.safetensors").write_bytes(weights)
        (v / "sparsekit.json").write_text(manifest)
        for f in drop:
            os.remove(v / f)
        return v

    with pytest.raises(FileNotFoundError, match="not a directory"):
        sparsekit.load_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a sparsekit checkpoint"):
        sparsekit.load_pretrained(variant("noman", drop=["sparsekit.json"]))
    with pytest.raises(FileNotFoundError, match="lacks its weights file"):
        sparsekit.load_pretrained(variant("nowts", drop=["model.safetensors"]))
    with pytest.raises(FileNotFoundError, match="config"):
        sparsekit.load_pretrained(variant("nocfg", drop=["config.json"]))
    flipped = bytearray(w)
    flipped[len(w) - 100] ^= 0x40  # inside the tensor data: safetensors alone would not notice
    with pytest.raises(RuntimeError, match="SHA-256"):
        sparsekit.load_pretrained(variant("flip", weights=bytes(flipped)))
    cut = variant("cut", weights=w[: len(w) // 2])
    with pytest.raises(RuntimeError, match="truncated"):
        sparsekit.load_pretrained(cut)
    with pytest.raises(RuntimeError, match="not a complete safetensors file"):
        sparsekit.load_pretrained(cut, verify=False)
    m = json.loads(man)
    with pytest.raises(RuntimeError, match="upgrade sparsekit"):
        sparsekit.load_pretrained(variant("future", manifest=json.dumps({**m, "sparsekit_checkpoint": 99})))
    with pytest.raises(RuntimeError, match="not valid JSON"):
        sparsekit.load_pretrained(variant("badjson", manifest=man[:40]))
    for evil in ("os.system", "eval", "PreTrainedModel", "AutoModel"):  # looked up, never imported or run
        bad = {**m, "model": {**m["model"], "class": evil}}
        with pytest.raises(RuntimeError, match="not a model class"):
            sparsekit.load_pretrained(variant("evil", manifest=json.dumps(bad)))
    wrong = {**m, "layers": {**m["layers"], "model.layers.0.mlp.up_proj": {
        **m["layers"]["model.layers.0.mlp.up_proj"], "format": "bitmap"}}}
    with pytest.raises(RuntimeError, match="format 'csr'"):  # the saved extra state disagrees with the manifest
        sparsekit.load_pretrained(variant("wrongfmt", manifest=json.dumps(wrong)))


def test_modules_set_to_none_stay_absent(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    model = converted(transformers.BertModel(cfg, add_pooling_layer=False).eval(), "csr")
    assert model.pooler is None
    sparsekit.save_pretrained(model, tmp_path)
    loaded = sparsekit.load_pretrained(tmp_path)
    assert loaded.pooler is None
    x = ids()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x).last_hidden_state, model(input_ids=x).last_hidden_state)
