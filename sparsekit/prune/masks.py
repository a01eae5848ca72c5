"""Mask structures: turn a score (higher = more important) into a bool keep-mask (True = kept).

A score has the weight's shape, ``(out_features, in_features)`` for an ``nn.Linear``.

Contract of every generator
---------------------------
* the mask is ``torch.bool``, has the score's shape and lives on the score's device;
* sparsity is exact: :func:`unstructured` prunes ``round(sparsity * numel)`` elements, :func:`block`
  (and :func:`rows`, :func:`columns`, which are blocks of a whole row / column) prunes
  ``round(sparsity * n_blocks)`` whole blocks (with partial edge blocks: the pruned elements are
  within half a block of ``sparsity * numel``), :func:`n_m` prunes exactly ``M - N`` of every ``M``
  consecutive elements of a row;
  :func:`row_balanced` prunes ``round(sparsity * in_features)`` elements of every row;
* the lowest scores go first, and ties are broken deterministically: at equal score the element
  (block, group member) with the lower flat index is pruned first (a stable ascending sort);
* a shape the structure cannot serve (``in_features`` not a multiple of ``M``, a block that does
  not tile the weight) is a ``ValueError`` that names the shape and the structure, unless
  ``pad=True`` (see :func:`n_m` and :func:`block` for what padding means).

Patterns by name (:func:`parse_pattern`): ``"unstructured"``, ``"row-balanced"`` (unstructured within each
row, every row at the same sparsity: Wanda's per-output comparison group, and even work per row for a
kernel), ``"N:M"`` (``"2:4"``), ``"RxC"`` blocks (``"16x16"``, ``"32x32"``, ``"1x8"`` vectors), ``"rows"``
(output neurons), ``"columns"`` (input features).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch

__all__ = [
    "Pattern",
    "parse_pattern",
    "unstructured",
    "row_balanced",
    "n_m",
    "block",
    "rows",
    "columns",
    "from_pattern",
    "is_valid",
    "units",
    "check_sparsity",
    "check_score",
]


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Returns ``float(sparsity)``; a ``ValueError`` unless it lies in [0, 1] (NaN refused too)."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"expected {what} to be a number in [0, 1], got {type(sparsity).__name__}") from None
    if not (0.0 <= s <= 1.0):  # also refuses NaN
        raise ValueError(f"expected {what} in [0, 1], got {sparsity}")
    return s


def check_score(score: torch.Tensor, what: str = "score") -> None:
    """A score must be a floating-point tensor without NaN (+-inf is allowed: -inf = prune first)."""
    if not isinstance(score, torch.Tensor):
        raise TypeError(f"expected {what} to be a torch.Tensor, got {type(score).__name__}")
    if not score.is_floating_point():
        raise TypeError(f"expected a floating-point {what}, got {score.dtype}")
    if torch.isnan(score).any():
        raise ValueError(f"{what} contains NaN; a mask cannot be chosen from it")


def _check_2d(score: torch.Tensor, what: str) -> None:
    if score.dim() != 2:
        raise ValueError(f"{what}: expected a 2-D score (out_features, in_features), got shape {tuple(score.shape)}")


# ----------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    """A parsed structure. ``kind`` is one of ``unstructured``, ``row_balanced``, ``nm``, ``block``, ``rows``,
    ``columns``;
    ``n, m`` are set for ``nm``, ``r, c`` for ``block``."""

    kind: str
    n: int = 0
    m: int = 0
    r: int = 0
    c: int = 0

    @property
    def name(self) -> str:
        """The canonical name: ``unstructured``, ``row-balanced``, ``2:4``, ``16x16``, ``rows``, ``columns``."""
        if self.kind == "row_balanced":
            return "row-balanced"
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"{self.r}x{self.c}"
        return self.kind

    @property
    def fixed_sparsity(self) -> Optional[float]:
        """The sparsity an N:M pattern fixes (``1 - N/M``); None for the others."""
        return 1.0 - self.n / self.m if self.kind == "nm" else None

    def __str__(self) -> str:
        return self.name


_PATTERN_HELP = ("expected 'unstructured', 'row-balanced', 'N:M' (e.g. '2:4'), 'RxC' blocks (e.g. '16x16', '1x8'), "
                 "'rows' or 'columns'")


def parse_pattern(pattern: Union[str, Pattern]) -> Pattern:
    """Parses a pattern name (see the module doc); a :class:`Pattern` passes through."""
    if isinstance(pattern, Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"unknown pattern {pattern!r} of type {type(pattern).__name__}; {_PATTERN_HELP}")
    p = pattern.strip().lower()
    if p == "unstructured":
        return Pattern("unstructured")
    if p in ("row-balanced", "row_balanced", "per-row"):
        return Pattern("row_balanced")
    if p in ("rows", "row"):
        return Pattern("rows")
    if p in ("columns", "column", "cols"):
        return Pattern("columns")
    mt = re.fullmatch(r"(\d+):(\d+)", p)
    if mt:
        n, m = int(mt.group(1)), int(mt.group(2))
        if m < 1 or n > m:
            raise ValueError(f"pattern {pattern!r}: expected N:M with 0 <= N <= M and M >= 1, got N={n}, M={m}")
        return Pattern("nm", n=n, m=m)
    mt = re.fullmatch(r"(?:block:?)?(\d+)x(\d+)", p)
    if mt:
        r, c = int(mt.group(1)), int(mt.group(2))
        if r < 1 or c < 1:
            raise ValueError(f"pattern {pattern!r}: expected a block of at least 1x1, got {r}x{c}")
        return Pattern("block", r=r, c=c)
    raise ValueError(f"unknown pattern {pattern!r}; {_PATTERN_HELP}")


# ----------------------------------------------------------------------------- generators


def _prune_lowest(flat: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask over a 1-D score: the ``n_prune`` lowest go (ties: lower index first)."""
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_prune:
        order = torch.argsort(flat, stable=True)  # ascending; ties keep index order
        keep[order[:n_prune]] = False
    return keep


