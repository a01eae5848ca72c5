"""Second-order (OBS / SparseGPT) pruning and the hybrid recipe: float64 references on small layers
(the one-column OBS update is the closed form, the whole sweep equals a plain loop that inverts each
frozen sub-problem), exact sparsity and valid patterns, int8 output on the int8 grid and packable
exactly, singular / ill-conditioned Gram matrices, error against magnitude and activation-aware
masks, the sequential mode on an MLP, and the hybrid steps."""
import copy
import math

import pytest
import torch
from torch import nn

from sparsekit.formats import Int8Weight, Sparse24Int8Weight, quantize_rows
from sparsekit.prune import masks as M
from sparsekit.prune.hybrid import hybrid, refit_after_shrink, round_channels
from sparsekit.prune.second_order import (GramCollector, damped_inverse_cholesky, gram_error, obs_update,
                                          sparsegpt, sparsegpt_layer)

from conftest import requires_gpu

D = torch.float64


def correlated_inputs(T, K, dtype=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g, dtype=D) / K ** 0.5
    x = torch.randn(T, K, generator=g, dtype=D) @ mix + 0.3 * torch.randn(T, K, generator=g, dtype=D)
    return x.to(dtype)


def rel_err(x, w, w_hat):
    y = x @ w.T
    return float((x @ w_hat.T - y).norm() / y.norm())


# ----------------------------------------------------------------------------- float64 references


def test_one_column_obs_update_is_the_closed_form_and_the_least_squares_optimum():
    N, K, T = 6, 9, 40
    x = correlated_inputs(T, K)
    H = x.T @ x
    W = torch.randn(N, K, dtype=D)
    mask = torch.ones(N, K, dtype=torch.bool)
    mask[:, 0] = False
    got, keep, info = sparsegpt_layer(W, H, mask=mask, percdamp=0.0)
    ref = obs_update(W, torch.linalg.inv(H), 0)
    assert got.dtype == D and torch.equal(keep, mask)
    assert torch.all(got[:, 0] == 0)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # ... which is the least-squares refit of the other columns to the dense outputs
    sol = torch.linalg.lstsq(x[:, 1:], x @ W.T).solution.T
    torch.testing.assert_close(got[:, 1:], sol, rtol=1e-9, atol=1e-11)
    assert info["retries"] == 0 and info["damp"] == 0.0


@pytest.mark.parametrize("q,blocksize", [(4, 128), (9, 4), (12, 5)])
def test_column_q_update_is_the_closed_form_of_the_frozen_subproblem(q, blocksize):
    """Columns left of q are frozen; OBS on the columns q.. uses the inverse of H[q:, q:]."""
    N, K = 5, 13
    x = correlated_inputs(50, K, seed=1)
    H = x.T @ x
    W = torch.randn(N, K, dtype=D)
    mask = torch.ones(N, K, dtype=torch.bool)
    mask[:, q] = False
    got, _, _ = sparsegpt_layer(W, H, mask=mask, percdamp=0.0, blocksize=blocksize)
    assert torch.equal(got[:, :q], W[:, :q])
    ref = obs_update(W[:, q:], torch.linalg.inv(H[q:, q:]), 0)
    torch.testing.assert_close(got[:, q:], ref, rtol=1e-10, atol=1e-12)


def ref_sweep(W, H, keep, damp, quant=False):
    """The plain loop: column by column, the inverse of the damped Gram of the columns not yet
    frozen, OBS update of the pruned (or rounded) weight; no Cholesky, no lazy batches. int8: the
    grid of each row from the float result (max over kept / 127), its largest kept weight -> ±127."""
    N, K = W.shape
    Hd = H + damp * torch.eye(K, dtype=D)
    if quant:
        f = ref_sweep(W, H, keep, damp)
        a = torch.where(keep, f.abs(), torch.zeros((), dtype=D)).float()
        amax, anchor = a.max(1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).double()
    W = W.clone()
    for j in range(K):
        Hinv = torch.linalg.inv(Hd[j:, j:])
        w = W[:, j]
        target = torch.where(keep[:, j], w, torch.zeros((), dtype=D))
        if quant:
            qi = torch.round(target / scale).clamp(-127, 127)
            at = (anchor == j) & keep[:, j]
            qi[at] = torch.where(w[at] < 0, -127.0, 127.0).double()
            target = qi * scale
        W[:, j:] -= ((w - target) / Hinv[0, 0])[:, None] * Hinv[0][None, :]
        W[:, j] = target
    return W


