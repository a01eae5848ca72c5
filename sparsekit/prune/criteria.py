"""Importance scores of a weight: higher means keep."""
from __future__ import annotations

import torch


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|w|, in float32."""
    return weight.detach().abs().float()


CRITERIA = {"magnitude": magnitude}
