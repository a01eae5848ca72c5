"""What sparsekit was built with and what it can run here."""
from __future__ import annotations

import os
import platform

import torch

from . import _ext
from ._version import __version__


def _cusparselt_version(C):
    """'built against X, loaded Y' for a build with cuSPARSELt, else None."""
    if C is None or not getattr(C, "with_cusparselt", 0):
        return None
    try:
        loaded = C.cusparselt_loaded_version()
    except Exception as e:  # the library is linked, so this should not happen; say why if it does
        loaded = f"unknown ({e})"
    return f"built against {C.cusparselt_version}, loaded {loaded}"


def _cpu_dense_min_m(C):
    """From which M the CPU 2:4, int8-wo, CSR and bitmap ops multiply dense panels of W with ATen's GEMM,
    per op and dtype (0: never; CSR and bitmap also need enough kept weights: docs/cpu.md)."""
    if C is None:
        return None
    try:
        return C.cpu_dense_min_m()
    except ValueError as e:  # a bad SPARSEKIT_CPU_DENSE_MIN_M
        return str(e).splitlines()[0]


def collect() -> dict:
    C = _ext.C
    d = {
        "sparsekit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": None,
        "compiled_extension": C is not None,
        "extension_error": _ext.load_error,
        "compiled_cuda_kernels": bool(C.with_cuda) if C is not None else False,
        "compiled_cuda_archs": (C.cuda_archs or None) if C is not None else None,
        "cusparselt_linked": bool(C.with_cusparselt) if C is not None else False,
        "cusparselt_version": _cusparselt_version(C),
        "cpu_isa": C.cpu_isa() if C is not None else None,
        "cpu_dense_min_m": _cpu_dense_min_m(C),
        "cpu_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda_devices": [],
    }
    try:
        import triton

        d["triton"] = triton.__version__
    except Exception:
        pass
    if torch.cuda.is_available():
        d["cuda_devices"] = [
            f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())
        ]
    cuda_dev = bool(d["cuda_devices"])
    d["backends"] = {
        "cpu (compiled C++)": C is not None,
        "cuda (compiled CUDA)": bool(d["compiled_cuda_kernels"]) and cuda_dev,
        "triton": d["triton"] is not None and cuda_dev,
        "reference (PyTorch)": True,
    }
    if os.environ.get("SPARSEKIT_DISABLE_EXTENSION"):
        d["note"] = "SPARSEKIT_DISABLE_EXTENSION is set"
    return d


def format_info(d: dict) -> str:
    lines = []
    for k, v in d.items():
        if k == "backends":
            lines.append("backends:")
            for name, live in v.items():
                lines.append(f"  {name:<22} {'live' if live else 'not available'}")
        elif k == "cuda_devices":
            lines.append(f"{k + ':':<24}{', '.join(v) if v else 'none'}")
        else:
            lines.append(f"{k + ':':<24}{v}")
    return "\n".join(lines)
