"""Recovery fine-tuning: a short training loop that keeps the masks fixed."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._guard import MaskGuard, check_plain_weight
from .batches import as_batch, main_output, tokens

__all__ = ["finetune", "distillation_loss"]


def distillation_loss(student_out: Any, teacher_out: Any, kind: str = "kl", temperature: float = 2.0,
                      mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``"kl"``: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the last dim, averaged
    over the other dims (Hinton et al.); ``"mse"``: mean squared error between the outputs. The
    outputs are the models' main outputs (a tensor, ``.logits``, ``.last_hidden_state``: see
    :func:`sparsekit.prune.batches.main_output`). `mask`: a bool token mask ``(batch, seq)`` (True =
    real token); when the outputs' leading dims are its shape, only real tokens count."""
    s, t = main_output(student_out), main_output(teacher_out).detach()
    if s.shape != t.shape:
        raise ValueError(f"distillation: student output {tuple(s.shape)} and teacher output {tuple(t.shape)} differ")
    if mask is not None:
        s, t = tokens(s, mask, use_current=False), tokens(t, mask, use_current=False)
    if kind == "kl":
        T = float(temperature)
        if not T > 0:
            raise ValueError(f"expected temperature > 0, got {temperature}")
        ls = F.log_softmax(s.float() / T, dim=-1).reshape(-1, s.shape[-1])
        lt = F.log_softmax(t.float() / T, dim=-1).reshape(-1, t.shape[-1])
        return F.kl_div(ls, lt, reduction="batchmean", log_target=True) * (T * T)
    if kind == "mse":
        return F.mse_loss(s.float(), t.float())
    raise ValueError(f"expected distill 'kl' or 'mse', got {kind!r}")


def finetune(
    model: nn.Module,
    masks: Dict[str, torch.Tensor],
    data: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    loss_fn: Union[Callable, str, None] = None,
    *,
    epochs: int = 1,
    steps: Optional[int] = None,
    max_norm: Optional[float] = 1.0,
    teacher: Optional[nn.Module] = None,
    distill: str = "kl",
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> List[float]:
    """Trains `model` on `data` with `optimizer`, keeping ``masks`` (``{fqn: bool}``) fixed.

    data: re-iterable batches ``(input, target)`` (or inputs alone when only distilling), or dicts of
      model inputs run as ``model(**batch)`` (Hugging Face; target ``batch["labels"]``); tensors are
      moved to the model's device (:mod:`sparsekit.prune.batches`). Run for `epochs` passes, or stop
      after `steps` optimizer steps when given.
    loss_fn: ``loss_fn(output, target)``, the task loss; ``"model"``: the model's own ``output.loss``
      (a Hugging Face model given ``labels`` in the batch).
    teacher: a dense model (e.g. a ``copy.deepcopy`` taken before pruning); adds
      :func:`distillation_loss` (`distill` = ``"kl"`` on logits or ``"mse"`` on outputs, at
      `temperature`): ``loss = (1 - alpha) * task + alpha * distill``; without `loss_fn`, distillation
      alone. The teacher runs in eval mode under no_grad, on the same batch; padding tokens of dict
      batches (``attention_mask == 0``) do not enter the distillation loss.
    max_norm: clip the global gradient norm to this (None: no clipping).

    Every step: gradients of pruned weights are zeroed (hooks), the norm is clipped, the optimizer
    steps, and the masks are re-applied (so momentum or weight decay cannot revive a pruned weight).
    Returns the loss of every step. The model's (and teacher's) train/eval mode is restored.
    """
    from . import apply_masks

    if isinstance(loss_fn, str) and loss_fn != "model":
        raise ValueError(f"finetune: expected loss_fn to be a callable, 'model' or None, got {loss_fn!r}")
    if loss_fn is None and teacher is None:
        raise ValueError("finetune: expected a loss_fn, a teacher, or both; got neither")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"finetune: expected alpha in [0, 1], got {alpha}")
    if distill not in ("kl", "mse"):
        raise ValueError(f"finetune: expected distill 'kl' or 'mse', got {distill!r}")
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"finetune: expected max_norm > 0 or None, got {max_norm}")
    if steps is not None and steps < 0 or epochs < 0:
        raise ValueError(f"finetune: expected epochs >= 0 and steps >= 0 or None, got epochs={epochs}, steps={steps}")
    modules = dict(model.named_modules())
    layers = {}
    for fqn, m in masks.items():
        if fqn not in modules:
            raise KeyError(f"finetune: the model has no module {fqn!r}")
        check_plain_weight(modules[fqn], fqn, "finetune")
        layers[fqn] = modules[fqn]
    device = next(model.parameters()).device
    masks = {fqn: m.to(device=layers[fqn].weight.device, dtype=torch.bool) for fqn, m in masks.items()}
    apply_masks(model, masks)
    params = [p for p in model.parameters() if p.requires_grad]
    modes = [(m, m.training) for m in model.modules()]
    tmodes = [(m, m.training) for m in teacher.modules()] if teacher is not None else []
    guard = MaskGuard(layers, masks)
    losses: List[float] = []
    try:
        model.train()
        if teacher is not None:
            teacher.eval()
        done = False
        for _ in range(epochs if steps is None else 10**9):
            n_batches = 0
            for batch in data:
                if steps is not None and len(losses) >= steps:
                    done = True
                    break
                n_batches += 1
                b = as_batch(batch, device, "a training batch")
                out = b.forward(model)
                loss = None
                if loss_fn == "model":
                    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
                    if not isinstance(loss, torch.Tensor):
                        raise ValueError("finetune: loss_fn='model' needs the model to return .loss "
                                         "(a Hugging Face model given 'labels' in the batch)")
                elif loss_fn is not None:
                    if b.target is None:
                        raise ValueError("finetune: a loss_fn needs batches (input, target) or dicts with 'labels'")
                    loss = loss_fn(out, b.target)
                if teacher is not None:
                    with torch.no_grad():
                        t_out = b.forward(teacher)
                    d = distillation_loss(out, t_out, distill, temperature, mask=b.mask)
                    loss = d if loss is None else (1 - alpha) * loss + alpha * d
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_norm)
                optimizer.step()
                apply_masks(model, masks)
                losses.append(float(loss.detach()))
            if done or n_batches == 0:
                break
    finally:
        guard.remove()
        for m, t in modes + tmodes:
            m.training = t
    return losses