@pytest.mark.parametrize("blocksize", [1, 4, 128])
@pytest.mark.parametrize("quant", [False, True])
def test_sweep_matches_the_float64_reference_loop(blocksize, quant):
    N, K = 7, 18
    x = correlated_inputs(60, K, seed=2)
    H = x.T @ x
    W = torch.randn(N, K, dtype=D)
    keep = torch.rand(N, K) > 0.4
    damp = 0.01 * float(torch.diagonal(H).mean())
    got, _, info = sparsegpt_layer(W, H, mask=keep, percdamp=0.01, blocksize=blocksize, quantize_int8=quant)
    ref = ref_sweep(W, H, keep, damp, quant)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=1e-9, atol=1e-9 if not quant else 1e-6)
    assert torch.all(got[~keep] == 0)
    assert info["damp"] == pytest.approx(damp)


def test_damped_inverse_cholesky_is_the_inverse():
    x = correlated_inputs(30, 10)
    H = x.T @ x
    U, info = damped_inverse_cholesky(H, 0.05)
    lam = 0.05 * float(torch.diagonal(H).mean())
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(H + lam * torch.eye(10, dtype=D)), rtol=1e-9, atol=1e-12)
    assert torch.equal(U, torch.triu(U)) and info["retries"] == 0 and info["cond_lower_bound"] >= 1


def test_gram_collector_sums_xtx_over_all_tokens():
    lin = nn.Linear(6, 3).double()
    xs = [torch.randn(2, 5, 6, dtype=D), torch.randn(7, 6, dtype=D)]
    with GramCollector({"l": lin}, D) as col:
        for x in xs:
            lin(x)
    X = torch.cat([xs[0].reshape(-1, 6), xs[1]])
    torch.testing.assert_close(col.gram["l"], X.T @ X)
    torch.testing.assert_close(col.sum["l"], X.sum(0))
    assert col.n_tokens["l"] == 17
    torch.testing.assert_close(col.H("l"), X.T @ X / 17)
    torch.testing.assert_close(col.stats("l").act_rms.double(), X.square().mean(0).sqrt(), rtol=1e-6, atol=0)
    lin(xs[1])  # hooks are off after the with-block
    assert col.n_tokens["l"] == 17


# ----------------------------------------------------------------------------- structures


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_selections_give_exact_sparsity(sparsity):
    N, K = 7, 45  # odd sizes, several windows
    x = correlated_inputs(100, K, torch.float32, seed=3)
    W = torch.randn(N, K)
    H = x.T @ x
    _, keep, info = sparsegpt_layer(W, H, sparsity, blocksize=8)
    assert keep.dtype == torch.bool and keep.shape == W.shape
    assert int((~keep).sum()) == round(sparsity * N * K) and info["selection"] == "adaptive"
    _, keep, _ = sparsegpt_layer(W, H, sparsity, blocksize=8, selection="row")
    assert torch.all((~keep).sum(1) == round(sparsity * K))
    new_rb, keep_rb, _ = sparsegpt_layer(W, H, sparsity, "row-balanced", blocksize=8)  # the same as selection="row"
    assert torch.equal(keep_rb, keep) and M.is_valid(keep_rb, "row-balanced")
    with pytest.raises(ValueError, match="selection='layer' does not apply"):
        sparsegpt_layer(W, H, sparsity, "row-balanced", selection="layer")
    _, keep, _ = sparsegpt_layer(W, H, sparsity, selection="layer")
    assert int((~keep).sum()) == round(sparsity * N * K)
    _, keep, info = sparsegpt_layer(W, H, sparsity, blocksize=16, selection="uniform")  # SparseGPT's rule
    assert int((~keep).sum()) == round(sparsity * N * K) and info["selection"] == "uniform"
    total = round(sparsity * N * K)
    for a, b in ((0, 16), (16, 32), (32, 45)):  # the same share in every window (rounded half up)
        assert int((~keep[:, a:b]).sum()) == math.floor(total * b / K + 0.5) - math.floor(total * a / K + 0.5)
    new, keep, _ = sparsegpt_layer(W, H, sparsity, blocksize=8)
    assert torch.all(new[~keep] == 0)


