"""Mask contracts of every structure: exact sparsity, pattern validity, lowest scores first,
deterministic ties, padding, and bad inputs -- each against a plain-Python reference."""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sparsekit.prune import masks
from sparsekit.prune.masks import is_valid, parse_pattern

from conftest import devices


# ----------------------------------------------------------------------------- references (loops)


def ref_n_m(score, n, m):
    """Per row, per group of m columns (a last partial group is padded with pruned columns)."""
    R, K = score.shape
    keep = torch.zeros(R, K, dtype=torch.bool)
    for i in range(R):
        for g0 in range(0, K, m):
            cols = list(range(g0, min(g0 + m, K)))
            n_pad = g0 + m - K if g0 + m > K else 0
            # padded columns are pruned first; then lowest (score, column)
            order = sorted(cols, key=lambda j: (score[i, j].item(), j))
            n_prune_real = max(0, (m - n) - n_pad)
            for j in order[n_prune_real:]:
                keep[i, j] = True
    return keep


def ref_row_balanced(score, sparsity):
    """Per row, the round(sparsity * K) lowest (score, column) go."""
    R, K = score.shape
    keep = torch.ones(R, K, dtype=torch.bool)
    for i in range(R):
        for j in sorted(range(K), key=lambda j: (score[i, j].item(), j))[:round(sparsity * K)]:
            keep[i, j] = False
    return keep


def ref_block(score, sparsity, r, c):
    R, K = score.shape
    blocks = []
    for bi in range(math.ceil(R / r)):
        for bj in range(math.ceil(K / c)):
            vals = score[bi * r:(bi + 1) * r, bj * c:(bj + 1) * c].double()
            blocks.append((vals.mean().item(), bi * math.ceil(K / c) + bj, bi, bj))
    blocks.sort(key=lambda t: (t[0], t[1]))
    keep = torch.ones(R, K, dtype=torch.bool)
    if R % r == 0 and K % c == 0:
        k = round(sparsity * len(blocks))
    else:  # partial blocks: the count whose elements come closest to sparsity * numel (fewer on a tie)
        sizes = [min(r, R - bi * r) * min(c, K - bj * c) for _, _, bi, bj in blocks]
        cum = [sum(sizes[:i]) for i in range(len(blocks) + 1)]
        k = min(range(len(cum)), key=lambda i: (abs(cum[i] - sparsity * (R * K)), i))
    for _, _, bi, bj in blocks[:k]:
        keep[bi * r:(bi + 1) * r, bj * c:(bj + 1) * c] = False
    return keep


# ----------------------------------------------------------------------------- N:M


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 7), (0, 3), (5, 5), (1, 2), (1, 1)])
@pytest.mark.parametrize("rows", [1, 5, 13])
def test_n_m_matches_reference(n, m, rows):
    K = m * 3
    score = torch.randn(rows, K)
    got = masks.n_m(score, n, m)
    assert got.dtype == torch.bool and got.shape == score.shape
    assert torch.equal(got, ref_n_m(score, n, m))
    assert torch.all(got.reshape(rows, -1, m).sum(-1) == n)  # exactly N kept per group
    assert int((~got).sum()) == round((1 - n / m) * got.numel())
    assert is_valid(got, f"{n}:{m}")


def test_n_m_ties_prune_lower_index_first_and_are_deterministic():
    score = torch.ones(3, 8)
    got = masks.n_m(score, 2, 4)
    expected = torch.tensor([False, False, True, True] * 2).repeat(3, 1)
    assert torch.equal(got, expected)
    s = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # 0 goes first, then the lowest-index 1
    assert masks.n_m(s, 2, 4).tolist() == [[False, True, False, True]]
    score = torch.randint(0, 3, (9, 24)).float()  # many ties
    assert torch.equal(masks.n_m(score, 2, 4), masks.n_m(score.clone(), 2, 4))
    assert torch.equal(masks.n_m(score, 2, 4), ref_n_m(score, 2, 4))


@pytest.mark.parametrize("K", [6, 9, 3, 1])
def test_n_m_non_multiple_raises_or_pads(K):
    score = torch.randn(5, K)
    with pytest.raises(ValueError, match=rf"in_features={K} of weight shape \(5, {K}\) is not a multiple of M=4"):
        masks.n_m(score, 2, 4)
    got = masks.n_m(score, 2, 4, pad=True)
    assert got.shape == score.shape
    assert torch.equal(got, ref_n_m(score, 2, 4))
    assert is_valid(got, "2:4")
    full = K // 4 * 4
    assert torch.all(got[:, :full].reshape(5, -1, 4).sum(-1) == 2)
    rem = K - full
    if rem:  # the real columns of the last group keep min(N, rem): zero-padding them gives a valid 2:4
        assert torch.all(got[:, full:].sum(-1) == min(2, rem))


