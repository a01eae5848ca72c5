"""Pruning quality on real data: scikit-learn's bundled digits (8x8 images, 10 classes; no download).

Trains a small MLP (64 -> 256 -> 256 -> 10) on the CPU, then for every structure x criterion x
sparsity prunes a copy of it one-shot with ``sparsekit.prune`` (the two hidden layers; the 10-way
head stays dense) and reports test accuracy before and after a short recovery fine-tune
(``sparsekit.prune.finetune``: masks fixed, gradient clipping, KL distillation from the dense
model). Accuracies are means over ``--seeds`` (each seed: its own data split, dense model,
calibration order and random criterion).

Reproduce the committed results (bench/results/prune_digits.{md,json,png}):

    .venv/bin/python bench/prune_digits.py
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit.prune import finetune, sparsity_report

OUT = Path(__file__).resolve().parent / "results"
STRUCTURES = ["unstructured", "row-balanced", "2:4", "1x8", "8x8", "rows", "columns"]
CRITERIA = ["magnitude", "gradient", "taylor", "activation", "random"]
SPARSITIES = [0.5, 0.7, 0.9]
HIDDEN = ("0", "2")  # the pruned layers; "4" (the head) stays dense
TRAIN_EPOCHS, FT_EPOCHS, BATCH = 40, 5, 64


def load_data(seed: int = 0):
    """Digits as float32 in [0, 1]: (x_train, y_train, x_test, y_test), a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, stratify=y, random_state=seed)
    t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return t(xtr, torch.float32), t(ytr, torch.long), t(xte, torch.float32), t(yte, torch.long)


