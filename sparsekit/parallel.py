"""Tensor parallelism: each rank keeps its own packed shard of a converted model's linear layers.

    sparsekit.convert(model, sparsekit.SparseConfig("2:4+int8"))       # on every rank, the same weights
    sparsekit.shard(model, sparsekit.parallel.tp_plan(model))          # default group: WORLD

The plan is the one of ``torch.distributed.tensor.parallel.parallelize_module``: ``{fqn pattern: style}``,
a pattern's dot-separated parts matched with ``fnmatch`` ("model.layers.*.mlp.up_proj"), the style
"colwise" or "rowwise" (or torch's ``ColwiseParallel()`` / ``RowwiseParallel()`` with their default
layouts, which are these two). Megatron's pattern, as there:

* colwise: rank r keeps output rows [r N/W, (r+1) N/W) and their bias; input replicated, output the rank's
  slice of the features (a plain tensor: ``use_local_output=True``). No communication.
* rowwise: rank r keeps input columns [r K/W, (r+1) K/W); its input is the rank's slice (what a colwise
  layer before it gives), its partial product goes through one all-reduce (sum), then the bias, once.

Every format is sliced from its own packed buffers, never re-pruned: the float formats (csr, bsr, bitmap,
2:4) are unpacked, cut and packed again with the same kept positions (and BSR's block); the int8 formats
cut their int8 values and keep the per-output-channel scales (cut with the rows for colwise, whole for
rowwise), so no weight is quantized twice. W8A8 rowwise layers ("int8", "2:4+int8") quantize their input
slice with the *whole* token's scale (one more all-reduce, max, of M floats), so every rank's int8 input
is the unsharded one; their partial products are reduced in float32.

The all-reduces are ``torch.distributed._functional_collectives`` (traceable by torch.compile, no graph
break); they have no autograd formula: sharded models are for inference.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from . import ops  # noqa: F401  (defines the ops)
from .formats.sparse24 import pack_24
from .nn import SparseLinear

__all__ = ["shard", "tp_plan", "RowwiseSparseLinear", "RowwiseLinear"]

COLWISE, ROWWISE = "colwise", "rowwise"

# head-count attributes of an attention module (transformers' Llama family and BERT), divided by the world
# size on the module whose projections are sharded colwise
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "num_key_value_heads", "all_head_size")
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size")

# The standard plan by layer-name suffix: transformers' Llama / Mistral / Qwen2 (their own
# config.base_model_tp_plan) and BERT.
_SUFFIX_PLAN = (
    ("self_attn.q_proj", COLWISE), ("self_attn.k_proj", COLWISE), ("self_attn.v_proj", COLWISE),
    ("self_attn.o_proj", ROWWISE),
    ("mlp.gate_proj", COLWISE), ("mlp.up_proj", COLWISE), ("mlp.down_proj", ROWWISE),
    ("attention.self.query", COLWISE), ("attention.self.key", COLWISE), ("attention.self.value", COLWISE),
    ("attention.output.dense", ROWWISE), ("intermediate.dense", COLWISE), ("output.dense", ROWWISE),
)


# ------------------------------------------------------------------------------------------ the plan
def tp_plan(model: nn.Module) -> Dict[str, str]:
    """The usual plan of a Llama-style (q, k, v, gate, up colwise; o, down rowwise) or BERT-style (query,
    key, value, intermediate colwise; attention output and output rowwise) model: patterns with ``*`` for
    the layer index. Raises ValueError when the model has none of these layers."""
    plan: Dict[str, str] = {}
    for fqn, m in model.named_modules():
        if not isinstance(m, (nn.Linear, SparseLinear)):
            continue
        parts = fqn.split(".")
        for suffix, style in _SUFFIX_PLAN:  # the longer suffixes first: attention.output.dense before output.dense
            s = suffix.split(".")
            if parts[-len(s):] == s:
                plan[".".join("*" if p.isdigit() else p for p in parts)] = style
                break
    if not plan:
        raise ValueError(f"tp_plan: {type(model).__name__} has no Llama-style (self_attn.q_proj, mlp.up_proj, ...) or "
                         "BERT-style (attention.self.query, intermediate.dense, ...) linear layers; write the plan "
                         "by hand: {'fqn pattern': 'colwise' | 'rowwise'}")
    return plan


def _style(key: str, value: Any) -> str:
    if isinstance(value, str):
        if value in (COLWISE, ROWWISE):
            return value
        raise ValueError(f"shard: plan[{key!r}] = {value!r}; expected 'colwise' or 'rowwise'")
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    default = {ColwiseParallel: ((Replicate(),), (Shard(-1),), COLWISE),
               RowwiseParallel: ((Shard(-1),), (Replicate(),), ROWWISE)}.get(type(value))
    if default is None:
        raise ValueError(f"shard: plan[{key!r}] is a {type(value).__name__}; expected 'colwise', 'rowwise', "
                         "ColwiseParallel() or RowwiseParallel()")
    if (tuple(value.input_layouts), tuple(value.output_layouts)) != default[:2] or not value.use_local_output:
        raise ValueError(f"shard: plan[{key!r}]: only the default layouts of {type(value).__name__} (input "
                         f"{default[0][0]}, output {default[1][0]}, use_local_output=True) are supported")
    return default[2]


def _matches(pattern: str, fqn: str) -> bool:
    p, f = pattern.split("."), fqn.split(".")
    return len(p) == len(f) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(f, p))


def _group(process_group) -> Tuple[Any, str, int, int]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("shard: torch.distributed is not initialized; call torch.distributed.init_process_group "
                           "(gloo on CPU, nccl on GPUs) on every rank first (torchrun sets the environment)")
    if process_group is None:
        pg = dist.group.WORLD
    elif isinstance(process_group, dist.ProcessGroup):
        pg = process_group
    else:
        from torch.distributed.device_mesh import DeviceMesh

        if not isinstance(process_group, DeviceMesh):
            raise TypeError(f"shard: expected a ProcessGroup, a 1-d DeviceMesh or None, got "
                            f"{type(process_group).__name__}")
        if process_group.ndim != 1:
            raise ValueError(f"shard: expected a 1-d DeviceMesh, got {process_group.ndim} dimensions; pass "
                             "mesh['tp'] (the tensor-parallel dimension)")
        pg = process_group.get_group()
    return pg, pg.group_name, dist.get_rank(pg), dist.get_world_size(pg)


# ------------------------------------------------------------------------------------------ slicing packed weights
def _rebuild(fmt, **replace):
    """The same format with some buffers replaced (the constructors take the buffers in buffer_names order)."""
    return type(fmt)(*(replace.get(n, getattr(fmt, n)) for n in fmt.buffer_names), fmt.shape, check=False)


def _cut(t: torch.Tensor, style: str, rank: int, world: int) -> torch.Tensor:
    """Rank's rows (colwise) or columns (rowwise) of a 2-d tensor."""
    if style == COLWISE:
        n = t.shape[0] // world
        return t[rank * n:(rank + 1) * n].contiguous()
    k = t.shape[1] // world
    return t[:, rank * k:(rank + 1) * k].contiguous()


