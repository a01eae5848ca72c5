"""Saving converted models with safetensors.

safetensors holds tensors and a string-to-string metadata map; the per-layer records that
SparseLinear keeps as extra state (format, layout version, shape) travel in the metadata, so
loading checks them exactly as `load_state_dict` does for a `torch.save`d state dict.

Two levels:

* :func:`save_safetensors` / :func:`load_safetensors`: one file, loaded into a model that you built
  and converted the same way.
* :func:`save_pretrained` / :func:`load_pretrained`: a directory that loads by itself. Beside the
  safetensors file it holds ``sparsekit.json`` (which layers are ``SparseLinear`` in which format,
  the model's class, versions, the weights file's size and SHA-256) and, for a Hugging Face
  transformers model, its ``config.json`` (and ``generation_config.json``). Loading builds the
  model from the config (a plain ``nn.Module``: from the `builder` you pass), puts ``SparseLinear``
  layers where the checkpoint has them and loads the packed buffers: nothing from the directory is
  executed (no pickle: json and safetensors only; the transformers class is looked up by name in
  the ``transformers`` package and must be one of its own models).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

_META_KEY = "sparsekit.extra_state"
_ALIAS_KEY = "sparsekit.aliases"
_EXTRA = "._extra_state"

MANIFEST = "sparsekit.json"
WEIGHTS = "model.safetensors"
CHECKPOINT_VERSION = 1

__all__ = ["save_safetensors", "load_safetensors", "save_pretrained", "load_pretrained", "CHECKPOINT_VERSION"]


def _split_shared(sd: Dict[str, torch.Tensor]):
    """(tensors to write, {alias: name written}): a tensor that is another one (tied weights) is
    written once; one that only overlaps another's storage is written as a copy."""
    tensors: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    seen: Dict[Any, list] = {}
    for k, v in sd.items():
        v = v.detach()
        if v.device.type != "meta" and v.numel():
            key = (v.device, v.untyped_storage().data_ptr())
            same = None
            for k2, v2 in seen.get(key, []):
                if (v2.data_ptr(), v2.shape, v2.stride(), v2.dtype) == (v.data_ptr(), v.shape, v.stride(), v.dtype):
                    same = k2
                    break
            if same is not None:
                aliases[k] = same
                continue
            overlaps = key in seen
            seen.setdefault(key, []).append((k, v))
            tensors[k] = v.clone().contiguous() if overlaps else v.contiguous()
        else:
            tensors[k] = v.contiguous()
    return tensors, aliases


def save_safetensors(model: nn.Module, path: str) -> None:
    """Writes the model's state dict (tensors) and the SparseLinear records (metadata) to `path`.
    Tied tensors (the same tensor under two names) are written once and tied again at loading."""
    from safetensors.torch import save_file

    plain, extra = {}, {}
    for k, v in model.state_dict().items():
        if k.endswith(_EXTRA) or k == "_extra_state":
            extra[k] = v
        elif isinstance(v, torch.Tensor):
            plain[k] = v
    tensors, aliases = _split_shared(plain)
    meta = {_META_KEY: json.dumps(extra)}
    if aliases:
        meta[_ALIAS_KEY] = json.dumps(aliases)
    save_file(tensors, path, metadata=meta)


def _read_safetensors(path: str) -> Dict[str, Any]:
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
    try:
        sd.update(json.loads(meta[_META_KEY]))
        for alias, name in json.loads(meta.get(_ALIAS_KEY, "{}")).items():
            sd[alias] = sd[name]
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"{path}: unreadable sparsekit metadata ({e}); nothing was loaded") from e
    return sd


def load_safetensors(model: nn.Module, path: str, strict: bool = True):
    """Loads what `save_safetensors` wrote into `model` (converted with the same formats)."""
    return model.load_state_dict(_read_safetensors(path), strict=strict)


