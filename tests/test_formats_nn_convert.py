"""CSR packing, SparseLinear, conversion, save/load."""
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsekit
from sparsekit.formats import CSRWeight
from sparsekit.nn import SparseLinear

from helpers import random_csr


# ---------------------------------------------------------------------------------- CSR format
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 8), (3, 0), (0, 5)])
def test_csr_round_trip_is_exact(dtype, shape):
    w = torch.randn(shape).to(dtype)
    mask = torch.rand(shape) < 0.4
    w[mask & (torch.rand(shape) < 0.2)] = 0  # kept positions that hold a zero stay kept
    c = CSRWeight.from_dense(w, mask)
    assert torch.equal(c.to_dense(), w * mask)
    assert c.to_dense().dtype == dtype
    assert c.nnz == int(mask.sum())
    assert c.crow_indices.dtype == torch.int32 and c.col_indices.dtype == torch.int32
    assert c.nbytes == (shape[0] + 1) * 4 + c.nnz * (4 + w.element_size())


def test_csr_default_mask_is_nonzeros():
    w = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, -3.0]])
    c = CSRWeight.from_dense(w)
    assert c.crow_indices.tolist() == [0, 1, 3]
    assert c.col_indices.tolist() == [1, 0, 2]
    assert c.values.tolist() == [1.0, 2.0, -3.0]
    assert c.sparsity == pytest.approx(0.5)


@pytest.mark.parametrize(
    "make,exc,msg",
    [
        (lambda: CSRWeight.from_dense(torch.randn(3)), ValueError, "expected a 2-d weight"),
        (lambda: CSRWeight.from_dense(torch.ones(2, 2, dtype=torch.int32)), TypeError, "floating-point weight"),
        (lambda: CSRWeight.from_dense(torch.randn(2, 3), torch.ones(3, 2, dtype=torch.bool)), ValueError,
         "mask of the weight's shape"),
        (lambda: CSRWeight.from_dense(torch.randn(2, 3), torch.ones(2, 3)), TypeError, "bool mask"),
        (lambda: CSRWeight(torch.tensor([0, 1, 2], dtype=torch.int32), torch.tensor([0, 5], dtype=torch.int32),
                           torch.randn(2), (2, 3)), ValueError, r"col_indices must lie in \[0, 3\)"),
        (lambda: CSRWeight(torch.tensor([0, 2, 1], dtype=torch.int32), torch.tensor([0], dtype=torch.int32),
                           torch.randn(1), (2, 3)), ValueError, "crow_indices"),
        (lambda: CSRWeight(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.randn(2), (2, 3)), TypeError,
         "int32 indices"),
    ],
)
def test_csr_bad_input(make, exc, msg):
    with pytest.raises(exc, match=msg):
        make()


# ---------------------------------------------------------------------------------- SparseLinear
def _pruned_linear(in_f=33, out_f=21, bias=True, sparsity=0.7):
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) > sparsity)
    return lin


@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_linear(bias):
    lin = _pruned_linear(bias=bias)
    sl = SparseLinear.from_linear(lin)
    assert (sl.in_features, sl.out_features) == (33, 21)
    for shape in [(33,), (1, 33), (5, 33), (2, 3, 33), (0, 33)]:
        x = torch.randn(shape)
        torch.testing.assert_close(sl(x), lin(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sl.to_linear().weight, lin.weight)
    assert "format=csr" in repr(sl) and "sparsity=" in repr(sl)


def test_sparse_linear_dtype_and_device_moves():
    lin = _pruned_linear()
    sl = SparseLinear.from_linear(lin).to(torch.bfloat16)
    assert sl.values.dtype == torch.bfloat16 and sl.crow_indices.dtype == torch.int32
    x = torch.randn(4, 33, dtype=torch.bfloat16)
    ref = torch.nn.functional.linear(x.float(), lin.weight.bfloat16().float(), lin.bias.bfloat16().float())
    torch.testing.assert_close(sl(x).float(), ref, rtol=2e-2, atol=2e-2)
    with pytest.raises(TypeError, match="expected values of the same dtype as x"):
        sl(torch.randn(4, 33))  # float32 input into a bfloat16 layer, as nn.Linear refuses too
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 33\)"):
        sl(torch.randn(4, 32, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="expected an nn.Linear"):
        SparseLinear.from_linear(nn.Conv1d(3, 3, 1))


# ---------------------------------------------------------------------------------- convert
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(40, 64)
        self.act = nn.GELU()
        self.block = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48, bias=False))
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(self.block(self.act(self.fc1(x))))


