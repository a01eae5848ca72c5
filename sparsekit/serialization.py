"""Saving converted models with safetensors.

safetensors holds tensors and a string-to-string metadata map; the per-layer records that
SparseLinear keeps as extra state (format, layout version, shape) travel in the metadata, so
loading checks them exactly as `load_state_dict` does for a `torch.save`d state dict.
"""
from __future__ import annotations

import json

import torch
from torch import nn

_META_KEY = "sparsekit.extra_state"
_EXTRA = "._extra_state"


def save_safetensors(model: nn.Module, path: str) -> None:
    """Writes the model's state dict (tensors) and the SparseLinear records (metadata) to `path`."""
    from safetensors.torch import save_file

    tensors, extra = {}, {}
    for k, v in model.state_dict().items():
        if k.endswith(_EXTRA) or k == "_extra_state":
            extra[k] = v
        elif isinstance(v, torch.Tensor):
            tensors[k] = v.detach().contiguous()
    save_file(tensors, path, metadata={_META_KEY: json.dumps(extra)})


def load_safetensors(model: nn.Module, path: str, strict: bool = True):
    """Loads what `save_safetensors` wrote into `model` (converted with the same formats)."""
    from safetensors import safe_open

    sd = {}
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                sd[k] = f.get_tensor(k)
    except OSError:
        raise
    except Exception as e:  # safetensors' own error type: a truncated or corrupt file
        raise RuntimeError(f"{path}: not a complete safetensors file ({e}); nothing was loaded") from e
    if _META_KEY not in meta:
        raise RuntimeError(f"{path}: not written by sparsekit.save_safetensors (no {_META_KEY!r} metadata)")
    sd.update(json.loads(meta[_META_KEY]))
    return model.load_state_dict(sd, strict=strict)