def test_n_m_bad_arguments():
    with pytest.raises(ValueError, match="0 <= N <= M"):
        masks.n_m(torch.rand(2, 4), 5, 4)
    with pytest.raises(ValueError, match="2-D score"):
        masks.n_m(torch.rand(2, 4, 4), 2, 4)
    with pytest.raises(TypeError, match="floating-point"):
        masks.n_m(torch.ones(2, 4, dtype=torch.int32), 2, 4)
    s = torch.rand(2, 4)
    s[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        masks.n_m(s, 2, 4)


# ----------------------------------------------------------------------------- blocks, rows, columns


@pytest.mark.parametrize("r,c", [(16, 16), (32, 32), (64, 64), (1, 8), (1, 4), (4, 2), (3, 5)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 1.0])
def test_block_matches_reference(r, c, sparsity):
    R, K = r * 3, c * 5  # an odd number of blocks each way
    score = torch.rand(R, K)
    got = masks.block(score, sparsity, (r, c))
    assert got.dtype == torch.bool and got.shape == score.shape
    assert torch.equal(got, ref_block(score, sparsity, r, c))
    n_blocks = 15
    assert int((~got).sum()) == round(sparsity * n_blocks) * r * c
    assert is_valid(got, f"{r}x{c}")


def test_block_ties_lower_block_index_first():
    got = masks.block(torch.ones(4, 6), 4 / 6, (2, 2))  # 6 blocks, row-major; the first 4 go
    assert got.tolist() == [[False] * 6] * 2 + [[False, False, True, True, True, True]] * 2


@pytest.mark.parametrize("shape,blk", [((10, 16), (4, 4)), ((16, 10), (4, 4)), ((7, 9), (2, 3)), ((5, 5), (16, 16))])
def test_block_not_tiling_raises_or_pads(shape, blk):
    score = torch.rand(*shape)
    with pytest.raises(ValueError, match=rf"block {blk[0]}x{blk[1]} does not tile weight shape \({shape[0]}, {shape[1]}\)"):
        masks.block(score, 0.5, blk)
    got = masks.block(score, 0.5, blk, pad=True)
    assert torch.equal(got, ref_block(score, 0.5, *blk))
    assert is_valid(got, f"{blk[0]}x{blk[1]}")
    # element sparsity within half a block of the request
    assert abs(int((~got).sum()) - 0.5 * score.numel()) <= blk[0] * blk[1] / 2


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 1.0])
def test_rows_and_columns(sparsity):
    score = torch.rand(11, 7)
    r = masks.rows(score, sparsity)
    assert torch.equal(r, ref_block(score, sparsity, 1, 7))
    assert int((~r[:, 0]).sum()) == round(sparsity * 11) and is_valid(r, "rows")
    c = masks.columns(score, sparsity)
    assert torch.equal(c, ref_block(score, sparsity, 11, 1))
    assert int((~c[0]).sum()) == round(sparsity * 7) and is_valid(c, "columns")
    if 0 < sparsity < 1:  # the lowest-mean rows go
        means = score.mean(1)
        assert means[~r[:, 0]].max() <= means[r[:, 0]].min()


def test_bad_sparsity_and_shape_for_every_structure():
    s = torch.rand(8, 8)
    for fn in (lambda x: masks.block(s, x, (2, 2)), lambda x: masks.rows(s, x), lambda x: masks.columns(s, x),
               lambda x: masks.unstructured(s, x)):
        for bad in (-0.01, 1.01, math.nan):
            with pytest.raises(ValueError, match=r"sparsity in \[0, 1\]"):
                fn(bad)
    with pytest.raises(ValueError, match="2-D score"):
        masks.rows(torch.rand(8), 0.5)
    with pytest.raises(ValueError, match="2-D score"):
        masks.block(torch.rand(2, 2, 2), 0.5, (1, 1))
    with pytest.raises(ValueError, match="positive integers"):
        masks.block(s, 0.5, (0, 2))


# ----------------------------------------------------------------------------- patterns, validity


def test_parse_pattern_names_and_errors():
    assert parse_pattern("unstructured").kind == "unstructured"
    assert parse_pattern("2:4") == masks.Pattern("nm", n=2, m=4)
    assert parse_pattern("16x16") == masks.Pattern("block", r=16, c=16)
    assert parse_pattern("block:1x8").name == "1x8"
    assert parse_pattern("ROWS").kind == "rows" and parse_pattern("columns").kind == "columns"
    assert parse_pattern("2:4").fixed_sparsity == 0.5
    assert parse_pattern("row-balanced") == parse_pattern("per-row") == masks.Pattern("row_balanced")
    assert parse_pattern("row_balanced").name == "row-balanced" and parse_pattern("row-balanced").fixed_sparsity is None
    for bad, err in [("diagonal", "unknown pattern"), ("5:4", "0 <= N <= M"), ("2:0", "0 <= N <= M"),
                     ("0x4", "at least 1x1"), ("16x", "unknown pattern")]:
        with pytest.raises(ValueError, match=err):
            parse_pattern(bad)
    with pytest.raises(TypeError, match="unknown pattern"):
        parse_pattern(4)