def unstructured(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keeps the largest (1 - sparsity) fraction of `score`, element by element (any shape)."""
    sparsity = check_sparsity(sparsity)
    check_score(score)
    flat = score.reshape(-1)
    return _prune_lowest(flat, round(sparsity * flat.numel())).view(score.shape)


def row_balanced(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keeps the largest (1 - sparsity) fraction of every row of a 2-D `score`: ``round(sparsity *
    in_features)`` elements of each row go (ties: the lower column first). The comparison group of
    Wanda (scores compared per output), and the same work per row for a sparse kernel."""
    sparsity = check_sparsity(sparsity)
    check_score(score)
    _check_2d(score, "row-balanced pattern")
    return _prune_lowest_per_row(score, round(sparsity * score.shape[1]))


def _prune_lowest_per_row(score: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask over a 2-D score: the ``n_prune`` lowest of every row go (ties: lower column first)."""
    keep = torch.ones_like(score, dtype=torch.bool)
    if n_prune > 0 and score.numel():
        order = torch.argsort(score, dim=1, stable=True)  # ascending per row; ties keep column order
        keep.scatter_(1, order[:, :n_prune], False)
    return keep


def n_m(score: torch.Tensor, n: int, m: int, pad: bool = False) -> torch.Tensor:
    """N:M along the input dimension: in every row, each group of ``m`` consecutive columns keeps
    its ``n`` highest scores (ties: the lower column is pruned first). Sparsity is exactly 1 - n/m.

    ``in_features`` must be a multiple of ``m``; with ``pad=True`` the last group of each row is
    completed with pruned padding columns and the mask is cropped, so that the zero-padded weight
    is a valid N:M matrix: the real columns of the last group keep ``min(n, real columns)``.
    """
    check_score(score)
    _check_2d(score, f"{n}:{m} pattern")
    if not (isinstance(n, int) and isinstance(m, int)) or m < 1 or not 0 <= n <= m:
        raise ValueError(f"expected N:M with integers 0 <= N <= M and M >= 1, got N={n!r}, M={m!r}")
    rows_, k = score.shape
    rem = k % m
    if rem and not pad:
        raise ValueError(
            f"{n}:{m} pattern: in_features={k} of weight shape {tuple(score.shape)} is not a multiple of M={m}; "
            f"pass pad=True to pad the last group of each row with pruned columns")
    s = score
    if rem:
        s = torch.cat([score, score.new_full((rows_, m - rem), float("-inf"))], dim=1)
    groups = s.reshape(rows_, -1, m)
    keep = torch.ones_like(groups, dtype=torch.bool)
    if n < m:
        order = torch.argsort(groups, dim=-1, stable=True)
        keep.scatter_(-1, order[..., : m - n], False)
    return keep.reshape(rows_, -1)[:, :k].contiguous()


def _block_grid(shape: Tuple[int, int], r: int, c: int, pad: bool, what: str) -> Tuple[int, int]:
    rows_, k = shape
    if (rows_ % r or k % c) and not pad:
        raise ValueError(
            f"{what}: block {r}x{c} does not tile weight shape {tuple(shape)} "
            f"(out_features % {r} = {rows_ % r}, in_features % {c} = {k % c}); "
            f"pass pad=True to allow partial blocks at the edges")
    return -(-rows_ // r), -(-k // c)


def _block_scores(score: torch.Tensor, r: int, c: int, pad: bool, what: str):
    """(mean score per block as float64 (gr, gc), real elements per block (gr, gc))."""
    check_score(score)
    _check_2d(score, what)
    rows_, k = score.shape
    gr, gc = _block_grid((rows_, k), r, c, pad, what)
    s = score.double()
    ones = torch.ones_like(s)
    if gr * r != rows_ or gc * c != k:
        s = torch.nn.functional.pad(s, (0, gc * c - k, 0, gr * r - rows_))
        ones = torch.nn.functional.pad(ones, (0, gc * c - k, 0, gr * r - rows_))
    total = s.reshape(gr, r, gc, c).sum(dim=(1, 3))
    count = ones.reshape(gr, r, gc, c).sum(dim=(1, 3))
    return total / count, count.long()


def _expand_blocks(block_keep: torch.Tensor, r: int, c: int, shape) -> torch.Tensor:
    full = block_keep.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)
    return full[: shape[0], : shape[1]].contiguous()


def block(score: torch.Tensor, sparsity: float, shape: Tuple[int, int] = (16, 16), pad: bool = False) -> torch.Tensor:
    """Block sparsity: prunes ``round(sparsity * n_blocks)`` whole ``r x c`` blocks (``shape=(r, c)``),
    those with the lowest mean score (ties: the lower block index, row-major over the block grid,
    goes first). ``(1, c)`` gives 1 x c vectors along the input dimension.

    The blocks must tile the weight; with ``pad=True`` the edge blocks may be partial: they are
    scored by the mean over their real elements, and the lowest-scoring blocks go until the pruned
    elements come closest to ``sparsity * numel`` (within half a block; fewer on a tie).
    """
    sparsity = check_sparsity(sparsity)
    r, c = shape
    what = f"{r}x{c} block pattern"
    if not (isinstance(r, int) and isinstance(c, int)) or r < 1 or c < 1:
        raise ValueError(f"expected a block shape of positive integers, got {shape!r}")
    means, count = _block_scores(score, r, c, pad, what)
    flat, sizes = means.reshape(-1), count.reshape(-1)
    if score.shape[0] % r == 0 and score.shape[1] % c == 0:
        keep = _prune_lowest(flat, round(sparsity * flat.numel()))
    else:  # partial blocks are smaller: choose how many go by the elements they hold
        order = torch.argsort(flat, stable=True)
        cands = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes[order], 0)]).double()
        k = int(torch.argmin((cands - sparsity * score.numel()).abs()))  # first minimum: fewer pruned on a tie
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[order[:k]] = False
    return _expand_blocks(keep.view(means.shape), r, c, score.shape)


def rows(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prunes ``round(sparsity * out_features)`` whole output rows (neurons), the lowest mean score first."""
    check_score(score)
    _check_2d(score, "rows pattern")
    return block(score, sparsity, (1, score.shape[1]))


def columns(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prunes ``round(sparsity * in_features)`` whole input columns (features), the lowest mean score first."""
    check_score(score)
    _check_2d(score, "columns pattern")
    return block(score, sparsity, (score.shape[0], 1))


def from_pattern(score: torch.Tensor, sparsity: Optional[float], pattern: Union[str, Pattern] = "unstructured",
                 pad: bool = False) -> torch.Tensor:
    """The mask of `pattern` (a name or a :class:`Pattern`) for `score` at `sparsity`.

    For N:M, `sparsity` may be None; otherwise it must equal ``1 - N/M``.
    """
    p = parse_pattern(pattern)
    if p.kind == "nm":
        if sparsity is not None and abs(check_sparsity(sparsity) - p.fixed_sparsity) > 1e-6:
            raise ValueError(f"pattern '{p.name}' fixes sparsity at {p.fixed_sparsity:g}; got sparsity={sparsity}")
        return n_m(score, p.n, p.m, pad=pad)
    if sparsity is None:
        raise ValueError(f"pattern '{p.name}' needs a sparsity in [0, 1], got None")
    if p.kind == "unstructured":
        return unstructured(score, sparsity)
    if p.kind == "row_balanced":
        return row_balanced(score, sparsity)
    if p.kind == "block":
        return block(score, sparsity, (p.r, p.c), pad=pad)
    if p.kind == "rows":
        return rows(score, sparsity)
    return columns(score, sparsity)


# ----------------------------------------------------------------------------- units (for global scope)


def units(score: torch.Tensor, pattern: Union[str, Pattern], pad: bool = False
          ) -> Tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Splits a score into the units a pattern prunes whole, for choosing across layers.

    Returns ``(unit_scores, unit_sizes, expand)``: 1-D scores (the mean over each unit), 1-D counts
    of real elements per unit, and ``expand(unit_keep) -> mask`` that turns a 1-D bool keep-vector
    over the units into the weight-shaped mask. Unstructured units are single elements; N:M has
    no such units (its sparsity is fixed per group) and is a ``ValueError``.
    """
    p = parse_pattern(pattern)
    if p.kind in ("nm", "row_balanced"):
        what = "group" if p.kind == "nm" else "row"
        raise ValueError(f"pattern '{p.name}' fixes the sparsity of every {what}; it has no units to rank across layers")
    check_score(score)
    shape = score.shape
    if p.kind == "unstructured":
        flat = score.reshape(-1)
        return flat, torch.ones(flat.numel(), dtype=torch.long, device=score.device), lambda keep: keep.view(shape)
    _check_2d(score, f"{p.name} pattern")
    if p.kind == "block":
        r, c = p.r, p.c
    elif p.kind == "rows":
        r, c = 1, shape[1]
    else:
        r, c = shape[0], 1
    means, count = _block_scores(score, r, c, pad if p.kind == "block" else False, f"{p.name} pattern")
    grid = means.shape
    return means.reshape(-1), count.reshape(-1), lambda keep: _expand_blocks(keep.view(grid), r, c, shape)


# ----------------------------------------------------------------------------- validation


def is_valid(mask: torch.Tensor, pattern: Union[str, Pattern]) -> bool:
    """Whether `mask` has `pattern`'s structure: N:M keeps at most N of every M consecutive columns
    of a row (a last partial group counts as padded with pruned columns); blocks (partial at the
    edges allowed) are all kept or all pruned; rows / columns likewise; unstructured always."""
    p = parse_pattern(pattern)
    if mask.dtype != torch.bool:
        raise TypeError(f"expected a bool mask, got {mask.dtype}")
    if p.kind == "unstructured":
        return True
    if mask.dim() != 2:
        raise ValueError(f"expected a 2-D mask, got shape {tuple(mask.shape)}")
    R, K = mask.shape
    if p.kind == "nm":
        rem = (-K) % p.m
        m = torch.nn.functional.pad(mask, (0, rem)) if rem else mask
        return bool((m.reshape(R, -1, p.m).sum(-1) <= p.n).all())
    if p.kind == "row_balanced":
        kept = mask.sum(1)
        return bool((kept == kept[:1]).all()) if R else True
    if p.kind == "rows":
        return bool((mask == mask[:, :1]).all()) if K else True
    if p.kind == "columns":
        return bool((mask == mask[:1, :]).all()) if R else True
    gr, gc = -(-R // p.r), -(-K // p.c)
    rep = mask[:: p.r, :: p.c]  # the top-left element of each block
    return bool(torch.equal(_expand_blocks(rep, p.r, p.c, mask.shape), mask)) and rep.shape == (gr, gc)
