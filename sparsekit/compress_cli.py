"""`sparsekit compress MODEL_DIR --recipe R --calib TEXTFILE --out DIR`: a Hugging Face model
directory (local files only) compressed with :func:`sparsekit.compress` on the lines of a text file,
written as a directory that :func:`sparsekit.load_pretrained` opens (with the tokenizer files and
``report.md`` / ``report.json`` beside it)."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time


class CLIError(Exception):
    """A bad argument or input: printed as one line, exit status 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="a Hugging Face model directory (config.json, weights, tokenizer files); read offline")
    p.add_argument("--recipe", required=True,
                   help="50%%, 2:4, 2:4+int8, int8, or P%% (unstructured at P percent)")
    p.add_argument("--calib", required=True, metavar="TEXTFILE", help="calibration text, one sample per line")
    p.add_argument("--out", required=True, metavar="DIR", help="the output directory (created)")
    p.add_argument("--eval", default=None, metavar="TEXTFILE",
                   help="held-out text for the report (default: the report is computed on the calibration text)")
    p.add_argument("--method", default=None, choices=["second-order", "activation", "magnitude"],
                   help="default second-order (reconstruction); activation (Wanda) is cheaper")
    p.add_argument("--recover-steps", type=int, default=0,
                   help="distillation steps from the dense model after pruning (default 0: none)")
    p.add_argument("--lr", type=float, default=None, help="recovery learning rate (default 5e-5)")
    p.add_argument("--format", default="auto", help="auto (default), dense, or a sparsekit format name")
    p.add_argument("--auto-rows", type=int, default=None,
                   help="format auto: the rows each layer is timed at (default: the rows of the first evaluation "
                        "batch, batch x sequence length; 1 to 64 for one-sample serving)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sample, longer ones truncated (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per batch (default 16)")
    p.add_argument("--max-samples", type=int, default=None, help="use the first N lines of each text file")
    p.add_argument("--layers", default=None, metavar="REGEX",
                   help="compress only the nn.Linear layers whose name matches (re.search); default: all but the "
                        "output embeddings")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--no-latency", action="store_true", help="do not time the dense and compressed models")
    p.add_argument("--latency-reps", type=int, default=5,
                   help="timed calls per model on the first evaluation batch (default 5; CPU: alternated, medians)")
    p.add_argument("--quiet", action="store_true", help="do not print the report")


def _load(model_dir: str):
    if not os.path.isdir(model_dir):
        raise CLIError(f"MODEL_DIR {model_dir!r} is not a directory")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise CLIError(f"MODEL_DIR {model_dir!r} has no config.json: not a Hugging Face model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as e:
        raise CLIError("sparsekit compress needs transformers (pip install transformers)") from e
    transformers.logging.set_verbosity_error()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- transformers raises many kinds
        raise CLIError(f"could not load the model or tokenizer from {model_dir!r}: {type(e).__name__}: {e}") from e
    return model.eval(), tok


def run(args) -> int:
    """The command: :func:`compress_directory`; a bad argument or input prints one line, exit status 2."""
    try:
        compress_directory(args)
    except CLIError as e:
        print(f"sparsekit compress: error: {e}", file=sys.stderr)
        return 2
    return 0


def compress_directory(args):
    """What the command does, for the parsed `args` (see :func:`add_arguments`): loads the model and
    tokenizer, tokenizes the text files, compresses, writes ``--out``; returns the
    :class:`sparsekit.compress.CompressResult` (its model is the one written). Raises CLIError."""
    import torch

    import sparsekit
    from .compress import compress, get_recipe, read_lines, text_batches

    t0 = time.perf_counter()
    try:
        recipe = get_recipe(args.recipe, recover_steps=args.recover_steps, method=args.method, lr=args.lr)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    if args.auto_rows is not None and args.auto_rows < 1:
        raise CLIError(f"expected --auto-rows >= 1, got {args.auto_rows}")
    if args.seq_len < 2 or args.batch_size < 1:
        raise CLIError(f"expected --seq-len >= 2 and --batch-size >= 1, got {args.seq_len}, {args.batch_size}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} exists and is not a directory")
    flt = None
    if args.layers:
        try:
            rx = re.compile(args.layers)
        except re.error as e:
            raise CLIError(f"--layers: bad regular expression {args.layers!r}: {e}") from None
        flt = lambda m, fqn: rx.search(fqn) is not None  # noqa: E731
    try:
        cal_texts = read_lines(args.calib, args.max_samples, "--calib")
        ev_texts = read_lines(args.eval, args.max_samples, "--eval") if args.eval else None
    except (OSError, ValueError) as e:
        raise CLIError(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = _load(args.model_dir)
    calib = text_batches(tok, cal_texts, args.batch_size, args.seq_len)
    evalb = text_batches(tok, ev_texts, args.batch_size, args.seq_len) if ev_texts else None
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    log(f"sparsekit compress: {type(model).__name__} from {args.model_dir}, recipe {recipe.name}, "
        f"{len(cal_texts)} calibration lines" + (f", {len(ev_texts)} evaluation lines" if ev_texts else ""))
    try:
        res = compress(model, recipe, calib, evalb, format=args.format, filter_fn=flt, device=args.device,
                       inplace=False, latency=not args.no_latency, latency_reps=args.latency_reps,
                       auto_rows=args.auto_rows, log=log)
    except ValueError as e:
        raise CLIError(str(e)) from None
    rep = res.report
    rep["cli"] = dict(command="sparsekit " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])),
                      model_dir=os.path.abspath(args.model_dir), calib=args.calib, n_calib=len(cal_texts),
                      eval=args.eval, n_eval=len(ev_texts) if ev_texts else 0, seq_len=args.seq_len,
                      batch_size=args.batch_size, calib_tokens=sum(int(b["attention_mask"].sum()) for b in calib)
                      if all("attention_mask" in b for b in calib) else None)
    os.makedirs(args.out, exist_ok=True)
    tok.save_pretrained(args.out)
    sparsekit.save_pretrained(res.model, args.out)  # sparsekit.json last: the checkpoint is complete
    rep.to_json(os.path.join(args.out, "report.json"))
    md = rep.markdown() + (f"\n```\n{rep['cli']['command']}\n```\n\nLoad: `sparsekit.load_pretrained({args.out!r})`, "
                           f"tokenizer: `transformers.AutoTokenizer.from_pretrained({args.out!r})`.\n")
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(md)
    if not args.quiet:
        print(md)
    log(f"sparsekit compress: wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return res
