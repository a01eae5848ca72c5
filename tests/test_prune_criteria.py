"""Criteria and calibration against plain references; every structure x criterion through
sparsekit.prune; global scope (one threshold, floors and ceilings) and per-layer overrides."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit.prune import Calibration, criteria, is_valid, masks_from_scores, parse_pattern, sparsity_report

from conftest import devices

STRUCTURES = ["unstructured", "row-balanced", "2:4", "4:8", "16x16", "1x8", "4x4", "rows", "columns"]
CRITERIA = ["magnitude", "gradient", "taylor", "activation", "random"]


class Net(nn.Module):
    """Odd sizes; a nested module, so that fqns have dots; a layer that is not nn.Linear."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(24, 48)
        self.block = nn.Sequential(nn.GELU(), nn.Linear(48, 32), nn.Tanh())
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 7)

    def forward(self, x):
        return self.head(self.norm(self.block(self.fc1(x))))


def _batches(n=4, bs=5, seed=0, seq=None):
    g = torch.Generator().manual_seed(seed)
    shape = (bs, seq, 24) if seq else (bs, 24)
    return [(torch.randn(*shape, generator=g), torch.randint(0, 7, shape[:-1], generator=g)) for _ in range(n)]


def _ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# ----------------------------------------------------------------------------- calibration