def test_prune_convert_end_to_end():
    model = Net()
    masks = sparsekit.prune(model, sparsity=0.8, filter_fn=lambda m, fqn: fqn != "head")
    assert set(masks) == {"fc1", "block.0", "block.2"}
    x = torch.randn(7, 40)
    ref = model(x)
    sparsekit.convert(model, sparsekit.SparseConfig("csr"), filter_fn=lambda m, fqn: fqn != "head")
    assert isinstance(model.fc1, SparseLinear) and isinstance(model.block[2], SparseLinear)
    assert type(model.head) is nn.Linear
    assert model.fc1.values.numel() == round(0.2 * 40 * 64)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_convert_respects_masks_and_min_sparsity():
    model = Net()
    mask = torch.zeros(64, 40, dtype=torch.bool)
    mask[:, :4] = True
    sparsekit.convert(model, sparsekit.SparseConfig(min_sparsity=0.5), masks={"fc1": mask})
    assert isinstance(model.fc1, SparseLinear) and model.fc1.values.numel() == 64 * 4
    assert type(model.head) is nn.Linear  # dense weights (no zeros) stay dense under min_sparsity


def test_convert_reads_torch_nn_utils_prune():
    model = Net()
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.6)
    x = torch.randn(3, 40)
    ref = model(x)
    sparsekit.convert(model, filter_fn=lambda m, fqn: fqn == "fc1")
    assert isinstance(model.fc1, SparseLinear)
    assert model.fc1.values.numel() == int(model.fc1.to_dense().ne(0).sum())
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_convert_bad_input():
    with pytest.raises(ValueError, match="unknown sparse format 'coo'"):
        sparsekit.SparseConfig("coo")
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsekit.SparseConfig(min_sparsity=1.5)
    with pytest.raises(TypeError, match="not the layer itself"):
        sparsekit.convert(nn.Linear(3, 3))


# ---------------------------------------------------------------------------------- save / load
def _converted(seed):
    torch.manual_seed(seed)
    model = Net()
    sparsekit.prune(model, sparsity=0.75)
    return sparsekit.convert(model)


def test_state_dict_round_trip_into_another_converted_model():
    src, dst = _converted(1), _converted(2)  # different masks: different nnz per layer
    x = torch.randn(5, 40)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    dst.load_state_dict(sd)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    for name, t in src.state_dict().items():
        if isinstance(t, torch.Tensor):
            assert torch.equal(dst.state_dict()[name], t), name


def test_whole_model_pickle_round_trip():
    src = _converted(3)
    x = torch.randn(2, 40)
    buf = io.BytesIO()
    torch.save(src, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), src(x))


def test_load_rejects_wrong_format_version_and_inconsistent_buffers():
    src, dst = _converted(4), _converted(5)
    sd = src.state_dict()
    bad = dict(sd)
    bad["fc1._extra_state"] = dict(sd["fc1._extra_state"], format_version=99)
    with pytest.raises(RuntimeError, match="layout version 99"):
        dst.load_state_dict(bad)
    bad = dict(sd)
    bad["fc1.col_indices"] = sd["fc1.col_indices"][:-1].clone()
    with pytest.raises(RuntimeError, match="inconsistent sparse buffers"):
        dst.load_state_dict(bad)
    bad = dict(sd)
    bad["fc1._extra_state"] = dict(sd["fc1._extra_state"], in_features=41)
    with pytest.raises(RuntimeError, match="does not match"):
        dst.load_state_dict(bad)


def test_saved_layer_runs_after_loading_on_random_data():
    w, mask, csr = random_csr(30, 50, 0.2)
    lin = nn.Linear(50, 30)
    with torch.no_grad():
        lin.weight.copy_(w * mask)
    sl = SparseLinear.from_linear(lin, mask)
    fresh = SparseLinear(50, 30)
    fresh.load_state_dict(sl.state_dict())
    x = torch.randn(9, 50)
    assert torch.equal(fresh(x), sl(x))
