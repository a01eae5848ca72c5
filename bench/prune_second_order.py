"""One-shot pruning quality: second-order (SparseGPT: OBS with weight reconstruction) against
activation-aware (Wanda) and magnitude, before any fine-tuning, on two CPU-trained models:

* **digits** -- the MLP of bench/prune_digits.py (64 -> 256 -> 256 -> 10, scikit-learn's bundled
  8x8 digits, its training helpers imported from that script);
* **synthetic** -- an MLP of the same shape (64 -> 256 -> 256 -> 8) on scikit-learn's
  ``make_classification``: 8 classes, 64 features of which 24 informative, 32 linear combinations of
  them and 8 noise (so the first layer's input Gram matrix has rank 32 of 64: collinear inputs,
  the case where compensating with the kept weights matters most), standardized; 4,500 train /
  1,500 test.

For each model and seed: the two hidden layers are pruned (the head stays dense) at 2:4, 50% and
70% unstructured (per layer); calibration is the training set (batches of 128). Reported: test
accuracy (mean over seeds), per-layer relative output error ``||Y - Ŷ|| / ||Y||`` on the test
set -- *isolated* (the layer alone, fed the dense model's inputs) and *in-model* (the pruned model's
own inputs, against the dense output) -- and 2:4+int8 (second-order jointly quantizing, the others
rounding to nearest after pruning). Two more rows: the activation-aware mask with the second-order
reconstruction around it, and second-order with SparseGPT's own mask rule (the same fraction in
every window of 128 columns) instead of sparsekit's adaptive one. The hybrid recipe (neurons -> 2:4 or 16x16 blocks -> int8) is
reported per step on digits.

Reproduce the committed results (bench/results/prune_second_order.{md,json,png}):

    .venv/bin/python bench/prune_second_order.py
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
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
from sparsekit.formats import quantize_rows
from sparsekit.prune import sparsity_report
from sparsekit.prune.hybrid import hybrid
from sparsekit.prune.second_order import sparsegpt

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
HIDDEN = ("0", "2")
CELLS = [("2:4", None), ("unstructured", 0.5), ("unstructured", 0.7)]
METHODS = ["magnitude", "activation", "second-order"]
EXTRA = "activation mask + OBS update"  # Wanda's mask, then second-order reconstruction with it held
UNIFORM = "second-order, uniform windows"  # SparseGPT's own mask rule: the same fraction per 128 columns


def _digits_module():
    spec = importlib.util.spec_from_file_location("prune_digits", HERE / "prune_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


P = _digits_module()


# ----------------------------------------------------------------------------- the second model


def load_synthetic(seed: int = 0):
    """(x_train, y_train, x_test, y_test): make_classification, standardized on the training split."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    X, y = make_classification(n_samples=6000, n_features=64, n_informative=24, n_redundant=32, n_classes=8,
                               n_clusters_per_class=2, class_sep=1.5, flip_y=0.01, random_state=seed)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
    mu, sd = xtr.mean(0), xtr.std(0)
    t = lambda a: torch.tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
    return t(xtr), torch.tensor(ytr), t(xte), torch.tensor(yte)


def train_synthetic(data, seed: int = 0, epochs: int = 30) -> nn.Module:
    xtr, ytr, _, _ = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for x, y in P.Batches(xtr, ytr, 64, seed=seed):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model


MODELS = {
    "digits": dict(load=P.load_data, train=P.train_dense,
                   desc="MLP 64-256-256-10 on scikit-learn digits (1,347 train / 450 test images), "
                        "the model of bench/prune_digits.py"),
    "synthetic": dict(load=load_synthetic, train=train_synthetic,
                      desc="MLP 64-256-256-8 on make_classification (8 classes; 24 informative, 32 redundant = "
                           "linear combinations, 8 noise features; 4,500 train / 1,500 test)"),
}


# ----------------------------------------------------------------------------- pruning