@pytest.mark.parametrize("selection", ["adaptive", "row", "layer"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_lazy_batches_change_the_speed_not_the_result(selection, pattern):
    x = correlated_inputs(100, 48, seed=10)
    W = torch.randn(9, 48, dtype=D)
    sel = None if pattern == "2:4" else selection
    ref, rkeep, _ = sparsegpt_layer(W, x.T @ x, 0.5, pattern, blocksize=128, selection=sel)
    for bs in (1, 5, 16):
        got, keep, _ = sparsegpt_layer(W, x.T @ x, 0.5, pattern, blocksize=bs, selection=sel)
        assert torch.equal(keep, rkeep)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pattern,sparsity", [("2:4", None), ("1:4", 0.75), ("4:8", None), ("4x4", 0.5),
                                              ("1x8", 0.6), ("rows", 0.25), ("columns", 0.5)])
def test_structured_patterns_are_valid(pattern, sparsity):
    N, K = 12, 32
    x = correlated_inputs(80, K, torch.float32, seed=4)
    W = torch.randn(N, K)
    new, keep, info = sparsegpt_layer(W, x.T @ x, sparsity, pattern, blocksize=6)
    assert M.is_valid(keep, pattern)
    p = M.parse_pattern(pattern)
    if p.kind == "nm":
        assert torch.all(keep.reshape(N, -1, p.m).sum(-1) == p.n)
    else:
        ref = M.from_pattern(torch.rand(N, K), sparsity, pattern)  # the same count of units
        assert int((~keep).sum()) == int((~ref).sum())
    assert torch.all(new[~keep] == 0) and torch.isfinite(new).all()
    assert info["sparsity"] == pytest.approx(float((~keep).float().mean()))