class Batches:
    """Re-iterable shuffled mini-batches (x, y); each pass draws a new order from its own generator."""

    def __init__(self, x, y, batch_size=BATCH, seed=0, shuffle=True):
        self.x, self.y, self.bs, self.shuffle = x, y, batch_size, shuffle
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self):
        n = self.x.shape[0]
        idx = torch.randperm(n, generator=self.g) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.bs):
            j = idx[i: i + self.bs]
            yield self.x[j], self.y[j]

    def __len__(self):
        return -(-self.x.shape[0] // self.bs)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()


def train_dense(data, seed: int = 0, epochs: int = TRAIN_EPOCHS) -> nn.Module:
    """The dense baseline: Adam, lr 1e-3, `epochs` passes."""
    xtr, ytr, _, _ = data
    model = make_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for x, y in _repeat(Batches(xtr, ytr, seed=seed), epochs):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _repeat(batches, epochs):
    for _ in range(epochs):
        yield from batches


def prune_and_recover(dense, data, structure, criterion, sparsity, seed=0, ft_epochs=FT_EPOCHS, calib=None):
    """One cell of the table: (accuracy after pruning, accuracy after recovery, measured sparsity)."""
    xtr, ytr, xte, yte = data
    model = copy.deepcopy(dense)
    if calib is None and criterion in ("gradient", "taylor", "activation"):
        calib = sparsekit.calibrate(model, Batches(xtr, ytr, 128, seed=seed, shuffle=False), F.cross_entropy,
                                    filter_fn=lambda m, fqn: fqn in HIDDEN)
    masks = sparsekit.prune(model, None if ":" in structure else sparsity, pattern=structure, criterion=criterion,
                            filter_fn=lambda m, fqn: fqn in HIDDEN, calib=calib, seed=seed)
    before = accuracy(model, xte, yte)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    finetune(model, masks, Batches(xtr, ytr, seed=seed + 1), opt, F.cross_entropy, epochs=ft_epochs, max_norm=1.0,
             teacher=dense, distill="kl", alpha=0.5, temperature=2.0)
    after = accuracy(model, xte, yte)
    for fqn, m in masks.items():  # the masks held through fine-tuning
        assert torch.all(model.get_submodule(fqn).weight[~m] == 0)
    return before, after, sparsity_report(masks)["total"]


def cells(structures=STRUCTURES, criteria_=CRITERIA, sparsities=SPARSITIES):
    for st in structures:
        for cr in criteria_:
            for sp in ([None] if ":" in st else sparsities):
                yield st, cr, sp


def run(seeds=(0, 1, 2), structures=STRUCTURES, criteria_=CRITERIA, sparsities=SPARSITIES, ft_epochs=FT_EPOCHS,
        log=print):
    """All cells for all seeds. Returns (dense accuracies, records)."""
    dense_acc, recs = [], {}
    for seed in seeds:
        data = load_data(seed)
        t0 = time.perf_counter()
        dense = train_dense(data, seed)
        dense_acc.append(accuracy(dense, data[2], data[3]))
        log(f"seed {seed}: dense accuracy {dense_acc[-1]:.4f} (trained in {time.perf_counter() - t0:.1f} s)")
        calib = sparsekit.calibrate(dense, Batches(data[0], data[1], 128, seed=seed, shuffle=False), F.cross_entropy,
                                    filter_fn=lambda m, fqn: fqn in HIDDEN)
        for st, cr, sp in cells(structures, criteria_, sparsities):
            b, a, real = prune_and_recover(dense, data, st, cr, sp, seed, ft_epochs, calib)
            r = recs.setdefault((st, cr, sp), dict(structure=st, criterion=cr, sparsity=real, before=[], after=[]))
            r["before"].append(b)
            r["after"].append(a)
    for r in recs.values():
        r["before_mean"] = statistics.fmean(r["before"])
        r["after_mean"] = statistics.fmean(r["after"])
    return dense_acc, list(recs.values())


def markdown(dense_acc, recs, seeds, elapsed):
    d = statistics.fmean(dense_acc)
    lines = [
        "# Pruning quality on scikit-learn digits",
        "",
        f"MLP 64-256-256-10 (ReLU), trained {TRAIN_EPOCHS} epochs with Adam on 1347 images; test set 450 images. "
        f"The two hidden layers (81,920 weights) are pruned one-shot, per layer; the head stays dense. "
        f"Recovery: {FT_EPOCHS} epochs of `sparsekit.prune.finetune` (Adam 1e-3, max_norm 1.0, KL distillation "
        f"from the dense model, alpha 0.5, T 2). Calibration (gradient, taylor, activation): the training set, "
        f"cross-entropy. Test accuracy in %, mean over seeds {list(seeds)} (each seed: data split, model, "
        f"fine-tuning order, random criterion).",
        "",
        f"**Dense: {100 * d:.2f}%** (per seed: {', '.join(f'{100 * a:.2f}' for a in dense_acc)}).",
        "",
        "Each cell: before recovery → after recovery.",
        "",
    ]
    for st in dict.fromkeys(r["structure"] for r in recs):
        rows = [r for r in recs if r["structure"] == st]
        sps = list(dict.fromkeys(f"{r['sparsity']:.0%}" for r in rows))
        lines.append(f"### {st}")
        lines.append("")
        lines.append("| criterion | " + " | ".join(sps) + " |")
        lines.append("|---|" + "---:|" * len(sps))
        for cr in dict.fromkeys(r["criterion"] for r in rows):
            cellv = [f"{100 * r['before_mean']:.1f} → **{100 * r['after_mean']:.1f}**" for r in rows
                     if r["criterion"] == cr]
            lines.append(f"| {cr} | " + " | ".join(cellv) + " |")
        lines.append("")
    lines += [
        f"Environment: torch {torch.__version__}, sparsekit {sparsekit.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads; whole run {elapsed:.0f} s.",
        "",
        "Reproduce: `.venv/bin/python bench/prune_digits.py`",
        "",
    ]
    return "\n".join(lines)


def plot(dense_acc, recs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structs = list(dict.fromkeys(r["structure"] for r in recs))
    crits = list(dict.fromkeys(r["criterion"] for r in recs))
    ncol = 3
    nrow = -(-len(structs) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), sharey=True, sharex=True, squeeze=False)
    axes = axes.reshape(-1)
    for ax in axes[len(structs):]:
        ax.set_visible(False)
    d = 100 * statistics.fmean(dense_acc)
    colors = dict(zip(crits, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, st in zip(axes, structs):
        for cr in crits:
            rows = sorted((r for r in recs if r["structure"] == st and r["criterion"] == cr),
                          key=lambda r: r["sparsity"])
            xs = [100 * r["sparsity"] for r in rows]
            ax.plot(xs, [100 * r["before_mean"] for r in rows], "o--", color=colors[cr], alpha=0.5)
            ax.plot(xs, [100 * r["after_mean"] for r in rows], "o-", color=colors[cr], label=cr)
        ax.axhline(d, color="k", lw=0.8, ls=":")
        ax.set_title(st)
        ax.set_ylim(0, 100)
        ax.set_xlim(45, 95)
        ax.set_xticks([50, 70, 90])
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes[: len(structs)]):
        if i % ncol == 0:
            ax.set_ylabel("test accuracy (%)")
        if i >= len(structs) - ncol:
            ax.set_xlabel("sparsity (%)")
    axes[0].legend(fontsize=7, loc="lower left", title="solid: after recovery\ndashed: before", title_fontsize=7)
    fig.suptitle(f"sparsekit pruning on digits (dense {d:.1f}%, dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--name", default="prune_digits")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    dense_acc, recs = run(seeds)
    elapsed = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(dense_acc, recs, seeds, elapsed)
    (out / f"{a.name}.md").write_text(md)
    with open(out / f"{a.name}.json", "w") as f:
        json.dump(dict(dense=dense_acc, seeds=seeds, train_epochs=TRAIN_EPOCHS, finetune_epochs=FT_EPOCHS,
                       torch=torch.__version__, sparsekit=sparsekit.__version__, seconds=round(elapsed, 1),
                       results=recs), f, indent=1)
    plot(dense_acc, recs, out / f"{a.name}.png")
    print(md)
    print(f"wrote {out / a.name}.{{md,json,png}} in {elapsed:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