def test_from_pattern_sparsity_rules():
    s = torch.rand(4, 8)
    assert torch.equal(masks.from_pattern(s, None, "2:4"), masks.n_m(s, 2, 4))
    assert torch.equal(masks.from_pattern(s, 0.5, "2:4"), masks.n_m(s, 2, 4))
    with pytest.raises(ValueError, match="fixes sparsity at 0.5"):
        masks.from_pattern(s, 0.7, "2:4")
    with pytest.raises(ValueError, match="needs a sparsity"):
        masks.from_pattern(s, None, "4x4")
    assert torch.equal(masks.from_pattern(s, 0.5, "2x4"), masks.block(s, 0.5, (2, 4)))
    assert torch.equal(masks.from_pattern(s, 0.5, "rows"), masks.rows(s, 0.5))


def test_is_valid_can_fail():
    torch.manual_seed(1)
    m = torch.rand(8, 16) > 0.3
    assert not is_valid(m, "2:4")
    ok = masks.block(torch.rand(8, 16), 0.5, (4, 4))
    assert is_valid(ok, "4x4")
    bad = ok.clone()
    bad[1, 1] = ~bad[1, 1]
    assert not is_valid(bad, "4x4")
    r = masks.rows(torch.rand(5, 6), 0.4)
    assert is_valid(r, "rows") and not is_valid(r, "columns")
    r[0, 0] = ~r[0, 0]
    assert not is_valid(r, "rows")
    rb = masks.row_balanced(torch.rand(5, 9), 0.5)
    assert is_valid(rb, "row-balanced") and not is_valid(masks.unstructured(torch.rand(5, 9), 0.5), "row-balanced")
    rb[2, int(torch.nonzero(rb[2])[0])] = False  # one row loses one more
    assert not is_valid(rb, "row-balanced")
    with pytest.raises(TypeError, match="bool mask"):
        is_valid(torch.ones(2, 4), "2:4")


def test_units_expand_round_trip():
    s = torch.rand(6, 10)
    u, size, expand = masks.units(s, "2x4", pad=True)
    assert u.shape == (9,) and size.tolist() == [8, 8, 4] * 3
    keep = torch.ones(9, dtype=torch.bool)
    keep[4] = False
    m = expand(keep)
    assert int((~m).sum()) == 8 and not m[2:4, 4:8].any()
    with pytest.raises(ValueError, match="no units"):
        masks.units(s, "2:4")


# ----------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
# found by CI: an exact tie of the block counts (16 and 20 pruned against 0.4 x 45 = 18) that the reference
# broke the other way, by computing 0.4 x 3 x 15 = 18.000000000000004 where the library computes 0.4 x 45
@example(R=3, K=15, sparsity=0.4, pattern="1x4", seed=7952, ties=False)
@given(R=st.integers(1, 20), K=st.integers(1, 24), sparsity=st.floats(0, 1),
       pattern=st.sampled_from(["unstructured", "row-balanced", "2:4", "1:3", "1x4", "3x2", "4x4", "rows", "columns"]),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_property_every_structure(R, K, sparsity, pattern, seed, ties):
    g = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 3, (R, K), generator=g).float() if ties else torch.rand(R, K, generator=g)
    p = parse_pattern(pattern)
    m = masks.from_pattern(score, None if p.kind == "nm" else sparsity, p, pad=True)
    assert m.shape == score.shape and m.dtype == torch.bool
    assert is_valid(m, p)
    assert torch.equal(m, masks.from_pattern(score.clone(), None if p.kind == "nm" else sparsity, p, pad=True))
    if p.kind == "unstructured":
        assert int((~m).sum()) == round(sparsity * (R * K))
    elif p.kind == "row_balanced":
        assert torch.equal(m, ref_row_balanced(score, sparsity))
        assert torch.all((~m).sum(1) == round(sparsity * K))
    elif p.kind == "nm":
        assert torch.equal(m, ref_n_m(score, p.n, p.m))
    else:
        r, c = (p.r, p.c) if p.kind == "block" else ((1, K) if p.kind == "rows" else (R, 1))
        assert torch.equal(m, ref_block(score, sparsity, r, c))
        assert abs(int((~m).sum()) - sparsity * (R * K)) <= r * c / 2  # within half a block


@pytest.mark.parametrize("device", devices())
def test_same_masks_on_every_device(device):
    score = torch.randint(0, 4, (33, 48)).float()
    for pattern, sp in [("unstructured", 0.6), ("2:4", None), ("16x16", 0.5), ("1x8", 0.7), ("rows", 0.3),
                        ("columns", 0.3)]:
        got = masks.from_pattern(score.to(device), sp, pattern, pad=True)
        assert got.device.type == torch.device(device).type
        assert torch.equal(got.cpu(), masks.from_pattern(score, sp, pattern, pad=True))