def test_bad_structures_and_inputs_are_refused():
    W, H = torch.randn(4, 10), torch.eye(10)
    with pytest.raises(ValueError, match="multiple of M=4"):
        sparsegpt_layer(W, H, None, "2:4")
    with pytest.raises(ValueError, match="does not tile"):
        sparsegpt_layer(W, H, 0.5, "4x4")
    with pytest.raises(ValueError, match="needs a sparsity"):
        sparsegpt_layer(W, H, None, "unstructured")
    with pytest.raises(ValueError, match="fixes sparsity"):
        sparsegpt_layer(torch.randn(4, 8), torch.eye(8), 0.7, "2:4")
    with pytest.raises(ValueError, match="shape"):
        sparsegpt_layer(W, torch.eye(9), 0.5)
    Hn = torch.eye(10)
    Hn[2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sparsegpt_layer(W, Hn, 0.5)


# ----------------------------------------------------------------------------- int8


@pytest.mark.parametrize("pattern,sparsity", [("2:4", None), ("unstructured", 0.5), ("4x4", 0.5)])
def test_int8_output_is_on_the_grid_and_packs_exactly(pattern, sparsity):
    N, K = 16, 48
    x = correlated_inputs(200, K, torch.float32, seed=5)
    H = x.T @ x
    W = torch.randn(N, K)
    new, keep, info = sparsegpt_layer(W, H, sparsity, pattern, quantize_int8=True, blocksize=16)
    assert info["int8_exact"]
    q, s = info["qweight"], info["scale"]
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert torch.equal(new, q.float() * s[:, None])          # on the grid
    assert torch.all(q.abs().amax(1) == 127)                  # scale = max|w| / 127 exactly
    assert torch.all(q[~keep] == 0)
    rq, rs = quantize_rows(new)
    assert torch.equal(rq, q) and torch.equal(rs, s)
    if pattern == "2:4":
        pk = Sparse24Int8Weight.from_dense(new, keep)
        assert torch.equal(pk.scale, s)
        assert torch.equal(pk.to_dense(), new)
    pk = Int8Weight.from_dense(new)
    assert torch.equal(pk.qweight, q) and torch.equal(pk.to_dense(), new)
    # quantize-then-compensate (GPTQ, mask held) beats rounding to nearest, on the same pruned weight
    f, fkeep, _ = sparsegpt_layer(W, H, sparsity, pattern, blocksize=16)
    rq, rs = quantize_rows(f)
    rtn = rq.float() * rs[:, None]
    gptq, gkeep, ginfo = sparsegpt_layer(f, H, mask=fkeep, quantize_int8=True)
    assert torch.equal(gkeep, fkeep) and ginfo["int8_exact"]
    assert gram_error(f, gptq, H) < gram_error(f, rtn, H)
    # jointly (masks chosen while quantizing): about as good as pruning, then rounding
    assert gram_error(W, new, H) < 1.05 * gram_error(W, rtn, H)


# ----------------------------------------------------------------------------- numerical safety


def test_singular_gram_dead_inputs_and_few_samples_are_damped_and_reported():
    N, K, T = 8, 32, 10  # fewer tokens than inputs
    x = correlated_inputs(T, K, torch.float32, seed=6)
    x[:, [3, 7, 20]] = 0  # dead inputs
    H = x.T @ x
    W = torch.randn(N, K)
    new, keep, info = sparsegpt_layer(W, H, 0.5, n_tokens=T, percdamp=0.0)
    assert torch.isfinite(new).all()
    assert info["dead_inputs"] == 3 and info["rank_deficient"]
    assert info["retries"] >= 1 and info["damp"] > 0 and "damping raised" in info["note"]
    # dead inputs cost nothing: pruned first
    assert not keep[:, [3, 7, 20]].any()
    for q in (False, True):
        new, keep, info = sparsegpt_layer(W, H, None, "2:4", quantize_int8=q)
        assert torch.isfinite(new).all() and M.is_valid(keep, "2:4")
        assert info["dead_inputs"] == 3


def test_all_zero_and_rank_one_grams_give_finite_weights():
    W = torch.randn(4, 16)
    new, keep, info = sparsegpt_layer(W, torch.zeros(16, 16), 0.5)
    assert torch.isfinite(new).all() and info["dead_inputs"] == 16 and int((~keep).sum()) == 32
    v = torch.randn(16)
    for pd in (0.0, 1e-9, 0.01):
        new, _, info = sparsegpt_layer(W, torch.outer(v, v) * 1e6, 0.5, percdamp=pd, quantize_int8=True)
        assert torch.isfinite(new).all() and info["int8_exact"]


# ----------------------------------------------------------------------------- quality against the other criteria


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)])
def test_second_order_error_is_below_magnitude_and_activation_on_held_out_inputs(pattern, sparsity):
    N, K = 32, 64
    x = correlated_inputs(1024, K, torch.float32, seed=7)
    x = x * torch.linspace(0.2, 3.0, K)  # uneven input scales, as activations have
    calib, held = x[:512], x[512:]
    W = torch.randn(N, K)
    H = calib.T @ calib
    new, keep, _ = sparsegpt_layer(W, H, sparsity, pattern)
    mag = M.from_pattern(W.abs(), sparsity, pattern)
    act = M.from_pattern(W.abs() * calib.norm(dim=0), sparsity, pattern)
    e_so, e_mag, e_act = (rel_err(held, W, w) for w in (new, W * mag, W * act))
    assert e_so < 0.97 * min(e_act, e_mag)
    # on the same (activation-aware) mask, the reconstruction alone lowers the error
    rec, rkeep, _ = sparsegpt_layer(W, H, mask=act)
    assert torch.equal(rkeep, act) and rel_err(held, W, rec) < 0.97 * e_act


