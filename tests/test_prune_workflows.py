"""Workflows: gradual pruning, recovery fine-tuning, L1 sparse training, neuron shrinking, interop."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsekit
from sparsekit.prune import (GradualPruner, distillation_loss, finetune, from_torch_prune, is_valid, l1_penalty,
                             load_masks, save_masks, sequential_pairs, shrink_linear_pair, shrink_pairs,
                             shrink_sequential, sparsity_report, sparsity_schedule, threshold_masks, to_torch_prune)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 31), nn.ReLU(), nn.Linear(31, 17), nn.Tanh(), nn.Linear(17, 5))


def _data(n=6, bs=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 13, generator=g), torch.randint(0, 5, (bs,), generator=g)) for _ in range(n)]


# ----------------------------------------------------------------------------- schedules


def test_sparsity_schedule_cubic_and_linear():
    assert sparsity_schedule(5, 0.9, 10, 20) == 0.0
    assert sparsity_schedule(10, 0.9, 10, 20, initial_sparsity=0.1) == pytest.approx(0.1)
    assert sparsity_schedule(20, 0.9, 10, 20) == 0.9 and sparsity_schedule(99, 0.9, 10, 20) == 0.9
    # Zhu & Gupta: s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
    assert sparsity_schedule(15, 0.8, 10, 20, 0.0, "cubic") == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert sparsity_schedule(15, 0.8, 10, 20, 0.2, "linear") == pytest.approx(0.5)
    vals = [sparsity_schedule(t, 0.9, 0, 100) for t in range(101)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))  # monotone
    d = [b - a for a, b in zip(vals, vals[1:])]
    assert d[0] > d[50] > d[-1]  # cubic: fast early, slow late
    with pytest.raises(ValueError, match="schedule 'cubic' or 'linear'"):
        sparsity_schedule(1, 0.5, 0, 10, schedule="exp")
    with pytest.raises(ValueError, match="start_step <= end_step"):
        sparsity_schedule(1, 0.5, 10, 0)
    with pytest.raises(ValueError, match=r"final_sparsity in \[0, 1\]"):
        sparsity_schedule(1, 1.5, 0, 10)


@pytest.mark.parametrize("pattern", ["unstructured", "1x4", "rows"])
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "activation"])
def test_gradual_pruner_trains_to_final_sparsity(pattern, criterion):
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)  # momentum + decay would revive weights
    data = _data()
    pruner = GradualPruner(model, 0.75, start_step=2, end_step=14, frequency=3, schedule="cubic", pattern=pattern,
                           criterion=criterion, filter_fn=lambda m, f: f != "4", pad=True)
    seen, prev = [], {f: m.clone() for f, m in pruner.masks.items()}
    for step in range(20):
        x, y = data[step % len(data)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for f, m in pruner.masks.items():  # pruned gradients are zero
            assert torch.all(model.get_submodule(f).weight.grad[~m] == 0)
        opt.step()
        s = pruner.step()
        seen.append(s)
        for f, m in pruner.masks.items():
            assert torch.all(model.get_submodule(f).weight[~m] == 0)  # re-applied after the optimizer
            assert not torch.any(m & ~prev[f])  # monotone: nothing revived
            assert is_valid(m, pattern)
            prev[f] = m.clone()
    assert seen[0] == 0.0 and seen[1] == pytest.approx(sparsity_schedule(2, 0.75, 2, 14))
    assert seen[2] == seen[1]  # between updates the sparsity stays
    assert seen[13] == 0.75 and seen[-1] == 0.75
    rep = sparsity_report(pruner.masks)["layers"]
    assert set(rep) == {"0", "2"}
    for f, r in rep.items():
        shape = model.get_submodule(f).weight.shape
        unit = {"unstructured": 1, "1x4": 4, "rows": shape[1]}[pattern]
        assert abs(r * shape.numel() - 0.75 * shape.numel()) <= unit
    pruner.remove()
    assert not any(m.weight._backward_hooks for m in model.modules() if isinstance(m, nn.Linear))
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_gradual_pruner_schedule_points_and_errors():
    model = _mlp()
    with GradualPruner(model, 0.5, start_step=0, end_step=4, frequency=2, schedule="linear") as p:
        got = [p.step() for _ in range(6)]
    assert got == [0.0, pytest.approx(0.25), pytest.approx(0.25), 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="cannot be raised gradually"):
        GradualPruner(model, 0.5, pattern="2:4")
    with pytest.raises(ValueError, match="frequency"):
        GradualPruner(model, 0.5, frequency=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        GradualPruner(model, 0.5, sparsity=0.3)
    torch_prune.random_unstructured(model[0], "weight", 0.3)
    with pytest.raises(TypeError, match="from_torch_prune"):
        GradualPruner(model, 0.5)
    p = GradualPruner(_mlp(), 0.5, start_step=1, end_step=1, criterion="gradient")
    with pytest.raises(ValueError, match="no gradient statistics"):
        p.step()  # no backward has run: nothing to score with
    p.remove()


def test_gradual_pruner_global_scope_with_calib():
    model = _mlp()
    calib = sparsekit.calibrate(model, _data(), F.cross_entropy)
    p = GradualPruner(model, 0.6, start_step=1, end_step=1, scope="global", criterion="activation", calib=calib,
                      min_sparsity=0.2, max_sparsity=0.9)
    p.step()
    r = sparsity_report(p.masks)
    assert r["total"] == pytest.approx(0.6, abs=1 / 1000)
    assert all(0.2 - 1e-3 <= v <= 0.9 + 1e-3 for v in r["layers"].values())
    p.remove()


# ----------------------------------------------------------------------------- recovery


class _Recorder(torch.optim.SGD):
    """SGD that records the global gradient norm it is asked to step with."""

    norms = []

    def step(self, closure=None):
        self.norms.append(torch.norm(torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"]
                                                   if p.grad is not None])).item())
        return super().step(closure)


def test_finetune_keeps_masks_clips_and_restores_mode():
    model = _mlp()
    masks = sparsekit.prune(model, 0.7, filter_fn=lambda m, f: f != "4")
    model.eval()
    _Recorder.norms = []
    opt = _Recorder(model.parameters(), lr=0.2, momentum=0.9, weight_decay=0.01)
    losses = finetune(model, masks, _data(), opt, F.cross_entropy, epochs=5, max_norm=0.25)
    assert len(losses) == 30 and sum(losses[-6:]) < sum(losses[:6])  # last epoch vs first
    assert max(_Recorder.norms) <= 0.25 + 1e-5
    for f, m in masks.items():
        assert torch.all(model.get_submodule(f).weight[~m] == 0)
        assert m.sum() > 0 and torch.all(model.get_submodule(f).weight[m] != 0)
    assert not model.training
    assert not any(m.weight._backward_hooks for m in model.modules() if isinstance(m, nn.Linear))
    assert len(finetune(model, masks, _data(), opt, F.cross_entropy, steps=4, max_norm=None)) == 4


def test_finetune_unclipped_norm_exceeds_the_clip():
    """The clipping check above can fail: without max_norm the norms are larger."""
    model = _mlp()
    masks = sparsekit.prune(model, 0.7)
    _Recorder.norms = []
    finetune(model, masks, _data(), _Recorder(model.parameters(), lr=0.5), F.cross_entropy, max_norm=None)
    assert max(_Recorder.norms) > 0.25


@pytest.mark.parametrize("distill", ["kl", "mse"])
def test_finetune_distillation(distill):
    teacher = _mlp(1)
    student = copy.deepcopy(teacher)
    masks = sparsekit.prune(student, 0.8)
    x = torch.randn(64, 13)
    before = distillation_loss(student(x), teacher(x), distill).item()
    data = [x[i:i + 16] for i in range(0, 64, 16)]
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    finetune(student, masks, data, opt, teacher=teacher, distill=distill, epochs=15, temperature=2.0)
    after = distillation_loss(student(x), teacher(x), distill).item()
    assert after < 0.5 * before
    assert all(torch.all(student.get_submodule(f).weight[~m] == 0) for f, m in masks.items())
    assert teacher.training  # restored


def test_distillation_loss_references():
    s, t = torch.randn(4, 3, 6), torch.randn(4, 3, 6)
    T = 3.0
    p_t = F.softmax(t / T, -1)
    ref = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(distillation_loss(s, t, "kl", T), ref)
    torch.testing.assert_close(distillation_loss(s, t, "mse"), ((s - t) ** 2).mean())
    assert distillation_loss(t, t, "kl").abs() < 1e-6
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(s, t[:2])
    with pytest.raises(ValueError, match="temperature > 0"):
        distillation_loss(s, t, "kl", 0.0)


def test_finetune_bad_inputs():
    model = _mlp()
    masks = sparsekit.prune(model, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="a loss_fn, a teacher, or both"):
        finetune(model, masks, _data(), opt)
    with pytest.raises(ValueError, match="distill 'kl' or 'mse'"):
        finetune(model, masks, _data(), opt, teacher=model, distill="l2")
    with pytest.raises(ValueError, match="alpha in"):
        finetune(model, masks, _data(), opt, F.cross_entropy, alpha=2)
    with pytest.raises(KeyError, match="no module 'x'"):
        finetune(model, {"x": masks["0"]}, _data(), opt, F.cross_entropy)
    with pytest.raises(ValueError, match="needs batches"):
        finetune(model, masks, [torch.randn(2, 13)], opt, F.cross_entropy)
    assert not any(m.weight._backward_hooks for m in model.modules() if isinstance(m, nn.Linear))


# ----------------------------------------------------------------------------- L1


def test_l1_penalty_value_and_gradient():
    model = _mlp()
    p = l1_penalty(model)
    ref = sum(m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.Linear))
    torch.testing.assert_close(p, ref)
    p.backward()
    torch.testing.assert_close(model[0].weight.grad, model[0].weight.sign())
    assert model[0].bias.grad is None
    only = l1_penalty(model, filter_fn=lambda m, f: f == "2", reduction="mean")
    torch.testing.assert_close(only, model[2].weight.abs().mean())
    with pytest.raises(ValueError, match="reduction"):
        l1_penalty(model, reduction="max")


def test_l1_training_then_threshold():
    torch.manual_seed(0)
    x = torch.randn(256, 13)
    w_true = torch.zeros(1, 13)
    w_true[0, :3] = torch.tensor([2.0, -1.5, 1.0])
    y = x @ w_true.T + 0.5 * torch.randn(256, 1)
    plain, l1 = nn.Linear(13, 1), nn.Linear(13, 1)
    l1.load_state_dict(plain.state_dict())
    for model, lam in ((plain, 0.0), (l1, 0.3)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            (F.mse_loss(model(x), y) + lam * l1_penalty(model)).backward()
            opt.step()
    small = lambda m: int((m.weight.abs() < 0.02).sum())  # noqa: E731
    assert small(l1) == 10 and small(plain) <= 7  # L1 drives the 10 irrelevant weights to ~0 (+- lr * lam)
    masks = threshold_masks(nn.Sequential(l1), threshold=0.02)
    m = masks["0"]
    assert m[0, :3].all() and int((~m).sum()) == small(l1) and torch.all(l1.weight[~m] == 0)
    by_sp = threshold_masks(nn.Sequential(copy.deepcopy(plain)), sparsity=10 / 13)
    assert int((~by_sp["0"]).sum()) == 10
    with pytest.raises(ValueError, match="exactly one of"):
        threshold_masks(l1, threshold=0.1, sparsity=0.5)
    with pytest.raises(ValueError, match="threshold >= 0"):
        threshold_masks(l1, threshold=-1.0)


# ----------------------------------------------------------------------------- neurons


@pytest.mark.parametrize("score", ["weight", "activation"])
@pytest.mark.parametrize("keep", [5, 0.5, 31])
def test_shrink_linear_pair_equals_zeroed_neurons(score, keep):
    model = _mlp()
    calib = sparsekit.calibrate(model, _data(), criterion="activation")
    a, b = model[0], model[2]
    na, nb, kept = shrink_linear_pair(a, b, keep, score, calib["2"] if score == "activation" else None)
    n = keep if isinstance(keep, int) else round(keep * 31)
    assert na.out_features == nb.in_features == n == kept.numel()
    assert kept.tolist() == sorted(kept.tolist())
    x = torch.randn(7, 13)
    ref = copy.deepcopy(model)
    dropped = torch.ones(31, dtype=torch.bool)
    dropped[kept] = False
    with torch.no_grad():
        ref[2].weight[:, dropped] = 0
        small = nn.Sequential(na, nn.ReLU(), nb, nn.Tanh(), model[4])
        torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-6)
    # the highest-scoring neurons were kept
    if score == "weight":
        s = torch.cat([a.weight, a.bias[:, None]], 1).norm(dim=1) * b.weight.norm(dim=0)
    else:
        s = calib["2"].act_rms * b.weight.norm(dim=0)
    if n < 31:
        assert s[dropped].max() <= s[kept].min()
    assert a.out_features == 31  # originals untouched


def test_shrink_sequential_makes_a_smaller_dense_model():
    model = _mlp()
    x = torch.randn(5, 13)
    full = model(x)
    assert sequential_pairs(model) == [("0", "2"), ("2", "4")]
    calib = sparsekit.calibrate(model, _data(), criterion="activation")
    small, kept = shrink_sequential(copy.deepcopy(model), 1.0, "activation", calib, return_kept=True)
    torch.testing.assert_close(small(x), full, rtol=1e-5, atol=1e-6)  # keep everything: same function
    small = shrink_sequential(copy.deepcopy(model), {"0": 10, "2": 4})
    assert [m.weight.shape for m in small if isinstance(m, nn.Linear)] == [(10, 13), (4, 10), (5, 4)]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    # a LayerNorm between two layers breaks the pair
    ln = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3), nn.ReLU(), nn.Dropout(), nn.Linear(3, 2))
    assert sequential_pairs(ln) == [("2", "5")]
    with pytest.raises(ValueError, match="found no nn.Linear pair"):
        shrink_sequential(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 3)), 0.5)


def test_shrink_pairs_by_name_and_errors():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(6, 20), nn.Linear(20, 6)

        def forward(self, x):
            return self.down(F.gelu(self.up(x)))

    m = Two()
    out = shrink_pairs(m, [("up", "down")], 0.25)
    assert out.up.out_features == 5 and out.down.in_features == 5
    assert out(torch.randn(2, 6)).shape == (2, 6)
    with pytest.raises(ValueError, match="needs calib"):
        shrink_pairs(Two(), [("up", "down")], 3, score="activation")
    with pytest.raises(ValueError, match="keep in"):
        shrink_linear_pair(nn.Linear(3, 4), nn.Linear(4, 2), 0)
    with pytest.raises(ValueError, match="keep ratio"):
        shrink_linear_pair(nn.Linear(3, 4), nn.Linear(4, 2), 1.5)
    with pytest.raises(ValueError, match="out_features == second.in_features"):
        shrink_linear_pair(nn.Linear(3, 4), nn.Linear(5, 2), 2)
    with pytest.raises(ValueError, match="unknown neuron score"):
        shrink_linear_pair(nn.Linear(3, 4), nn.Linear(4, 2), 2, score="vibes")


# ----------------------------------------------------------------------------- interop


def test_torch_prune_round_trip_and_convert(tmp_path):
    model = _mlp()
    masks = sparsekit.prune(copy.deepcopy(model), 0.6, pattern="1x2", pad=True, apply=False)
    to_torch_prune(model, masks)
    assert hasattr(model[0], "weight_orig") and torch.equal(model[0].weight_mask.bool(), masks["0"])
    back = from_torch_prune(model)
    assert all(torch.equal(back[f], masks[f]) for f in masks)
    x = torch.randn(3, 13)
    y = model(x)
    from_torch_prune(model, remove=True)
    assert not hasattr(model[0], "weight_orig") and isinstance(model[0].weight, nn.Parameter)
    torch.testing.assert_close(model(x), y)
    assert torch.all(model[0].weight[~masks["0"]] == 0)
    # masks from torch's own pruning come back too
    m2 = _mlp()
    torch_prune.l1_unstructured(m2[2], "weight", amount=0.5)
    assert set(from_torch_prune(m2)) == {"2"} and int((~from_torch_prune(m2)["2"]).sum()) == round(0.5 * 17 * 31)
    with pytest.raises(ValueError, match="has shape"):
        to_torch_prune(_mlp(), {"0": masks["2"]})
    with pytest.raises(KeyError, match="no module"):
        to_torch_prune(_mlp(), {"9": masks["2"]})


def test_save_and_load_masks(tmp_path):
    masks = sparsekit.prune(_mlp(), None, pattern="1:2", pad=True, apply=False)
    path = tmp_path / "masks.pt"
    save_masks(masks, path)
    got = load_masks(path)
    assert list(got) == list(masks) and all(torch.equal(got[f], masks[f]) and got[f].dtype == torch.bool for f in got)
    with pytest.raises(TypeError, match="bool tensor"):
        save_masks({"0": masks["0"].float()}, path)
    torch.save([1, 2], tmp_path / "bad.pt")
    with pytest.raises(TypeError, match="expected a dict"):
        load_masks(tmp_path / "bad.pt")
    # a pruned model converts with the loaded masks
    model = _mlp()
    sparsekit.apply_masks(model, got)
    sparsekit.convert(model, sparsekit.SparseConfig("csr"), masks=got)
    assert type(model[0]).__name__ == "SparseLinear"


# ----------------------------------------------------------------------------- masks the kernels can run


@pytest.mark.parametrize("pattern,config", [("2:4", dict(format="2:4")), ("16x16", dict(format="bsr", blocksize=(16, 16))),
                                            ("unstructured", dict(format="csr")), ("1x8", dict(format="bitmap"))])
def test_pruned_masks_convert_to_the_matching_format(pattern, config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    masks = sparsekit.prune(model, None if pattern == "2:4" else 0.75, pattern=pattern)
    x = torch.randn(5, 64)
    with torch.no_grad():
        ref = model(x)
    sparsekit.convert(model, sparsekit.SparseConfig(**config), masks=masks)
    assert all(type(m).__name__ == "SparseLinear" for m in (model[0], model[2]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_docs_pruning_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "pruning.md").read_text()
    section = text.split("# Pruning\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "docs/pruning.md", "exec"), ns)
    assert type(ns["model"][0]).__name__ == "SparseLinear" and (tmp_path / "masks.pt").exists()
    assert ns["smaller"][0].out_features == 64
