"""sparsekit: pruning front-ends, sparse and int8 kernels, and conversion that make pruned
PyTorch models run faster.

    import sparsekit
    masks = sparsekit.prune(model, sparsity=0.9)          # bool masks, applied in place
    sparsekit.convert(model, sparsekit.SparseConfig("csr"))  # nn.Linear -> SparseLinear
    sparsekit.save_pretrained(model, "out/")                # loads by itself: sparsekit.load_pretrained("out/")
    model, report = sparsekit.compress(model, "2:4", calib_batches, eval_batches)  # all of it in one call
"""
from ._version import __version__
from . import ops  # defines the ops (schemas, fake kernels, reference fallbacks) before kernels register
from . import _ext

_ext._load()
ops.register_autograd()  # the compiled Autograd kernels where _C registered them, else the Python formula

from .triton import register as _register_triton  # noqa: E402

_register_triton()  # Triton kernels as the CUDA implementations of their ops (no-op without triton)

from . import formats, nn, prune as _prune_pkg  # noqa: E402
from .convert import SparseConfig, convert  # noqa: E402
from .serialization import load_pretrained, load_safetensors, save_pretrained, save_safetensors  # noqa: E402
from .auto import explain  # noqa: E402
from . import quant  # noqa: E402
from . import parallel  # noqa: E402
from .parallel import shard  # noqa: E402
from .prune import apply_masks, calibrate, prune  # noqa: E402
from .compress import compress  # noqa: E402  (sparsekit.compress is the function; Recipe etc.: from sparsekit.compress import ...)

__all__ = ["__version__", "ops", "formats", "nn", "prune", "apply_masks", "calibrate", "convert", "SparseConfig", "info",
           "save_safetensors", "load_safetensors", "save_pretrained", "load_pretrained", "explain", "quant",
           "parallel", "shard", "compress"]


def info() -> dict:
    """Versions, build and backends; what `python -m sparsekit info` prints."""
    from ._info import collect

    return collect()
