"""Gradual pruning: sparsity raised over training steps on a schedule (Zhu & Gupta, 2017).

    pruner = GradualPruner(model, final_sparsity=0.9, start_step=100, end_step=1000, frequency=50)
    for batch in data:
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        pruner.step()          # after optimizer.step(): masks recomputed on schedule, re-applied always
    pruner.remove()            # takes the gradient hooks off; pruner.masks are the final masks
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from . import criteria
from ._guard import MaskGuard, check_plain_weight
from .calibrate import ACTIVATION_CRITERIA, Calibration, LayerStats, _Hooks
from .masks import Pattern, check_sparsity, parse_pattern

__all__ = ["sparsity_schedule", "GradualPruner"]


def sparsity_schedule(step: int, final_sparsity: float, start_step: int, end_step: int,
                      initial_sparsity: float = 0.0, schedule: str = "cubic") -> float:
    """The sparsity at `step`: 0 before `start_step`; from `initial_sparsity` at `start_step` to
    `final_sparsity` at `end_step` (and after), along

    * ``"cubic"`` (Zhu & Gupta): ``s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3`` -- fast
      early, while many redundant weights remain, slow at the end;
    * ``"linear"``: ``s_i + (s_f - s_i) * (t - t0) / (t1 - t0)``.
    """
    s_f = check_sparsity(final_sparsity, "final_sparsity")
    s_i = check_sparsity(initial_sparsity, "initial_sparsity")
    if schedule not in ("cubic", "linear"):
        raise ValueError(f"expected schedule 'cubic' or 'linear', got {schedule!r}")
    if end_step < start_step:
        raise ValueError(f"expected start_step <= end_step, got {start_step} > {end_step}")
    if step < start_step:
        return 0.0
    if step >= end_step:
        return s_f
    frac = (step - start_step) / (end_step - start_step)
    if schedule == "cubic":
        return s_f + (s_i - s_f) * (1.0 - frac) ** 3
    return s_i + (s_f - s_i) * frac


class GradualPruner:
    """Raises the sparsity of the model's nn.Linear layers over training steps.

    Call :meth:`step` once per training step, after ``optimizer.step()``. At step ``t`` (the number
    of ``step()`` calls so far) with ``start_step <= t <= end_step`` and ``(t - start_step) %
    frequency == 0`` (and at ``end_step``), the masks are recomputed at
    :func:`sparsity_schedule` ``(t)`` with `criterion`, `pattern` and `scope` (as in
    :func:`sparsekit.prune`); at every step they are re-applied (so that momentum or weight decay
    cannot revive a pruned weight), and gradient hooks keep the gradients of pruned weights at zero.

    Data-aware criteria use `calib` when given; otherwise the pruner gathers what they need from the
    training itself (running sums of inputs via forward hooks, of ``|grad|`` via the gradient hooks)
    since the last recomputation. With ``monotone=True`` (default) a pruned weight stays pruned.
    N:M patterns fix the sparsity and cannot be raised gradually (a ValueError).

    Other keyword arguments (``filter_fn``, ``min_sparsity``, ``max_sparsity``, ``overrides``,
    ``pad``, ``normalize``, ``seed``) are those of :func:`sparsekit.prune`.
    """

    def __init__(self, model: nn.Module, final_sparsity: float, start_step: int = 0, end_step: int = 1000,
                 frequency: int = 100, *, initial_sparsity: float = 0.0, schedule: str = "cubic",
                 pattern: Union[str, Pattern] = "unstructured", criterion: str = "magnitude",
                 scope: str = "layer", calib: Optional[Calibration] = None, monotone: bool = True,
                 **prune_kwargs: Any):
        from . import _layer_settings, _validate, linear_layers

        if not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"GradualPruner: expected frequency to be an int >= 1, got {frequency!r}")
        sparsity_schedule(start_step, final_sparsity, start_step, end_step, initial_sparsity, schedule)  # checks
        p = parse_pattern(pattern)
        if p.kind == "nm":
            raise ValueError(f"GradualPruner: pattern '{p.name}' fixes the sparsity at {p.fixed_sparsity:g}; it "
                             f"cannot be raised gradually (use sparsekit.prune once)")
        allowed = {"filter_fn", "min_sparsity", "max_sparsity", "overrides", "pad", "normalize", "seed"}
        bad = set(prune_kwargs) - allowed
        if bad:
            raise TypeError(f"GradualPruner: unexpected keyword argument(s) {sorted(bad)}; expected some of {sorted(allowed)}")
        self.model = model
        self.final_sparsity, self.initial_sparsity = final_sparsity, initial_sparsity
        self.start_step, self.end_step, self.frequency, self.schedule = start_step, end_step, frequency, schedule
        self.scope, self.calib, self.monotone = scope, calib, monotone
        self.normalize = prune_kwargs.get("normalize", "mean")
        self.seed = prune_kwargs.get("seed", 0)
        self.layers = linear_layers(model, prune_kwargs.get("filter_fn"))
        if not self.layers:
            raise ValueError("GradualPruner: the model has no nn.Linear layer that filter_fn accepts")
        for fqn, mod in self.layers.items():
            check_plain_weight(mod, fqn, "GradualPruner")
        overrides = dict(prune_kwargs.get("overrides") or {})
        _validate(final_sparsity, p, criterion, scope, self.normalize, overrides, list(self.layers))
        defaults = dict(sparsity=final_sparsity, pattern=p, criterion=criterion,
                        min_sparsity=prune_kwargs.get("min_sparsity", 0.0),
                        max_sparsity=prune_kwargs.get("max_sparsity", 1.0), pad=prune_kwargs.get("pad", False))
        self.settings = {fqn: _layer_settings(fqn, defaults, overrides) for fqn in self.layers}
        for fqn, s in self.settings.items():
            if s["pattern"].kind == "nm":
                raise ValueError(f"GradualPruner: layer {fqn!r} has N:M pattern '{s['pattern'].name}', "
                                 f"which cannot be raised gradually")
        used = {s["criterion"] for s in self.settings.values()}
        self._ov_sparsity = {fqn: s["sparsity"] for fqn, s in self.settings.items() if s["overridden_sparsity"]}
        self.masks: Dict[str, torch.Tensor] = {
            fqn: torch.ones_like(m.weight, dtype=torch.bool) for fqn, m in self.layers.items()}
        self.step_count = 0
        self.sparsity = 0.0
        # self-gathered statistics when no calib is given
        self._stats: Dict[str, LayerStats] = {fqn: LayerStats(m.in_features) for fqn, m in self.layers.items()}
        want_grad = calib is None and bool(used & {"gradient", "taylor"})
        want_act = calib is None and bool(used & set(ACTIVATION_CRITERIA))
        self._act_hooks = _Hooks(self.layers, self._stats) if want_act else None
        on_grad = (lambda fqn, g: self._stats[fqn].add_grad(g)) if want_grad else None
        self._guard = MaskGuard(self.layers, self.masks, on_grad)

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity at `step`."""
        return sparsity_schedule(step, self.final_sparsity, self.start_step, self.end_step,
                                 self.initial_sparsity, self.schedule)

    def _due(self, t: int) -> bool:
        return self.start_step <= t <= self.end_step and ((t - self.start_step) % self.frequency == 0
                                                          or t == self.end_step)

    @torch.no_grad()
    def recompute(self, sparsity: float) -> Dict[str, torch.Tensor]:
        """Recomputes the masks at `sparsity` now (``step()`` does this on schedule) and applies them."""
        from . import _choose, apply_masks

        calib = self.calib if self.calib is not None else Calibration(self._stats)
        scores = {}
        settings = {}
        for fqn, mod in self.layers.items():
            s = dict(self.settings[fqn])
            sc = criteria.score(s["criterion"], mod, fqn, calib, self.seed)
            if self.monotone:
                sc = sc.masked_fill(~self.masks[fqn], float("-inf"))
            # a layer with its own sparsity follows the same schedule up to that sparsity
            own = self._ov_sparsity.get(fqn)
            s["sparsity"] = sparsity if own is None else sparsity_schedule(
                self.step_count, own, self.start_step, self.end_step, min(self.initial_sparsity, own), self.schedule)
            scores[fqn], settings[fqn] = sc, s
        new = _choose(scores, settings, sparsity, self.scope, self.normalize)
        for fqn, m in new.items():
            self.masks[fqn] = m  # same dict object as the guard's
        for st in self._stats.values():
            st.reset()
        self.sparsity = sparsity
        apply_masks(self.model, self.masks)
        return self.masks

    def step(self) -> float:
        """Advances one training step; recomputes the masks when due; re-applies them. Returns the
        sparsity the masks were last computed for."""
        from . import apply_masks

        self.step_count += 1
        t = self.step_count
        if self._due(t):
            self.recompute(self.sparsity_at(t))
        else:
            apply_masks(self.model, self.masks)
        return self.sparsity

    def remove(self) -> None:
        """Takes the gradient (and activation) hooks off; the masks and the zeroed weights stay."""
        self._guard.remove()
        if self._act_hooks is not None:
            self._act_hooks.remove()

    def __enter__(self) -> "GradualPruner":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