# ----------------------------------------------------------------------------- whole models


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 8))


def test_sequential_mode_on_a_three_layer_mlp():
    model = mlp()
    dense = copy.deepcopy(model)
    xs = [correlated_inputs(64, 24, torch.float32, seed=s) for s in range(3)]
    calls = {"4": 0}
    h = model[4].register_forward_hook(lambda m, a, o: calls.__setitem__("4", calls["4"] + 1))
    masks, rep = sparsegpt(model, xs, 0.5, return_report=True)
    h.remove()
    assert list(masks) == ["0", "2", "4"] == rep["order"]
    assert rep["passes"] == 4 and rep["sequential"] and not rep["skipped"]
    assert calls["4"] == 1  # early exit: the last layer ran only in the order-finding forward
    for fqn, m in masks.items():
        w = model.get_submodule(fqn).weight
        assert int((~m).sum()) == round(0.5 * m.numel()) and torch.all(w[~m] == 0)
        assert torch.isfinite(w).all() and set(rep["layers"][fqn]) >= {"damp", "rel_error_calib", "dead_inputs"}
    # layer 0 sees the raw inputs: the same as one sparsegpt_layer call
    X = torch.cat(xs)
    w0, _, _ = sparsegpt_layer(dense[0].weight, X.T @ X, 0.5)
    torch.testing.assert_close(model[0].weight, w0)
    # layer 2 was fitted to the inputs that the pruned layer 0 gives
    X2 = torch.relu(X @ model[0].weight.T + model[0].bias)
    w2, _, _ = sparsegpt_layer(dense[2].weight, X2.T @ X2, 0.5)
    torch.testing.assert_close(model[2].weight, w2, rtol=1e-4, atol=1e-5)
    # all layers at once (non-sequential) and fixed masks with int8 also run
    m2 = copy.deepcopy(dense)
    masks2, rep2 = sparsegpt(m2, iter(xs), None, "2:4", sequential=False, return_report=True)
    assert rep2["passes"] == 2 and all(M.is_valid(m, "2:4") for m in masks2.values())
    masks3 = sparsegpt(m2, xs, masks=masks2, quantize_int8=True, filter_fn=lambda m, f: f != "4")
    assert set(masks3) == set(masks2) - {"4"}
    for fqn in masks3:
        w = m2.get_submodule(fqn).weight.detach()
        assert torch.equal(Sparse24Int8Weight.from_dense(w, masks3[fqn]).to_dense(), w)


def test_sparsegpt_refuses_bad_calls():
    model = mlp()
    with pytest.raises(ValueError, match="no calibration batches"):
        sparsegpt(model, [], 0.5)
    with pytest.raises(ValueError, match="needs a sparsity"):
        sparsegpt(model, [torch.randn(4, 24)], None)
    with pytest.raises(KeyError, match="masks name layers"):
        sparsegpt(model, [torch.randn(4, 24)], masks={"nope": torch.ones(2, 2, dtype=torch.bool)})
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.5)
    with pytest.raises(TypeError, match="weight_orig"):
        sparsegpt(model, [torch.randn(4, 24)], 0.5)


# ----------------------------------------------------------------------------- hybrid


def test_round_channels():
    assert round_channels(192.0, 256) == 192 and round_channels(100, 256) == 96
    assert round_channels(3, 256) == 16 and round_channels(250, 256) == 256
    assert round_channels(95, 100) == 96 and round_channels(99, 100) == 96 and round_channels(5, 12) == 12