# ----------------------------------------------------------------------------- self-contained checkpoints


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_transformers_model(model: nn.Module) -> bool:
    mod = type(model).__module__
    return mod.startswith("transformers.") and hasattr(model, "config") and hasattr(model.config, "to_json_file")


def _layer_record(m) -> Dict[str, Any]:
    rec: Dict[str, Any] = dict(format=m.format, in_features=m.in_features, out_features=m.out_features,
                               bias=m.bias is not None, options={})
    if m.format == "bsr":
        v = m._buffers["values"]
        rec["options"]["blocksize"] = [int(v.shape[1]), int(v.shape[2])]
    floats = [t for n, t in m._buffers.items() if t is not None and t.is_floating_point()
              and n not in m._format_cls.float32_buffers]
    dt = m.bias.dtype if m.bias is not None else (floats[0].dtype if floats else torch.get_default_dtype())
    rec["dtype"] = str(dt).replace("torch.", "")
    return rec


def save_pretrained(model: nn.Module, save_directory: Union[str, os.PathLike], *,
                    weights_name: str = WEIGHTS) -> str:
    """Writes `model` (converted with :func:`sparsekit.convert`, or not) to `save_directory` so that
    :func:`load_pretrained` rebuilds it alone. Files: the safetensors weights (packed buffers,
    SparseLinear records; :func:`save_safetensors`), ``sparsekit.json`` (the layers in each format
    with their metadata, the model's class, versions, the weights' SHA-256), and for a Hugging Face
    transformers model its ``config.json`` (+ ``generation_config.json``). ``sparsekit.json`` is
    written last: a directory without it is not a complete checkpoint. Returns the directory."""
    from . import __version__
    from .nn import SparseLinear

    if not isinstance(model, nn.Module):
        raise TypeError(f"save_pretrained: expected an nn.Module, got {type(model).__name__}")
    d = os.fspath(save_directory)
    os.makedirs(d, exist_ok=True)
    man = os.path.join(d, MANIFEST)
    if os.path.exists(man):
        os.remove(man)  # until the new one is complete, the directory is not a checkpoint
    layers = {fqn: _layer_record(m) for fqn, m in model.named_modules() if isinstance(m, SparseLinear)}
    if _is_transformers_model(model):
        model.config.save_pretrained(d)
        gc = getattr(model, "generation_config", None)
        if gc is not None and hasattr(gc, "save_pretrained"):
            try:
                if not model.can_generate():
                    gc = None
            except Exception:  # noqa: BLE001 -- older transformers: keep it
                pass
            if gc is not None:
                gc.save_pretrained(d)
        kind = dict(kind="transformers", **{"class": type(model).__name__}, config="config.json")
    else:
        kind = dict(kind="module", **{"class": f"{type(model).__module__}.{type(model).__qualname__}"})
    wpath = os.path.join(d, weights_name)
    save_safetensors(model, wpath)
    # submodules set to None (e.g. BertModel(config, add_pooling_layer=False)): constructor arguments
    # that the config does not hold; the loaded model drops them too. A None assigned to a name that
    # was never a submodule is a plain attribute: recorded as well, used only where the built model has
    # a submodule of that name
    absent = sorted({f"{fqn}.{k}" if fqn else k for fqn, m in model.named_modules()
                     for k, v in list(m._modules.items()) + list(vars(m).items())
                     if v is None and not k.startswith("_")})
    manifest = dict(
        sparsekit_checkpoint=CHECKPOINT_VERSION,
        sparsekit_version=__version__,
        torch_version=torch.__version__.split("+")[0],
        model=kind,
        layers=layers,
        absent_modules=absent,
        weights=dict(file=weights_name, bytes=os.path.getsize(wpath), sha256=_sha256(wpath)),
    )
    tmp = man + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, man)
    return d


