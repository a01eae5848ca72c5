"""Python side of the CUDA emulator: writes cases for the driver (tests/cuda_emu/driver.cpp), runs it
and reads the outputs back."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def to_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def from_bytes(data: bytes, dtype: torch.dtype, shape) -> torch.Tensor:
    if len(data) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()


@dataclass
class Case:
    """One launcher call: `op`, scalar arguments, input buffers (tensor, byte offset from a 16-byte
    boundary) and what the test needs to check the outputs (free-form)."""
    op: str
    scalars: Dict[str, object]
    bufs: Dict[str, Tuple[torch.Tensor, int]]
    check: Dict[str, object] = field(default_factory=dict)
    name: str = ""
    dir: Optional[Path] = None
    status: Optional[str] = None
    outputs: Dict[str, bytes] = field(default_factory=dict)

    def write(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        lines = [f"op {self.op}"] + [f"{k} {v}" for k, v in self.scalars.items()]
        for name, (t, off) in self.bufs.items():
            (d / f"{name}.bin").write_bytes(to_bytes(t))
            lines.append(f"buf {name} {off}")
        (d / "spec.txt").write_text("\n".join(lines) + "\n")
        for f in d.glob("*.out"):
            f.unlink()
        self.dir = d

    def read(self) -> None:
        st = self.dir / "status.txt"
        self.status = st.read_text().strip() if st.exists() else None
        self.outputs = {f.stem: f.read_bytes() for f in self.dir.glob("*.out")}

    def out(self, name: str, dtype: torch.dtype, shape) -> torch.Tensor:
        return from_bytes(self.outputs[name], dtype, shape)

    def __repr__(self) -> str:
        return self.name or f"{self.op} {self.scalars}"


@dataclass
class RunResult:
    returncode: int
    stderr: str


def run_cases(exe: Path, cases: Sequence[Case], workdir: Path, knobs: Optional[Dict[str, int]] = None,
              timeout: float = 240.0) -> RunResult:
    """Runs the cases in one driver process (the knobs are per process: the launch code caches the
    device properties). Each case's outputs are read back into it."""
    dirs = []
    for i, c in enumerate(cases):
        c.write(workdir / f"case{i:04d}")
        dirs.append(str(c.dir))
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:exitcode=23:allocator_may_return_null=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=24"
    for k, v in (knobs or {}).items():
        env[k] = str(v)
    try:
        r = subprocess.run([str(exe), *dirs], capture_output=True, text=True, timeout=timeout, env=env)
        rc, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = -999, f"timed out after {timeout} s (an endless loop or a livelock?)\n" + (
            e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or ""))
    for c in cases:
        c.read()
    return RunResult(rc, err)


def last_case(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("CASE ")]
    return lines[-1][5:] if lines else "?"


# ------------------------------------------------------------------------------------------ checks
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def check_matmul(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[str]:
    """got (M, N) in x's dtype against x @ w.T + bias in float64: |got - ref| <= u·|ref| + 1e-5·(|x|·|w|ᵀ + |bias|)
    (+ the smallest subnormal), u the output dtype's unit roundoff. Returns a message or None."""
    x64, w64 = x.double(), w.double()
    ref = x64 @ w64.T
    mag = x64.abs() @ w64.abs().T
    if bias is not None:
        ref = ref + bias.double()
        mag = mag + bias.double().abs()
    u = UNIT_ROUNDOFF[got.dtype]
    tol = u * ref.abs() + 1e-5 * mag + 2.0 ** -24
    err = (got.double() - ref).abs()
    bad = ~(err <= tol)
    if bool(bad.any()):
        idx = bad.nonzero()[0].tolist()
        return (f"{int(bad.sum())} of {got.numel()} outputs wrong, e.g. y{idx} = {got[tuple(idx)].item()!r}, "
                f"expected {ref[tuple(idx)].item()!r} (tolerance {tol[tuple(idx)].item():.3g})")
    return None
