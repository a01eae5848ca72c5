"""Modules that run sparse weights."""
from .linear import SparseLinear

__all__ = ["SparseLinear"]