def _read_manifest(d: str) -> Dict[str, Any]:
    man = os.path.join(d, MANIFEST)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"load_pretrained: {d!r} is not a directory")
    if not os.path.isfile(man):
        raise FileNotFoundError(f"load_pretrained: {d!r} is not a sparsekit checkpoint (no {MANIFEST}; "
                                f"write one with sparsekit.save_pretrained)")
    try:
        with open(man) as f:
            m = json.load(f)
    except ValueError as e:
        raise RuntimeError(f"load_pretrained: {man} is not valid JSON ({e})") from e
    if not isinstance(m, dict) or not isinstance(m.get("sparsekit_checkpoint"), int):
        raise RuntimeError(f"load_pretrained: {man} is not a sparsekit checkpoint manifest")
    v = m["sparsekit_checkpoint"]
    if v > CHECKPOINT_VERSION:
        raise RuntimeError(f"load_pretrained: checkpoint layout version {v} (written by sparsekit "
                           f"{m.get('sparsekit_version')}); this sparsekit reads version {CHECKPOINT_VERSION}: "
                           f"upgrade sparsekit")
    for key in ("model", "layers", "weights"):
        if not isinstance(m.get(key), dict):
            raise RuntimeError(f"load_pretrained: {man} lacks its {key!r} record")
    return m


