"""Loads the compiled kernels (sparsekit._C) once, or records why they are not there.

`import sparsekit` never fails because of the extension: when it is missing or does not
load (built against another torch, say), a warning says so once with the reason and the
pure-PyTorch references serve every op.
"""
from __future__ import annotations

import atexit
import importlib
import os
import warnings

__all__ = ["C", "load_error", "available"]

C = None
load_error: str | None = None


class ExtensionWarning(UserWarning):
    """The compiled kernels could not be loaded; the PyTorch references are used."""


def _load():
    global C, load_error
    if os.environ.get("SPARSEKIT_DISABLE_EXTENSION", "").strip() in ("1", "true", "yes"):
        load_error = "disabled by SPARSEKIT_DISABLE_EXTENSION"
    else:
        try:
            C = importlib.import_module("sparsekit._C")
        except Exception as e:  # ImportError, OSError (undefined symbols from another torch), ...
            C = None
            load_error = f"{type(e).__name__}: {e}"
    if C is not None and getattr(C, "with_cusparselt", 0):
        # cuSPARSELt plans and handles are freed here, while CUDA is still up, not by C++ static
        # destructors (which may run after the driver has gone).
        atexit.register(C.cusparselt_release)
    if C is None:
        warnings.warn(
            f"sparsekit: the compiled kernels are not available ({load_error}); "
            "the pure-PyTorch reference implementations will be used. "
            "Build them with `pip install --no-build-isolation .` against the installed torch.",
            ExtensionWarning,
            stacklevel=3,
        )


def available() -> bool:
    """True when sparsekit._C is loaded."""
    return C is not None
