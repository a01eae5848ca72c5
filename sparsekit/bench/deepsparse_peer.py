"""DeepSparse 1.8.0 as a peer of sparsekit's unstructured formats on the CPU (BENCHMARKING.md rule 3).

DeepSparse (Neural Magic's sparse CPU engine, deprecated after 1.8.0) runs fp32 ONNX graphs and
finds the zeros in their weights itself. It does not live in sparsekit's environment: `make peers`
creates a side virtualenv (.venv-peers) with deepsparse==1.8.0, and this module runs
``_deepsparse_worker.py`` with that virtualenv's python in a subprocess, handing it the masked
weights and the activations as .npy files in a temporary folder. The worker builds the ONNX graph
(per layer a MatMul with the transposed weight, chained as the bench chains its layers), compiles
an Engine per batch size with the thread count of this process, times it as timing.py does and
writes the outputs back, which are checked here against the reference before a time is reported.

The side python: $SPARSEKIT_PEERS_PYTHON, else .venv-peers/bin/python in the current folder or in
the source checkout sparsekit runs from. When none is found, or the worker fails, the peer is
:class:`Unavailable` with the reason (the table prints "n/a (reason)").
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .peers import Unavailable

WORKER = Path(__file__).with_name("_deepsparse_worker.py")
ENV_VAR = "SPARSEKIT_PEERS_PYTHON"


def peers_python() -> str:
    """The side virtualenv's python; raises Unavailable with the reason when there is none."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise Unavailable(f"{ENV_VAR}={explicit} is not an executable python")
        return explicit
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        py = root / ".venv-peers" / "bin" / "python"
        if py.is_file() and os.access(py, os.X_OK):
            return str(py)
    raise Unavailable(f"no side virtualenv: run `make peers` (deepsparse==1.8.0 in .venv-peers) or set {ENV_VAR}")


def run_deepsparse(variants: Dict[str, Sequence[torch.Tensor]], xs: Dict[int, torch.Tensor], sequence: bool,
                   threads: Optional[int] = None, min_run_time: float = 0.3, timeout: float = 3600.0,
                   python: Optional[str] = None) -> Dict:
    """Times DeepSparse on each variant (a list of L weights, N x K) at every M of `xs`.

    Returns {"version": str, "engine": str, "results": {name: {M: {"ms": float, "out": tensor, "compile_s":
    float}}}} with "out" the last layer's output (sequence) or all layers' outputs side by side; raises
    Unavailable with the reason when the side python is missing or the worker fails."""
    import numpy as np

    python = python or peers_python()
    threads = threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="sparsekit-deepsparse-") as d:
        spec = {"variants": {}, "sequence": bool(sequence), "inputs": {}, "threads": int(threads),
                "min_run_time": float(min_run_time), "dir": d,
                "flush_bytes": int(os.environ.get("SPARSEKIT_FLUSH_BYTES", 256 * 2**20))}
        for name, ws in variants.items():
            files: List[str] = []
            for i, w in enumerate(ws):
                files.append(os.path.join(d, f"{name}_w{i}.npy"))
                np.save(files[-1], w.detach().float().cpu().contiguous().numpy())
            spec["variants"][name] = files
        for M, x in xs.items():
            spec["inputs"][str(M)] = os.path.join(d, f"x_{M}.npy")
            np.save(spec["inputs"][str(M)], x.detach().float().cpu().contiguous().numpy())
        with open(os.path.join(d, "spec.json"), "w") as f:
            json.dump(spec, f)
        try:
            proc = subprocess.run([python, str(WORKER), os.path.join(d, "spec.json")], capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"deepsparse worker ran past {timeout:.0f} s") from None
        except OSError as e:
            raise Unavailable(f"cannot run {python}: {e}") from None
        out = _last_json(proc.stdout)
        if out is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            raise Unavailable(f"deepsparse worker exited {proc.returncode}: {tail}")
        if not out.get("ok"):
            raise Unavailable(f"deepsparse: {out.get('error', 'failed')}")
        results = {name: {int(M): dict(r, out=torch.from_numpy(np.load(r["out"]))) for M, r in per_m.items()}
                   for name, per_m in out["results"].items()}
    return {"version": out.get("deepsparse"), "engine": out.get("engine"), "results": results}


def _last_json(stdout: str) -> Optional[dict]:
    """The worker's answer: the last line of stdout that parses as a JSON object (DeepSparse prints a banner)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None