def test_calibrate_activation_sums_match_reference():
    torch.manual_seed(0)
    model = Net()
    data = _batches(seq=3)
    calib = sparsekit.calibrate(model, data, criterion="activation")
    assert isinstance(calib, Calibration) and calib.n_batches == 4
    assert set(calib.layers) == {"fc1", "block.1", "head"}
    # reference: concatenate the inputs each layer saw (fine for a test; calibrate keeps only sums)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, f=f: seen.setdefault(f, []).append(a[0].reshape(-1, a[0].shape[-1])))
             for f, m in [("fc1", model.fc1), ("block.1", model.block[1]), ("head", model.head)]]
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for h in hooks:
        h.remove()
    for f, xs in seen.items():
        X = torch.cat(xs).double()
        st = calib[f]
        assert st.n_tokens == X.shape[0] == 4 * 5 * 3
        torch.testing.assert_close(st.act_norm.double(), X.norm(dim=0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(st.act_rms.double(), X.norm(dim=0) / math.sqrt(X.shape[0]), rtol=1e-5, atol=1e-6)
        assert st.grad_abs_sum is None
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_calibrate_gradient_sums_match_reference_and_leave_state_alone():
    torch.manual_seed(0)
    model = Net()
    model.train()
    model.norm.training = False  # a mixed mode that must come back as it was
    model.fc1.weight.requires_grad_(False)
    model.head.weight.grad = torch.full_like(model.head.weight, 7.0)
    data = _batches()
    calib = sparsekit.calibrate(model, data, _ce, criterion="taylor")
    ref = copy.deepcopy(model).eval()
    ref.fc1.weight.requires_grad_(True)
    sums = {f: torch.zeros_like(ref.get_submodule(f).weight) for f in calib.layers}
    for x, y in data:
        ref.zero_grad()
        _ce(ref(x), y).backward()
        for f in sums:
            sums[f] += ref.get_submodule(f).weight.grad.abs()
    for f, s in sums.items():
        torch.testing.assert_close(calib[f].grad_abs_sum, s, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(calib[f].grad_abs_mean, s / 4, rtol=1e-5, atol=1e-7)
        assert calib[f].act_sq_sum is None
    assert model.training and not model.norm.training and model.fc1.training
    assert not model.fc1.weight.requires_grad and model.block[1].weight.requires_grad
    assert torch.all(model.head.weight.grad == 7.0) and model.fc1.weight.grad is None


def test_calibrate_without_loss_fn_uses_output_energy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    x = torch.randn(4, 5)
    calib = sparsekit.calibrate(model, [x], criterion="gradient")
    w = model[0].weight.detach().clone().requires_grad_(True)
    out = F.linear(x, w, model[0].bias.detach())
    (0.5 * out.pow(2).mean()).backward()
    torch.testing.assert_close(calib["0"].grad_abs_sum, w.grad.abs())


def test_calibrate_removes_hooks_on_exceptions_and_checks_inputs():
    model = Net()
    flags = [p.requires_grad for p in model.parameters()]

    def bad_batches():
        yield _batches(1)[0]
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        sparsekit.calibrate(model, bad_batches(), _ce)
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags and model.training
    with pytest.raises(ValueError, match="no batches"):
        sparsekit.calibrate(model, [])
    with pytest.raises(TypeError, match="a tensor, a tuple"):
        sparsekit.calibrate(model, ["not a batch"])
    with pytest.raises(ValueError, match="no nn.Linear"):
        sparsekit.calibrate(nn.Sequential(nn.ReLU()), [torch.randn(2, 2)])
    with pytest.raises(ValueError, match="scalar"):
        sparsekit.calibrate(model, _batches(1), lambda out, y: out, criterion="gradient")
    calib = sparsekit.calibrate(model, _batches(3), max_batches=2)
    assert calib.n_batches == 2


def test_calibrate_reads_torch_prune_reparametrization():
    model = nn.Sequential(nn.Linear(6, 4))
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.5)
    calib = sparsekit.calibrate(model, [torch.randn(3, 6)], criterion="gradient")
    g = calib["0"].grad_abs_sum
    assert g.shape == (4, 6) and torch.all(g[~model[0].weight_mask.bool()] == 0) and g.sum() > 0


# ----------------------------------------------------------------------------- criteria


def test_criteria_formulas():
    torch.manual_seed(0)
    model = Net()
    calib = sparsekit.calibrate(model, _batches(), _ce)
    for f in ["fc1", "block.1", "head"]:
        w = model.get_submodule(f).weight.detach()
        st = calib[f]
        torch.testing.assert_close(criteria.score("magnitude", model.get_submodule(f), f), w.abs())
        torch.testing.assert_close(criteria.score("gradient", model.get_submodule(f), f, calib), st.grad_abs_sum / 4)
        torch.testing.assert_close(criteria.score("taylor", model.get_submodule(f), f, calib),
                                   w.abs() * st.grad_abs_sum / 4)
        torch.testing.assert_close(criteria.score("activation", model.get_submodule(f), f, calib),
                                   w.abs() * st.act_rms[None, :])
        torch.testing.assert_close(criteria.score("wanda", model.get_submodule(f), f, calib),
                                   criteria.score("activation", model.get_submodule(f), f, calib))
    r1 = criteria.score("random", model.fc1, "fc1", seed=3)
    assert torch.equal(r1, criteria.score("random", model.fc1, "fc1", seed=3))
    assert not torch.equal(r1, criteria.score("random", model.fc1, "fc1", seed=4))
    assert not torch.equal(r1[:32, :24], criteria.score("random", model.block[1], "block.1", seed=3)[:32, :24])
    with pytest.raises(ValueError, match="needs calibration statistics"):
        criteria.score("taylor", model.fc1, "fc1")
    with pytest.raises(KeyError, match="no calibration statistics for layer 'nope'"):
        criteria.score("activation", model.fc1, "nope", calib)
    act_only = sparsekit.calibrate(model, _batches(), criterion="activation")
    with pytest.raises(ValueError, match="no gradient statistics"):
        criteria.score("gradient", model.fc1, "fc1", act_only)
    with pytest.raises(ValueError, match="unknown criterion 'psychic'"):
        criteria.canonical("psychic")


def test_activation_aware_prunes_dead_inputs_first():
    """A feature that is always 0 carries no signal: Wanda prunes its weights first, magnitude does not."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[:, 3] = 5.0  # big weights on a dead input
    xs = [torch.randn(16, 8) * torch.tensor([1.0, 1, 1, 0, 1, 1, 1, 1]) for _ in range(3)]
    model = nn.Sequential(lin)
    m_act = sparsekit.prune(model, 0.125, criterion="activation", calib=xs, apply=False)["0"]
    m_mag = sparsekit.prune(model, 0.125, criterion="magnitude", apply=False)["0"]
    assert not m_act[:, 3].any() and m_mag[:, 3].all()


# ----------------------------------------------------------------------------- every structure x criterion


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    model = Net()
    return model, sparsekit.calibrate(model, _batches(), _ce)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_prune_contract_every_structure_and_criterion(calibrated, structure, criterion):
    base, calib = calibrated
    p = parse_pattern(structure)
    sp = None if p.kind == "nm" else 0.6
    model = copy.deepcopy(base)
    out = sparsekit.prune(model, sp, pattern=structure, criterion=criterion, calib=calib, pad=True, seed=1)
    assert list(out) == ["fc1", "block.1", "head"]
    again = sparsekit.prune(copy.deepcopy(base), sp, pattern=structure, criterion=criterion, calib=calib, pad=True,
                            seed=1)
    for f, m in out.items():
        w = model.get_submodule(f).weight
        assert m.dtype == torch.bool and m.shape == w.shape
        assert torch.equal(m, again[f])  # deterministic
        assert is_valid(m, p)
        assert torch.all(w[~m] == 0) and torch.equal(w[m], base.get_submodule(f).weight[m])
        # the same mask as the structure applied to the criterion's score (no hidden extra logic)
        sc = criteria.score(criterion, base.get_submodule(f), f, calib, seed=1)
        from sparsekit.prune import masks as M
        assert torch.equal(m, M.from_pattern(sc, sp, p, pad=True))
        R, K = w.shape
        pruned = int((~m).sum())
        if p.kind == "unstructured":
            assert pruned == round(0.6 * R * K)
        elif p.kind == "row_balanced":
            assert torch.all((~m).sum(1) == round(0.6 * K))
        elif p.kind == "nm":
            assert abs(pruned - (1 - p.n / p.m) * R * K) <= R * p.m  # exact but for padded last groups
        else:
            r, c = (p.r, p.c) if p.kind == "block" else ((1, K) if p.kind == "rows" else (R, 1))
            if R % r == 0 and K % c == 0:
                assert int((~m[::r, ::c]).sum()) == round(0.6 * (R // r) * (K // c))
            else:  # partial edge blocks
                assert abs(pruned - 0.6 * R * K) <= r * c / 2


@pytest.mark.parametrize("structure,hidden,msg", [("2:4", 30, r"in_features=30 of weight shape \(7, 30\) is not a multiple of M=4"),
                                                   ("16x16", 48, r"block 16x16 does not tile weight shape \(7, 48\)"),
                                                   ("3x5", 48, r"block 3x5 does not tile weight shape \(7, 48\)")])
def test_prune_shapes_that_do_not_tile_need_pad(structure, hidden, msg):
    model = nn.Sequential(nn.Linear(240, hidden), nn.ReLU(), nn.Linear(hidden, 7))  # only the head does not fit
    sp = None if ":" in structure else 0.5
    with pytest.raises(ValueError, match=r"prune: layer '2': .*" + msg + ".*pad=True"):
        sparsekit.prune(model, sp, pattern=structure, apply=False)
    out = sparsekit.prune(model, sp, pattern=structure, apply=False, pad=True)
    assert all(is_valid(m, structure) for m in out.values())
    assert torch.equal(out["0"], sparsekit.prune(model, sp, pattern=structure, apply=False, filter_fn=lambda m, f: f == "0")["0"])


def test_prune_bad_inputs():
    model = Net()
    with pytest.raises(ValueError, match="fixes sparsity at 0.5"):
        sparsekit.prune(model, 0.7, pattern="2:4")
    with pytest.raises(ValueError, match="needs a sparsity"):
        sparsekit.prune(model, pattern="rows")
    with pytest.raises(ValueError, match="needs calibration statistics"):
        sparsekit.prune(model, 0.5, criterion="activation")
    with pytest.raises(ValueError, match="expected scope 'layer' or 'global'"):
        sparsekit.prune(model, 0.5, scope="planet")
    with pytest.raises(ValueError, match="scope='global' ranks units across layers"):
        sparsekit.prune(model, 0.5, pattern="2:4", scope="global")
    with pytest.raises(ValueError, match="fixes every row's sparsity; use scope='layer'"):
        sparsekit.prune(model, 0.5, pattern="row-balanced", scope="global")
    with pytest.raises(ValueError, match=r"overrides name layers that are not pruned here: \['fc9'\]"):
        sparsekit.prune(model, 0.5, overrides={"fc9": {"sparsity": 0.1}})
    with pytest.raises(ValueError, match=r"unknown override key\(s\) \['sparsty'\]"):
        sparsekit.prune(model, 0.5, overrides={"fc1": {"sparsty": 0.1}})
    with pytest.raises(ValueError, match="min_sparsity <= max_sparsity"):
        sparsekit.prune(model, 0.5, min_sparsity=0.6, max_sparsity=0.4)
    w = model.fc1.weight.detach().clone()
    with pytest.raises(ValueError):
        sparsekit.prune(model, 0.5, criterion="nope")
    assert torch.equal(model.fc1.weight, w)  # nothing applied on error


def test_prune_calibrates_from_batches_and_clamps_per_layer():
    torch.manual_seed(0)
    model = Net()
    data = _batches()
    a = sparsekit.prune(copy.deepcopy(model), 0.5, criterion="taylor", calib=data, loss_fn=_ce, apply=False)
    b = sparsekit.prune(copy.deepcopy(model), 0.5, criterion="taylor", calib=sparsekit.calibrate(model, data, _ce),
                        apply=False)
    assert all(torch.equal(a[f], b[f]) for f in a)
    c = sparsekit.prune(model, 0.9, max_sparsity=0.5, min_sparsity=0.1, apply=False)
    assert all(abs(r - 0.5) < 0.01 for r in sparsity_report(c)["layers"].values())


def test_overrides_per_layer():
    torch.manual_seed(0)
    model = Net()
    out = sparsekit.prune(model, 0.5, overrides={"head": {"sparsity": 0.0}, "block.1": {"pattern": "2:4"},
                                                 "fc1": {"pattern": "rows", "sparsity": 0.25}})
    assert out["head"].all()
    assert is_valid(out["block.1"], "2:4") and int((~out["block.1"]).sum()) == 32 * 48 // 2
    assert is_valid(out["fc1"], "rows") and int((~out["fc1"][:, 0]).sum()) == 12


# ----------------------------------------------------------------------------- global scope


def _global_reference(scores, sparsity, lo, hi, sizes=None):
    """Greedy walk over all units in ascending normalized score (ties: earlier layer, lower index)."""
    names = list(scores)
    units = []
    for li, f in enumerate(names):
        u = scores[f].reshape(-1).double()
        u = u / u.mean()
        units += [(u[i].item(), li, i) for i in range(u.numel())]
    units.sort()
    n = {f: scores[f].numel() for f in names}
    k = {f: 0 for f in names}
    rank = {f: 0 for f in names}
    floor = {f: round(lo[f] * n[f]) for f in names}
    ceil = {f: round(hi[f] * n[f]) for f in names}
    pruned = {f: set() for f in names}
    target = round(sparsity * sum(n.values()))
    # floors first
    for _, li, i in units:
        f = names[li]
        if rank[f] < floor[f]:
            pruned[f].add(i)
        rank[f] += 1
    total = sum(len(p) for p in pruned.values())
    rank = {f: 0 for f in names}
    for _, li, i in units:
        f = names[li]
        r = rank[f]
        rank[f] += 1
        if total >= target:
            break
        if floor[f] <= r < ceil[f]:
            pruned[f].add(i)
            total += 1
    out = {}
    for f in names:
        keep = torch.ones(n[f], dtype=torch.bool)
        keep[list(pruned[f])] = False
        out[f] = keep.view(scores[f].shape)
    return out


@pytest.mark.parametrize("sparsity,lo,hi", [(0.5, 0.0, 1.0), (0.7, 0.3, 0.8), (0.4, 0.35, 0.45), (0.9, 0.0, 0.95)])
def test_global_unstructured_matches_reference(sparsity, lo, hi):
    torch.manual_seed(0)
    scores = {"a": torch.rand(7, 9) * 3, "b": torch.rand(11, 5), "c": torch.rand(3, 13) ** 3}
    got = masks_from_scores(scores, sparsity, scope="global", min_sparsity=lo, max_sparsity=hi)
    ref = _global_reference(scores, sparsity, dict.fromkeys(scores, lo), dict.fromkeys(scores, hi))
    for f in scores:
        assert torch.equal(got[f], ref[f]), f
    n = sum(s.numel() for s in scores.values())
    assert sum(int((~m).sum()) for m in got.values()) == round(sparsity * n)
    for f, m in got.items():
        k = int((~m).sum())
        assert round(lo * m.numel()) <= k <= round(hi * m.numel())


def test_global_one_threshold_with_floors_and_ceilings():
    """Invariant: a layer above its floor prunes nothing scored higher than what a layer below its ceiling keeps."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 50), nn.ReLU(), nn.Linear(50, 9))
    with torch.no_grad():
        model[2].weight.mul_(10)  # scale must not matter after normalization
    ov = {"4": {"min_sparsity": 0.0, "max_sparsity": 0.2}}
    out = sparsekit.prune(copy.deepcopy(model), 0.6, scope="global", min_sparsity=0.3, overrides=ov, apply=False)
    total = sum(m.numel() for m in out.values())
    assert sum(int((~m).sum()) for m in out.values()) == round(0.6 * total)
    norm = {f: model.get_submodule(f).weight.abs() / model.get_submodule(f).weight.abs().mean() for f in out}
    lo = {"0": 0.3, "2": 0.3, "4": 0.0}
    hi = {"0": 1.0, "2": 1.0, "4": 0.2}
    k = {f: int((~m).sum()) for f, m in out.items()}
    assert k["4"] <= round(0.2 * 450) and k["0"] >= round(0.3 * 1200)
    for fi in out:
        for fj in out:
            if k[fi] > round(lo[fi] * out[fi].numel()) and k[fj] < round(hi[fj] * out[fj].numel()):
                assert norm[fi][~out[fi]].max() <= norm[fj][out[fj]].min() + 1e-6
    # raw scores ("none") prune the scaled-up layer less than the others
    raw = sparsekit.prune(copy.deepcopy(model), 0.6, scope="global", normalize="none", apply=False)
    r = sparsity_report(raw)["layers"]
    assert r["2"] < r["0"] and r["2"] < r["4"]


@pytest.mark.parametrize("pattern", ["4x4", "1x8", "rows", "columns"])
def test_global_structured_within_one_unit(pattern):
    torch.manual_seed(2)
    scores = {"a": torch.rand(16, 24), "b": torch.rand(8, 40), "c": torch.rand(12, 8)}
    got = masks_from_scores(scores, 0.55, pattern, scope="global", min_sparsity=0.1, max_sparsity=0.9)
    total = sum(s.numel() for s in scores.values())
    biggest_unit = {"4x4": 16, "1x8": 8, "rows": 40, "columns": 16}[pattern]
    assert abs(sum(int((~m).sum()) for m in got.values()) - 0.55 * total) <= biggest_unit
    assert all(is_valid(m, pattern) for m in got.values())


def test_global_infeasible_targets_say_so():
    scores = {"a": torch.rand(10, 10), "b": torch.rand(10, 10)}
    with pytest.raises(ValueError, match="cannot be met within the per-layer floors and ceilings"):
        masks_from_scores(scores, 0.2, scope="global", min_sparsity=0.5)
    with pytest.raises(ValueError, match="cannot be met within the per-layer floors and ceilings"):
        masks_from_scores(scores, 0.8, scope="global", max_sparsity=0.5)
    ok = masks_from_scores(scores, 0.5, scope="global", min_sparsity=0.5, max_sparsity=0.5)
    assert all(int((~m).sum()) == 50 for m in ok.values())


def test_global_ties_are_deterministic():
    scores = {"a": torch.ones(4, 5), "b": torch.ones(5, 4)}
    got = masks_from_scores(scores, 0.25, scope="global")
    # all normalized scores equal: the earlier layer, lower index first
    assert int((~got["a"]).sum()) == 10 and got["b"].all()
    assert (~got["a"]).reshape(-1).nonzero().reshape(-1).tolist() == list(range(10))


@pytest.mark.parametrize("device", devices())
def test_prune_on_device(device):
    torch.manual_seed(0)
    model = Net()
    data = _batches()
    ref = {c: sparsekit.prune(copy.deepcopy(model), 0.5, criterion=c, calib=data, loss_fn=_ce, apply=False)
           for c in ("activation", "magnitude", "random")}
    dev_model = copy.deepcopy(model).to(device)
    calib = sparsekit.calibrate(dev_model, data, _ce)  # batches are moved to the model's device
    assert calib["fc1"].act_sq_sum.device.type == torch.device(device).type
    for c, r in ref.items():
        got = sparsekit.prune(copy.deepcopy(dev_model), 0.5, criterion=c, calib=calib, apply=False)
        for f in r:
            assert got[f].device.type == torch.device(device).type
            if c != "activation" or device == "cpu":
                assert torch.equal(got[f].cpu(), r[f])
            else:  # float sums may differ in the last bit on another device
                assert (got[f].cpu() != r[f]).float().mean() < 0.01