_SLICEABLE = ("csr", "bsr", "bitmap", "2:4", "int8", "int8-wo", "2:4+int8")


def _slice_format(fmt, style: str, rank: int, world: int):
    """The rank's shard of a packed weight, in the same format."""
    name = fmt.name
    if name in ("int8", "int8-wo"):
        scale = _cut(fmt.scale[:, None], style, rank, world)[:, 0] if style == COLWISE else fmt.scale.clone()
        q = _cut(fmt.qweight, style, rank, world)
        return type(fmt)(q, scale.contiguous(), tuple(q.shape))
    # kept positions: the format unpacked with every stored value set to one
    mask = _rebuild(fmt, values=torch.ones_like(fmt.values)).to_dense() != 0
    mask = _cut(mask, style, rank, world)
    if name == "2:4+int8":
        # the int8 values (as float, exact) at their positions, repacked; scales are per output channel
        q = _cut(_rebuild(fmt, scale=torch.ones_like(fmt.scale)).to_dense(), style, rank, world)
        values, meta = pack_24(q, mask, "shard")
        scale = _cut(fmt.scale[:, None], style, rank, world)[:, 0] if style == COLWISE else fmt.scale.clone()
        return type(fmt)(values.to(torch.int8), meta, scale.contiguous(), tuple(q.shape))
    if name in ("csr", "bitmap", "2:4", "bsr"):
        w = _cut(fmt.to_dense(), style, rank, world)
        opts = {"blocksize": fmt.blocksize} if name == "bsr" else {}
        return type(fmt).from_dense(w, mask, **opts)
    raise NotImplementedError(f"shard: no rule to slice the {name!r} format (known: {', '.join(_SLICEABLE)})")