def _build_transformers(d: str, rec: Dict[str, Any]) -> nn.Module:
    try:
        import transformers
    except ImportError as e:
        raise ImportError("load_pretrained: this checkpoint holds a Hugging Face transformers model "
                          f"({rec.get('class')}); install transformers, or pass builder=...") from e
    name = rec.get("class")
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and cls.__module__.startswith("transformers.models.") and getattr(cls, "config_class", None) is not None):
        raise RuntimeError(f"load_pretrained: {name!r} is not a model class of the installed transformers "
                           f"{transformers.__version__}; pass builder=... to build the model yourself")
    cname = rec.get("config") or "config.json"
    if not isinstance(cname, str) or os.path.basename(cname) != cname:
        raise RuntimeError(f"load_pretrained: bad config file name {cname!r} in {MANIFEST}")
    cpath = os.path.join(d, cname)
    if not os.path.isfile(cpath):
        raise FileNotFoundError(f"load_pretrained: {d!r} lacks {os.path.basename(cpath)}, the model's config")
    config = cls.config_class.from_json_file(cpath)
    ctx = None
    try:  # the weights are overwritten by the checkpoint: skip the random initialisation
        from transformers.initialization import no_init_weights as ctx
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights as ctx
        except ImportError:
            ctx = None
    if ctx is not None:
        with ctx():
            model = cls(config)
    else:
        model = cls(config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    gpath = os.path.join(d, "generation_config.json")
    if os.path.isfile(gpath) and getattr(model, "generation_config", None) is not None:
        model.generation_config = transformers.GenerationConfig.from_pretrained(d, local_files_only=True)
    return model


def _align_dtypes(model: nn.Module, sd: Dict[str, Any]) -> None:
    """Floating parameters and buffers take the saved dtype (a bf16 checkpoint loads as bf16)."""
    for name, t in sd.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        mod_name, _, attr = name.rpartition(".")
        try:
            mod = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue  # load_state_dict reports it
        cur = mod._parameters.get(attr)
        if cur is None:
            cur = mod._buffers.get(attr)
        if cur is not None and cur.is_floating_point() and cur.dtype != t.dtype:
            cur.data = cur.data.to(t.dtype)  # the same Parameter object: ties survive


def load_pretrained(directory: Union[str, os.PathLike], *, builder: Optional[Callable[[], nn.Module]] = None,
                    device: Union[str, torch.device, None] = None, verify: bool = True) -> nn.Module:
    """The model that :func:`save_pretrained` wrote to `directory`, converted as it was, with its
    packed weights, in eval mode; nothing to rebuild or convert.

    builder: ``builder() -> nn.Module``, the model before conversion (a fresh instance of its class:
      any weights are overwritten). Needed for a plain ``nn.Module`` checkpoint; for a transformers
      checkpoint the model is built from its ``config.json`` (a builder given here is used instead).
    device: where to put the model (default: the CPU).
    verify: check the weights file's size and SHA-256 against ``sparsekit.json`` first.

    Errors: a missing directory / manifest / weights / config file is a FileNotFoundError; a
    corrupted or modified weights file, a layout version this sparsekit does not read, or layers
    that the built model lacks are RuntimeErrors that say which.
    """
    from .nn import SparseLinear

    d = os.fspath(directory)
    man = _read_manifest(d)
    w = man["weights"]
    wpath = os.path.join(d, w.get("file") or WEIGHTS)
    if os.path.basename(wpath) != w.get("file", WEIGHTS):
        raise RuntimeError(f"load_pretrained: bad weights file name {w.get('file')!r} in {MANIFEST}")
    if not os.path.isfile(wpath):
        raise FileNotFoundError(f"load_pretrained: {d!r} lacks its weights file {os.path.basename(wpath)}")
    if verify:
        size = os.path.getsize(wpath)
        if size != w.get("bytes"):
            raise RuntimeError(f"load_pretrained: {wpath} has {size} bytes, {MANIFEST} says {w.get('bytes')}: "
                               f"the file is truncated or was replaced; nothing was loaded")
        if _sha256(wpath) != w.get("sha256"):
            raise RuntimeError(f"load_pretrained: {wpath} does not match the SHA-256 in {MANIFEST}: the file is "
                               f"corrupted or was modified; nothing was loaded")
    rec = man["model"]
    if builder is not None:
        model = builder()
        if not isinstance(model, nn.Module):
            raise TypeError(f"load_pretrained: expected builder() to return an nn.Module, got {type(model).__name__}")
    elif rec.get("kind") == "transformers":
        model = _build_transformers(d, rec)
    else:
        raise ValueError(f"load_pretrained: {d!r} holds a plain nn.Module ({rec.get('class')}); pass "
                         f"builder=... that returns the model before conversion")
    sd = _read_safetensors(wpath)
    for fqn in man.get("absent_modules") or []:
        parent, _, child = str(fqn).rpartition(".")
        try:
            pm = model.get_submodule(parent) if parent else model
        except AttributeError:
            continue
        if isinstance(pm._modules.get(child), nn.Module):
            del pm._modules[child]
            setattr(pm, child, None)
    for fqn, lr in man["layers"].items():
        try:
            cur = model.get_submodule(fqn)
        except AttributeError:
            raise RuntimeError(f"load_pretrained: the checkpoint has layer {fqn!r}, which the built "
                               f"{type(model).__name__} lacks") from None
        if isinstance(cur, SparseLinear) and cur.format == lr["format"]:
            continue  # a builder that returns a converted model
        if not isinstance(cur, (nn.Linear, SparseLinear)):
            raise RuntimeError(f"load_pretrained: the checkpoint has a SparseLinear at {fqn!r}; the built model "
                               f"has a {type(cur).__name__} there")
        if (cur.in_features, cur.out_features) != (lr["in_features"], lr["out_features"]):
            raise RuntimeError(f"load_pretrained: layer {fqn!r} is ({lr['out_features']}, {lr['in_features']}) in "
                               f"the checkpoint, ({cur.out_features}, {cur.in_features}) in the built model")
        opts = dict(lr.get("options") or {})
        if "blocksize" in opts:
            opts["blocksize"] = tuple(opts["blocksize"])
        dtype = getattr(torch, str(lr.get("dtype", "float32")), None)
        if not isinstance(dtype, torch.dtype):
            raise RuntimeError(f"load_pretrained: unknown dtype {lr.get('dtype')!r} for layer {fqn!r}")
        new = SparseLinear(lr["in_features"], lr["out_features"], bias=bool(lr["bias"]), format=lr["format"],
                           dtype=dtype, **opts)
        parent, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    _align_dtypes(model, sd)
    model.load_state_dict(sd, strict=True)
    if device is not None:
        model.to(device)
    return model.eval()