def test_refit_after_shrink_matches_least_squares():
    torch.manual_seed(0)
    b = nn.Linear(12, 5).double()
    x = correlated_inputs(200, 12, seed=8).abs()
    y = b(x)
    kept = torch.tensor([0, 2, 3, 5, 8, 9, 11])
    nb = nn.Linear(7, 5).double()
    with torch.no_grad():
        nb.weight.copy_(b.weight[:, kept])
        nb.bias.copy_(b.bias)
    y = y.detach()
    with torch.no_grad():
        before = float((nb(x[:, kept]) - y).norm())
    refit_after_shrink(nb, kept, b.weight.detach(), b.bias.detach(), x.T @ x, x.sum(0), 200, percdamp=0.0)
    A = torch.cat([x[:, kept], torch.ones(200, 1, dtype=D)], 1)
    sol = torch.linalg.lstsq(A, y).solution.T
    torch.testing.assert_close(nb.weight.detach(), sol[:, :7], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(nb.bias.detach(), sol[:, 7], rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        assert float((nb(x[:, kept]) - y).norm()) < before


@pytest.mark.parametrize("pattern,sparsity,method", [("2:4", None, "second_order"), ("block", 0.5, "second_order"),
                                                     ("2:4", None, "magnitude")])
def test_hybrid_steps_shrink_bytes_and_pack_for_the_kernels(pattern, sparsity, method):
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    calib = [correlated_inputs(128, 32, torch.float32, seed=s) for s in range(2)]
    held = [correlated_inputs(128, 32, torch.float32, seed=9)]
    res = hybrid(model, calib, held, neurons=0.6, pattern=pattern, sparsity=sparsity, tile=(16, 16),
                 method=method, filter_fn=lambda m, f: f != "4", metric_fn=lambda m: 1.0)
    names = [s["step"] for s in res.steps]
    assert names == ["dense", "neurons", "2:4" if pattern == "2:4" else "16x16 blocks", "int8"]
    by = [s["weight_bytes"] for s in res.steps]
    assert by[0] > by[1] > by[3] and by[1] > by[2]
    assert res.steps[0]["rel_error"] == 0.0 and all(math.isfinite(s["rel_error"]) for s in res.steps)
    assert res.steps[1]["shapes"]["0"] == [32, 32] and res.steps[1]["shapes"]["2"] == [32, 32]  # 0.6 * 64 -> 32
    assert all(s % 16 == 0 for f in ("0", "2") for s in res.steps[1]["shapes"][f])
    fmt = "2:4+int8" if pattern == "2:4" else "int8"
    assert res.steps[3]["formats"] == {"0": fmt, "2": fmt, "4": "dense"}
    assert all(res.steps[3]["info"]["packed_exactly"].values())
    for f in ("0", "2"):
        assert M.is_valid(res.masks[f], "2:4" if pattern == "2:4" else "16x16")
        w = model.get_submodule(f).weight.detach()
        assert torch.equal(res.packed[f].to_dense(), w)
    assert "| int8 |" in res.markdown()


@requires_gpu
def test_cuda_matches_cpu():
    x = correlated_inputs(64, 32, seed=11)
    W = torch.randn(8, 32, dtype=D)
    for pattern, sp in (("2:4", None), ("unstructured", 0.6)):
        ref, rkeep, _ = sparsegpt_layer(W, x.T @ x, sp, pattern, quantize_int8=True)
        got, keep, info = sparsegpt_layer(W.cuda(), (x.T @ x).cuda(), sp, pattern, quantize_int8=True)
        assert got.is_cuda and keep.is_cuda and info["int8_exact"]
        assert torch.equal(keep.cpu(), rkeep)
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-9, atol=1e-9)
    model = mlp().cuda()
    masks = sparsegpt(model, [correlated_inputs(64, 24, torch.float32, seed=s).cuda() for s in range(2)], 0.5)
    assert all(m.is_cuda for m in masks.values()) and all(torch.isfinite(p).all() for p in model.parameters())