def prune_copy(dense, method, pattern, sparsity, calib, int8=False):
    """A pruned copy of `dense` (hidden layers) and its masks."""
    model = copy.deepcopy(dense)
    flt = lambda m, fqn: fqn in HIDDEN  # noqa: E731
    sp = None if ":" in pattern else sparsity
    if method in ("second-order", UNIFORM):
        masks = sparsegpt(model, calib, sp, pattern, flt, sequential=True, quantize_int8=int8,
                          selection="uniform" if method == UNIFORM else None)
        return model, masks
    crit = "activation" if method in ("activation", EXTRA) else "magnitude"
    masks = sparsekit.prune(model, sp, pattern=pattern, criterion=crit, filter_fn=flt, apply=method != EXTRA,
                            calib=calib if crit == "activation" else None)
    if method == EXTRA:  # the weights are still dense: reconstruct them around the activation-aware mask
        sparsegpt(model, calib, masks=masks, filter_fn=flt, quantize_int8=int8)
    elif int8:
        with torch.no_grad():
            for fqn, m in masks.items():
                w = model.get_submodule(fqn).weight
                q, s = quantize_rows(w * m)
                w.copy_(q.float() * s[:, None])
    return model, masks


@torch.no_grad()
def layer_io(model, x):
    """{fqn: (input, output)} of the hidden layers on x."""
    io, hs = {}, []
    for fqn in HIDDEN:
        hs.append(model.get_submodule(fqn).register_forward_hook(
            lambda m, a, o, fqn=fqn: io.__setitem__(fqn, (a[0].detach(), o.detach()))))
    try:
        model.eval()
        model(x)
    finally:
        for h in hs:
            h.remove()
    return io


def rel(a, b):
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def layer_errors(dense_io, model, x):
    """Per hidden layer: isolated (dense inputs) and in-model (own inputs) relative output errors."""
    own = layer_io(model, x)
    out = {}
    for fqn in HIDDEN:
        xin, y = dense_io[fqn]
        lin = model.get_submodule(fqn)
        out[fqn] = dict(isolated=rel(lin(xin), y), in_model=rel(own[fqn][1], y))
    return out


def run(seeds=(0, 1, 2), models=tuple(MODELS), log=print):
    recs, dense_acc, hyb = {}, {}, {}
    for name in models:
        spec = MODELS[name]
        dense_acc[name] = []
        for seed in seeds:
            data = spec["load"](seed)
            t0 = time.perf_counter()
            dense = spec["train"](data, seed)
            xtr, ytr, xte, yte = data
            acc = P.accuracy(dense, xte, yte)
            dense_acc[name].append(acc)
            log(f"{name} seed {seed}: dense {acc:.4f} (trained in {time.perf_counter() - t0:.1f} s)")
            calib = list(P.Batches(xtr, ytr, 128, seed=seed, shuffle=False))
            dio = layer_io(dense, xte)
            cells = [(pat, sp, m, False) for pat, sp in CELLS for m in METHODS + [EXTRA]]
            cells += [(pat, sp, UNIFORM, False) for pat, sp in CELLS if pat == "unstructured"]
            cells += [("2:4", None, m, True) for m in METHODS]
            for pat, sp, meth, q in cells:
                t1 = time.perf_counter()
                model, masks = prune_copy(dense, meth, pat, sp, calib, int8=q)
                dt = time.perf_counter() - t1
                key = (name, pat + ("+int8" if q else ""), sp, meth)
                r = recs.setdefault(key, dict(model=name, pattern=key[1], sparsity=sp if sp is not None else 0.5,
                                              method=meth, acc=[], layers={f: dict(isolated=[], in_model=[])
                                                                           for f in HIDDEN}, seconds=[]))
                r["acc"].append(P.accuracy(model, xte, yte))
                r["seconds"].append(dt)
                for fqn, e in layer_errors(dio, model, xte).items():
                    for k, v in e.items():
                        r["layers"][fqn][k].append(v)
                real = sparsity_report(masks)["total"]
                assert abs(real - r["sparsity"]) < 1e-3, (key, real)
            if name == "digits":
                for meth in ("second_order", "activation", "magnitude"):
                    for pat, sp in (("2:4", None), ("block", 0.5)):
                        m = copy.deepcopy(dense)
                        res = hybrid(m, calib, [xte], neurons=0.75, pattern=pat, sparsity=sp, tile=(16, 16),
                                     method=meth, filter_fn=lambda mod, f: f in HIDDEN,
                                     metric_fn=lambda mm: P.accuracy(mm, xte, yte))
                        h = hyb.setdefault((meth, pat), [])
                        h.append([dict(step=s["step"], formats=sorted(set(s["formats"].values())),
                                       weight_bytes=s["weight_bytes"], rel_error=s["rel_error"], acc=s["metric"],
                                       shapes=s["shapes"]) for s in res.steps])
    out = []
    for r in recs.values():
        r["acc_mean"] = statistics.fmean(r["acc"])
        for f in HIDDEN:
            for k in ("isolated", "in_model"):
                r["layers"][f][k + "_mean"] = statistics.fmean(r["layers"][f][k])
        out.append(r)
    hyb_out = []
    for (meth, pat), runs in hyb.items():
        steps = []
        for i, s in enumerate(runs[0]):
            steps.append(dict(step=s["step"], formats=s["formats"], weight_bytes=s["weight_bytes"], shapes=s["shapes"],
                              rel_error=statistics.fmean(rr[i]["rel_error"] for rr in runs),
                              acc=statistics.fmean(rr[i]["acc"] for rr in runs)))
        hyb_out.append(dict(method=meth, pattern=pat, steps=steps))
    return dense_acc, out, hyb_out


