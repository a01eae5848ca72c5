"""The schemas of every sparsekit op, in one place.

Backends only register implementations: C++ through TORCH_LIBRARY_IMPL(sparsekit, CPU|CUDA)
in csrc/, Triton through torch.library in sparsekit/triton/, and the pure-PyTorch reference
as the CompositeExplicitAutograd fallback (sparsekit/ops/__init__.py).
"""
import torch

NAMESPACE = "sparsekit"

SCHEMAS = {
    # y = x @ W.T + bias with W (out_features x K) in CSR: int32 crow_indices (out_features + 1),
    # int32 col_indices and values (nnz). x is (M, K); values, bias and y share x's dtype.
    "csr_mm": "csr_mm(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
    "int out_features, Tensor? bias=None) -> Tensor",
}

LIB = torch.library.Library(NAMESPACE, "DEF")
for _schema in SCHEMAS.values():
    LIB.define(_schema)
