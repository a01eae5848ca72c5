"""Which cuSPARSELt matmuls break the CUDA context, one case at a time (run on a GPU).

The one H200 run (cuSPARSELt 0.8.0) hit an illegal instruction in float16 `cslt_mm` calls only; bfloat16
ran. This probe tells whether the algorithm search (SPARSEKIT_CSLT_SEARCH=1), the default algorithm
(=0), a fused bias, or a shape is what breaks: every (dtype, search) pair runs in its own process with
CUDA_LAUNCH_BLOCKING=1, case after case, each checked against a float64 reference; when a case breaks
the context its process dies with it, the case is recorded, and a fresh process goes on with the next.

    python bench/cslt_probe.py --out bench/results/gpu      # about a minute on an H200

Writes cslt_probe.jsonl (one record per case: dtype, search, N, K, M, bias, status, error) and prints a
table. Exit status 0 when every case ran correctly.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SHAPES = [(32, 64), (128, 256), (256, 1024), (4096, 4096), (11008, 4096)]
MS = [1, 7, 16, 64, 333]


def cases():
    for dtype in ("float16", "bfloat16"):
        for search in (0, 1):
            for n, k in SHAPES:
                for m in MS:
                    for bias in (False, True):
                        yield dict(dtype=dtype, search=search, n=n, k=k, m=m, bias=bias)


def child(todo):
    """Runs the cases of one (dtype, search) pair; prints a JSON record per case as it finishes."""
    import torch

    from sparsekit import ops
    from sparsekit.prune.masks import n_m

    for c in todo:
        print(json.dumps({**c, "status": "started"}), flush=True)
        dt = getattr(torch, c["dtype"])
        torch.manual_seed(0)
        w = torch.randn(c["n"], c["k"], device="cuda")
        w = (w * n_m(w.abs(), 2, 4)).to(dt)
        x = torch.randn(c["m"], c["k"], device="cuda").to(dt)
        b = torch.randn(c["n"], device="cuda").to(dt) if c["bias"] else None
        try:
            y = ops.cslt_mm(x, ops.cslt_compress(w), c["n"], b)
            torch.cuda.synchronize()
            ref = x.double() @ w.double().T + (b.double() if b is not None else 0)
            err = ((y.double() - ref).norm() / ref.norm()).item()
            status = "ok" if err < 1e-2 else f"wrong (relative error {err:.3g})"
        except Exception as e:  # noqa: BLE001 - the record says what happened
            print(json.dumps({**c, "status": "error", "error": f"{type(e).__name__}: {e}"[:300]}), flush=True)
            if "illegal" in str(e) or "CUDA error" in str(e):
                sys.exit(3)  # the context is gone: a fresh process goes on
            continue
        print(json.dumps({**c, "status": status}), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/gpu")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(json.loads(a.child))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = list(cases())
    done = {}
    while todo:
        env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "SPARSEKIT_CSLT_SEARCH": str(todo[0]["search"])}
        batch = [c for c in todo if (c["dtype"], c["search"]) == (todo[0]["dtype"], todo[0]["search"])]
        r = subprocess.run([sys.executable, __file__, "--child", json.dumps(batch)], env=env, capture_output=True,
                           text=True, timeout=600)
        last = None
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                key = tuple(rec[k] for k in ("dtype", "search", "n", "k", "m", "bias"))
                done[key] = rec
                last = key
        if last is not None and done[last]["status"] == "started":  # died inside this case
            done[last] = {**done[last], "status": "process died", "error": (r.stderr or "")[-300:],
                          "returncode": r.returncode}
        finished = set(done)
        rest = [c for c in todo if tuple(c.values()) not in finished]
        if len(rest) == len(todo):  # no progress: the child could not start
            for c in rest:
                done[tuple(c.values())] = {**c, "status": "not run", "error": (r.stderr or "")[-300:]}
            rest = []
        todo = rest
    recs = [done[k] for k in sorted(done, key=str)]
    with open(out / "cslt_probe.jsonl", "w") as f:
        for rec in recs:
            f.write(json.dumps(rec) + "\n")
    bad = [r for r in recs if r["status"] != "ok"]
    print(f"{'dtype':9} {'search':6} {'N x K':12} {'M':>4} {'bias':5} status")
    for r in recs:
        if r["status"] != "ok":
            print(f"{r['dtype']:9} {r['search']:<6} {r['n']}x{r['k']:<7} {r['m']:>4} {str(r['bias']):5} "
                  f"{r['status']} {r.get('error', '')[:120]}")
    print(f"cslt_probe: {len(recs) - len(bad)} of {len(recs)} cases ok, {len(bad)} not")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