def _shard_check(fqn: str, m: nn.Module, style: str, world: int) -> None:
    N, K = m.out_features, m.in_features
    dim, size = ("out_features", N) if style == COLWISE else ("in_features", K)
    if size % world:
        raise ValueError(f"shard: {fqn} ({style}) has {dim} = {size}, which {world} ranks cannot split evenly")
    fmt = getattr(m, "format", "dense")
    if fmt == "bsr":
        R, C = m.values.shape[1], m.values.shape[2]
        n, k = (N // world, K) if style == COLWISE else (N, K // world)
        if n % R or k % C:
            raise ValueError(f"shard: {fqn} (bsr, blocks {R}x{C}, {style}): a shard of {n}x{k} is not made of whole "
                             "blocks")
    if fmt in ("2:4", "2:4+int8") and style == ROWWISE and (K // world) % 4:
        raise ValueError(f"shard: {fqn} ({fmt}, rowwise): a shard of {K // world} input features breaks the groups "
                         "of 4 (in_features / world size must divide by 4)")
    if fmt != "dense" and fmt not in _SLICEABLE:
        raise NotImplementedError(f"shard: {fqn}: no rule to slice the {fmt!r} format (known: {', '.join(_SLICEABLE)})")


# ------------------------------------------------------------------------------------------ the rowwise modules
def _all_reduce(t: torch.Tensor, op: str, group_name: str) -> torch.Tensor:
    import torch.distributed._functional_collectives as funcol

    return funcol.wait_tensor(funcol.all_reduce(t, op, group_name))


class _Rowwise:
    """What a rowwise shard adds: the rank, the world size and the group the partial products are summed over."""

    tp_rank: int
    tp_world_size: int
    tp_group_name: str

    def _finish(self, y: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        y = _all_reduce(y, "sum", self.tp_group_name)
        if self.bias is not None:
            y = y + self.bias
        return y.to(out_dtype)


class RowwiseLinear(_Rowwise, nn.Linear):
    """The rank's input columns of an ``nn.Linear`` (``weight`` (out, in / W)): partial product, all-reduce, bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(nn.functional.linear(x, self.weight), x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rowwise shard {self.tp_rank} of {self.tp_world_size}"


_QUANTIZE = torch.ops.sparsekit.quantize_per_token.default
_INT8_MM = torch.ops.sparsekit.int8_mm.default
_SPARSE24_INT8_MM = torch.ops.sparsekit.sparse24_int8_mm.default


class RowwiseSparseLinear(_Rowwise, SparseLinear):
    """The rank's input columns of a SparseLinear (in_features = K / W; the same buffers and state_dict keys):
    the format's matmul without bias, one all-reduce (sum), then the bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"RowwiseSparseLinear: expected input of shape (..., {self.in_features}) (this rank's "
                             f"slice of the features), got {tuple(x.shape)}")
        b = self._buffers
        if self.format in ("int8", "2:4+int8"):
            return self._finish(self._w8a8_partial(x.reshape(-1, self.in_features)), x.dtype).reshape(
                *x.shape[:-1], self.out_features)
        y = self._format_cls.apply(x, (self.out_features, self.in_features), None,
                                   *(b[n] for n in self._format_cls.buffer_names))
        return self._finish(y, x.dtype)

    def _w8a8_partial(self, x2: torch.Tensor) -> torch.Tensor:
        # Quantized with the whole token's scale: the max of |x| over every rank's slice, as
        # quantize_per_token computes it on the unsharded row (a row with NaN / Inf anywhere: scale NaN, q 0).
        xf = x2.float()
        finite = torch.isfinite(xf).all(dim=-1)
        amax = xf.abs().amax(dim=-1) if xf.shape[-1] else xf.new_zeros(xf.shape[0])
        amax = _all_reduce(torch.where(finite, amax, torch.full_like(amax, float("inf"))), "max", self.tp_group_name)
        finite = torch.isfinite(amax)
        scale = torch.where(finite & (amax > 0), amax / 127.0, torch.ones_like(amax))
        xf = torch.where(finite[:, None], xf, torch.zeros((), device=xf.device))
        q = torch.round(xf / scale[:, None]).clamp(-127, 127).to(torch.int8)
        s = torch.where(finite, scale, torch.full_like(scale, float("nan")))
        b = self._buffers
        if self.format == "int8":
            return _INT8_MM(q, s, None, b["qweight"], b["scale"], None, torch.float32)
        return _SPARSE24_INT8_MM(q, s, None, b["values"], b["meta"], b["scale"], None, torch.float32)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rowwise shard {self.tp_rank} of {self.tp_world_size}"


# ------------------------------------------------------------------------------------------ building the shards
def _dense_shard(m: nn.Linear, style: str, rank: int, world: int, group_name: str) -> nn.Linear:
    w = _cut(m.weight.detach(), style, rank, world)
    cls = nn.Linear if style == COLWISE else RowwiseLinear
    new = cls(w.shape[1], w.shape[0], bias=m.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.weight.requires_grad_(m.weight.requires_grad)
        if m.bias is not None:
            bias = _cut(m.bias.detach()[:, None], style, rank, world)[:, 0] if style == COLWISE else m.bias.detach()
            new.bias.copy_(bias)
            new.bias.requires_grad_(m.bias.requires_grad)
    return new


def _sparse_shard(m: SparseLinear, style: str, rank: int, world: int, group_name: str) -> SparseLinear:
    fmt = _slice_format(m.weight_format, style, rank, world)
    cls = SparseLinear if style == COLWISE else RowwiseSparseLinear
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.out_features, new.in_features = fmt.shape
    new.format, new._format_cls = m.format, m._format_cls
    for n, t in fmt.buffers().items():
        new.register_buffer(n, t)
    if m.bias is not None:
        bias = m.bias.detach()
        bias = _cut(bias[:, None], style, rank, world)[:, 0] if style == COLWISE else bias.clone()
        new.bias = nn.Parameter(bias.contiguous(), requires_grad=m.bias.requires_grad)
    else:
        new.register_parameter("bias", None)
    if hasattr(m, "_sparsekit_choice"):
        new._sparsekit_choice = m._sparsekit_choice
    new._format_cls.prepare(new)  # e.g. the cuSPARSELt-compressed 2:4 weight on CUDA
    return new


def _head_dim(parent: nn.Module) -> Optional[int]:
    for a in _HEAD_DIM_ATTRS:
        v = getattr(parent, a, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def shard(model: nn.Module, plan: Mapping[str, Any], process_group=None) -> nn.Module:
    """Replaces the layers that ``plan`` names ({fqn pattern: "colwise" | "rowwise"}) with this rank's shard,
    in place, and returns the model. Call it on every rank of ``process_group`` (a ProcessGroup, a 1-d
    DeviceMesh, or None for WORLD) with the same converted model: nn.Linear and SparseLinear of any format.

    Attention modules (with ``head_dim`` or ``attention_head_size``) whose projections are sharded colwise
    get their head counts (num_heads, num_attention_heads, num_key_value_heads, all_head_size) divided by
    the world size; the heads (and the key-value heads) must divide among the ranks. Everything is checked
    before any layer is replaced.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"shard: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.Linear, SparseLinear)):
        raise TypeError("shard: pass the model that holds the linear layers, not a layer itself")
    if not isinstance(plan, Mapping) or not plan:
        raise ValueError(f"shard: expected a non-empty plan {{fqn pattern: 'colwise' | 'rowwise'}}, got {plan!r}")
    styles = {k: _style(k, v) for k, v in plan.items()}
    modules = dict(model.named_modules())
    targets: Dict[str, str] = {}
    for pattern, style in styles.items():
        hits = [fqn for fqn in modules if fqn and _matches(pattern, fqn)]
        if not hits:
            raise ValueError(f"shard: plan entry {pattern!r} matches no module of {type(model).__name__} (patterns "
                             "match whole dotted names relative to the model, '*' within one part)")
        for fqn in hits:
            m = modules[fqn]
            if isinstance(m, _Rowwise) or getattr(m, "_sparsekit_tp", None):
                raise ValueError(f"shard: {fqn} is sharded already")
            if not isinstance(m, (nn.Linear, SparseLinear)):
                raise TypeError(f"shard: plan entry {pattern!r} names {fqn}, a {type(m).__name__}; only nn.Linear "
                                "and sparsekit.nn.SparseLinear layers are sharded")
            if targets.get(fqn, style) != style:
                raise ValueError(f"shard: {fqn} is both colwise and rowwise in the plan")
            targets[fqn] = style

    _, group_name, rank, world = _group(process_group)
    for fqn, style in targets.items():
        _shard_check(fqn, modules[fqn], style, world)
    # attention modules: heads per rank
    heads: Dict[str, Tuple[nn.Module, int]] = {}
    for fqn, style in targets.items():
        parent_name = fqn.rpartition(".")[0]
        parent = modules[parent_name]
        hd = _head_dim(parent)
        if style != COLWISE or hd is None:
            continue
        n = modules[fqn].out_features
        if n % hd == 0 and (n // hd) % world:
            raise ValueError(f"shard: {fqn} holds {n // hd} heads of {hd}, which {world} ranks cannot split "
                             "evenly (tensor parallelism needs the heads, and the key-value heads, to divide by "
                             "the world size)")
        heads[parent_name] = (parent, hd)
    for parent_name, (parent, hd) in heads.items():
        for a in _HEAD_ATTRS:
            v = getattr(parent, a, None)
            if isinstance(v, int) and not isinstance(v, bool) and v % world:
                raise ValueError(f"shard: {parent_name}.{a} = {v} does not divide among {world} ranks")

    with torch.no_grad():
        for fqn, style in targets.items():
            m = modules[fqn]
            make = _sparse_shard if isinstance(m, SparseLinear) else _dense_shard
            new = make(m, style, rank, world, group_name)
            new.train(m.training)
            new._sparsekit_tp = (style, rank, world)
            if style == ROWWISE:
                new.tp_rank, new.tp_world_size, new.tp_group_name = rank, world, group_name
            parent_name, _, child = fqn.rpartition(".")
            setattr(modules[parent_name], child, new)
    for parent_name, (parent, hd) in heads.items():
        for a in _HEAD_ATTRS:
            v = getattr(parent, a, None)
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(parent, a, v // world)
    return model
