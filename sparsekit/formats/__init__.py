"""Weight formats: each packs a masked (out_features x in_features) weight into plain tensors
that a kernel reads (layouts: LAYOUTS.md beside this file), and unpacks it (`to_dense`)."""
from .base import SparseFormat, get, names, register
from .csr import CSRWeight
from .bsr import BSRWeight
from .bitmap import BitmapWeight
from .int8 import Int8Weight, Int8WeightOnly, quantize_rows
from .sparse24 import Sparse24Int8Weight, Sparse24Weight

__all__ = ["SparseFormat", "CSRWeight", "BSRWeight", "BitmapWeight", "Sparse24Weight", "Sparse24Int8Weight",
           "Int8Weight", "Int8WeightOnly", "quantize_rows", "get", "names", "register"]