# ----------------------------------------------------------------------------- report


def _label(pat, sp):
    return pat if ":" in pat else f"{sp:.0%}"


def markdown(dense_acc, recs, hyb, seeds, elapsed):
    L = ["# One-shot second-order pruning (SparseGPT) vs activation-aware and magnitude", "",
         "No fine-tuning anywhere: every number is the pruned model as it comes out of one call. The two hidden "
         "layers of each MLP are pruned per layer (the head stays dense); calibration: the training set, batches "
         "of 128. Second-order = `sparsekit.prune.second_order.sparsegpt` (sequential, blocksize 128, damping 1% "
         "of the mean Gram diagonal, adaptive masks in windows of 8 columns; *uniform windows*: SparseGPT's own "
         "rule, the same fraction in every 128 columns); activation = Wanda "
         "(`criterion=\"activation\"`); magnitude = |w|. "
         f"Means over seeds {list(seeds)} (each seed: its own data split and trained model).", ""]
    for name in dense_acc:
        rows = [r for r in recs if r["model"] == name]
        d = statistics.fmean(dense_acc[name])
        L += [f"## {name}: {MODELS[name]['desc']}", "",
              f"**Dense: {100 * d:.2f}%** (per seed: {', '.join(f'{100 * a:.2f}' for a in dense_acc[name])}).", "",
              "### Test accuracy (%), one-shot", "",
              "| method | " + " | ".join(_label(p, s) for p, s in CELLS) + " | 2:4 + int8 |",
              "|---|" + "---:|" * (len(CELLS) + 1)]
        for meth in METHODS + [EXTRA, UNIFORM]:
            cells = []
            for pat, sp in CELLS + [("2:4+int8", None)]:
                r = next((r for r in rows if r["method"] == meth and r["pattern"] == pat
                          and (sp is None or abs(r["sparsity"] - sp) < 1e-9)), None)
                cells.append("-" if r is None else f"{100 * r['acc_mean']:.2f}")
            L.append(f"| {meth} | " + " | ".join(cells) + " |")
        L += ["", "### Per-layer relative output error ‖Y − Ŷ‖/‖Y‖ on the test set", "",
              "isolated: the layer alone on the dense model's inputs (the same inputs for every method); "
              "in-model: the layer's output inside the pruned model against the dense model's.", "",
              "| pattern | layer | " + " | ".join(f"{m} (isolated / in-model)" for m in METHODS + [UNIFORM]) + " |",
              "|---|---|" + "---:|" * (len(METHODS) + 1)]
        for pat, sp in CELLS + [("2:4+int8", None)]:
            for f in HIDDEN:
                cells = []
                for meth in METHODS + [UNIFORM]:
                    r = next((r for r in rows if r["method"] == meth and r["pattern"] == pat
                              and (sp is None or abs(r["sparsity"] - sp) < 1e-9)), None)
                    if r is None:
                        cells.append("-")
                        continue
                    e = r["layers"][f]
                    cells.append(f"{e['isolated_mean']:.4f} / {e['in_model_mean']:.4f}")
                L.append(f"| {_label(pat, sp)} | {f} | " + " | ".join(cells) + " |")
        L.append("")
    if hyb:
        L += ["## Hybrid recipe on digits: neurons → 2:4 or 16×16 blocks → int8", "",
              "`sparsekit.prune.hybrid.hybrid(model, calib, [x_test], neurons=0.75, pattern=…, method=…)`: the "
              "hidden layers keep 192 of 256 neurons (a multiple of 16), then 2:4 (along the reduction dimension) or "
              "50% in 16×16 blocks (the BSR kernels' tile), then int8. Bytes: `nbytes` of the packed formats of all "
              "three layers (the head stays dense float32); error: ‖f(x) − f_dense(x)‖/‖f_dense(x)‖ of the logits "
              "on the test set, with the packed layers computed by their format (`format.matmul`, W8A8 for int8); "
              "accuracy in %. Second-order also refits the layer after each cut by least squares; block + int8 "
              "packs as dense `int8` (sparsekit has no BSR+int8 format).", ""]
        for pat in ("2:4", "block"):
            L += [f"### {'2:4' if pat == '2:4' else '16x16 blocks, 50%'}", "",
                  "| step | weight bytes | " + " | ".join(f"{m} err / acc" for m in ("second_order", "activation",
                                                                                      "magnitude")) + " |",
                  "|---|---:|---:|---:|---:|"]
            runs = {h["method"]: h for h in hyb if h["pattern"] == pat}
            for i, s in enumerate(runs["second_order"]["steps"]):
                cells = [f"{runs[m]['steps'][i]['rel_error']:.3f} / {100 * runs[m]['steps'][i]['acc']:.2f}"
                         for m in ("second_order", "activation", "magnitude")]
                L.append(f"| {s['step']} ({', '.join(s['formats'])}) | {s['weight_bytes']:,} | "
                         + " | ".join(cells) + " |")
            L.append("")
    L += [f"Environment: torch {torch.__version__}, sparsekit {sparsekit.__version__}, Python "
          f"{platform.python_version()}, {platform.machine()} CPU, {torch.get_num_threads()} threads; whole run "
          f"{elapsed:.0f} s.", "", "Reproduce: `.venv/bin/python bench/prune_second_order.py`", ""]
    return "\n".join(L)


