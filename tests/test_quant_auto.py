"""sparsekit.quant error reports, format="auto" and sparsekit.explain."""
import io

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import quant
from sparsekit.nn import SparseLinear


def test_quantize_weight_round_trip_and_bad_input():
    w = torch.randn(7, 13)
    w[3] = 0
    q, s = quant.quantize_weight(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s[3] == 1
    assert (quant.dequantize_weight(q, s) - w).abs().max() <= s.max() / 2 + 1e-7
    assert int(q.abs().max()) == 127
    with pytest.raises(ValueError, match="2-d float weight"):
        quant.quantize_weight(torch.ones(3))


def test_error_report_per_layer():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))
    batches = [torch.randn(8, 64) for _ in range(3)]
    err8 = quant.error_report(m, batches)
    assert set(err8) == {"0", "2"}
    assert all(0 < e < 0.05 for e in err8.values()), err8
    err_wo = quant.error_report(m, batches, format="int8-wo")
    assert all(0 < e < 0.02 for e in err_wo.values()), err_wo
    # a pruned layer in csr is exact
    sparsekit.prune(m, 0.5)
    assert all(e < 1e-6 for e in quant.error_report(m, batches, format="csr").values())


def test_auto_never_slower_than_dense_and_explain():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024))
    sparsekit.prune(m, 0.97, filter_fn=lambda mod, fqn: fqn == "0")
    x = torch.randn(2, 1024)
    ref = m(x)
    sparsekit.convert(m, sparsekit.SparseConfig("auto", batch_size=1))
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    assert type(m[2]) is nn.Linear  # dense weights: nothing beats dense
    for layer in (m[0], m[2]):
        c = layer._sparsekit_choice
        assert c["ms"] <= c["dense_ms"]
        assert c["format"] == "dense" or c["speedup"] > 1.0
    buf = io.StringIO()
    text = sparsekit.explain(m, file=buf)
    assert "measured speedup" in text and "dense" in text.splitlines()[2]


def test_auto_candidates_follow_the_mask_structure():
    from sparsekit.auto import candidates

    m24 = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0]], dtype=torch.bool).repeat(4, 1)
    assert candidates(m24)[0]["format"] == "2:4"
    blocks = torch.zeros(64, 64, dtype=torch.bool)
    blocks[:16, 16:32] = True
    names = [(c["format"], c["options"].get("blocksize")) for c in candidates(blocks)]
    assert ("bsr", (16, 16)) in names
    rnd = torch.rand(64, 64) < 0.5
    assert [c["format"] for c in candidates(rnd)] == ["csr", "bitmap"]


def test_auto_times_candidates_in_interleaved_rounds_and_keeps_medians(monkeypatch):
    """One lucky sample must not pick a format: dense and each candidate are timed in turn, ROUNDS times,
    and compared by their medians (here bitmap's first sample beats CSR, its median does not)."""
    from sparsekit import auto

    script = iter([10.0, 5.0, 3.0,  # round 1: dense, csr, bitmap (a lucky bitmap)
                   10.0, 5.0, 8.0,
                   10.0, 5.0, 8.0])
    seen = []

    def fake_time_ms(fn, device):
        fn()  # the candidate runs as it would be timed
        seen.append(fn)
        return next(script)

    monkeypatch.setattr(auto, "ROUNDS", 3)
    monkeypatch.setattr(auto, "_time_ms", fake_time_ms)
    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    mask = torch.rand(64, 64) > 0.9
    choice = auto.choose(lin, mask, sparsekit.SparseConfig("auto", batch_size=1))
    assert choice["tried"] == {"dense": 10.0, "csr": 5.0, "bitmap": 8.0}
    assert choice["format"] == "csr" and choice["speedup"] == 2.0
    assert len(seen) == 9 and seen[0] is seen[3] is seen[6] and seen[2] is seen[5]  # the same three, in turn
