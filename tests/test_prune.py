"""The magnitude / unstructured mask contract: exact sparsity, deterministic ties, bad input."""
import math

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.prune import masks


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 96)])
def test_exact_sparsity_lowest_scores_pruned(sparsity, shape):
    score = torch.rand(shape)
    m = masks.unstructured(score, sparsity)
    assert m.dtype == torch.bool and m.shape == score.shape
    n_pruned = int((~m).sum())
    assert n_pruned == round(sparsity * score.numel())
    if 0 < n_pruned < score.numel():
        assert score[~m].max() <= score[m].min()


def test_ties_are_broken_by_index():
    score = torch.ones(4, 4)
    m = masks.unstructured(score, 0.5)
    assert (~m).reshape(-1).nonzero().reshape(-1).tolist() == list(range(8))
    assert torch.equal(m, masks.unstructured(score.clone(), 0.5))


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"sparsity in \[0, 1\]"):
        masks.unstructured(torch.rand(3, 3), bad)
    with pytest.raises(ValueError, match=r"sparsity in \[0, 1\]"):
        sparsekit.prune(nn.Linear(3, 3), bad)


def test_nan_score_and_bad_names():
    s = torch.rand(3, 3)
    s[1, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        masks.unstructured(s, 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        masks.unstructured(torch.ones(3, 3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="unknown pattern"):
        sparsekit.prune(nn.Linear(3, 3), 0.5, pattern="diagonal")
    # "3:7" is a valid N:M pattern now, but in_features=3 is not a multiple of M=7
    with pytest.raises(ValueError, match="not a multiple of M=7"):
        sparsekit.prune(nn.Linear(3, 3), pattern="3:7")
    with pytest.raises(ValueError, match="unknown criterion"):
        sparsekit.prune(nn.Linear(3, 3), 0.5, criterion="psychic")


def test_prune_applies_and_returns_masks():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    masks_ = sparsekit.prune(model, sparsity=0.6)
    assert set(masks_) == {"0", "2"}
    for fqn, m in masks_.items():
        w = model.get_submodule(fqn).weight
        assert int((~m).sum()) == round(0.6 * w.numel())
        assert torch.all(w[~m] == 0)
    kept_only = sparsekit.prune(nn.Linear(4, 4), 0.5, apply=False)
    assert set(kept_only) == {""}