def plot(dense_acc, recs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dense_acc)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), sharey=True)
    axes = [axes] if len(names) == 1 else axes
    cols = CELLS + [("2:4+int8", None)]
    meths = METHODS + [EXTRA]  # (uniform windows: in the tables only)
    width = 0.8 / len(meths)
    lo = min(100 * r["acc_mean"] for r in recs)
    for ax, name in zip(axes, names):
        for k, meth in enumerate(meths):
            ys = []
            for pat, sp in cols:
                r = next((r for r in recs if r["model"] == name and r["method"] == meth and r["pattern"] == pat
                          and (sp is None or abs(r["sparsity"] - sp) < 1e-9)), None)
                ys.append(100 * r["acc_mean"] if r else 0)
            ax.bar([i + (k - (len(meths) - 1) / 2) * width for i in range(len(cols))], ys, width, label=meth)
        ax.axhline(100 * statistics.fmean(dense_acc[name]), color="k", lw=0.8, ls=":")
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([_label(p, s) for p, s in cols])
        ax.set_title(f"{name} (dense dotted)")
        ax.set_ylim(5 * int(lo // 5) - 5, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%), one-shot")
    axes[-1].legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--name", default="prune_second_order")
    p.add_argument("--replot", action="store_true", help="redraw the .png from the .json of a previous run")
    a = p.parse_args(argv)
    if a.replot:
        d = json.loads((Path(a.out) / f"{a.name}.json").read_text())
        plot(d["dense"], d["results"], Path(a.out) / f"{a.name}.png")
        return
    seeds = [int(s) for s in a.seeds.split(",")]
    t0 = time.perf_counter()
    dense_acc, recs, hyb = run(seeds, a.models.split(","))
    elapsed = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(dense_acc, recs, hyb, seeds, elapsed)
    (out / f"{a.name}.md").write_text(md)
    with open(out / f"{a.name}.json", "w") as f:
        json.dump(dict(dense=dense_acc, seeds=seeds, torch=torch.__version__, sparsekit=sparsekit.__version__,
                       seconds=round(elapsed, 1), results=recs, hybrid=hyb), f, indent=1)
    plot(dense_acc, recs, out / f"{a.name}.png")
    print(md)
    print(f"wrote {out / a.name}.{{md,json,png}} in {elapsed:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
