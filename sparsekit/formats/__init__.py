"""Weight formats: each packs a masked (out_features x in_features) weight into plain tensors
that a kernel reads, and unpacks it exactly (`to_dense`)."""
from .base import SparseFormat, get, names, register
from .csr import CSRWeight

__all__ = ["SparseFormat", "CSRWeight", "get", "names", "register"]
