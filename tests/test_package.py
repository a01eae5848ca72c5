"""The package around the kernels: fallback without the extension, `python -m sparsekit`, the
installed wheel in a fresh virtual environment."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sparsekit

ROOT = Path(__file__).resolve().parents[1]


def _run(code, env=None, cwd="/", timeout=600, python=sys.executable):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout)


def test_import_without_extension_falls_back_to_reference():
    out = _run(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import sparsekit
            import sparsekit.formats
        msgs = [str(w.message) for w in caught if "compiled kernels are not available" in str(w.message)]
        assert len(msgs) == 1, msgs
        assert "SPARSEKIT_DISABLE_EXTENSION" in msgs[0]
        import torch
        assert not sparsekit._ext.available()
        w = torch.randn(8, 16) * (torch.rand(8, 16) > 0.5)
        c = sparsekit.formats.CSRWeight.from_dense(w)
        x = torch.randn(3, 16)
        torch.testing.assert_close(c.matmul(x), x @ w.T)
        print(sparsekit.info()["backends"])
        """,
        env={"SPARSEKIT_DISABLE_EXTENSION": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert "'cpu (compiled C++)': False" in out.stdout


def test_import_and_triton_registration_print_no_warning():
    """Importing sparsekit and registering its Triton kernels over the compiled CUDA ones (on purpose) must
    not print library warnings (torch 2.11 warned "Overriding a previously registered kernel" on import)."""
    code = "import sparsekit, sparsekit.triton as t; t.register()"
    r = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr


def test_cli_info():
    out = subprocess.run([sys.executable, "-m", "sparsekit", "info"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    for key in ("sparsekit:", "torch:", "triton:", "compiled_cuda_archs:", "cusparselt_linked:", "cuda_devices:",
                "backends:"):
        assert key in out.stdout
    if sparsekit._ext.available() and sparsekit._ext.C.with_cuda:
        assert "9.0a" in out.stdout or os.environ.get("SPARSEKIT_CUDA_ARCH_LIST")


def test_cli_bench_layer_writes_records(tmp_path):
    path = tmp_path / "r.jsonl"
    out = subprocess.run(
        [sys.executable, "-m", "sparsekit", "bench", "layer", "--shapes", "48x80", "--m", "1,3", "--sparsity",
         "0.5,0.9", "--quick", "--json", str(path)],
        capture_output=True, text=True, cwd="/", timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "| 48x80 | 3 | 90% | sparsekit-csr |" in out.stdout
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    impls = {r["impl"] for r in recs}
    assert {"dense", "sparsekit-csr", "torch-csr"} <= impls
    assert all("env" in r and r["env"]["torch"] == torch.__version__ for r in recs)
    assert recs[0]["env"]["command"].startswith("python -m sparsekit bench layer --shapes 48x80 --m 1,3")


def test_cli_bench_model_quick_builtin():
    out = subprocess.run(
        [sys.executable, "-m", "sparsekit", "bench", "model", "--arch", "builtin", "--preset", "tiny", "--formats",
         "csr", "--sparsity", "0.9", "--prompt", "8", "--quick"],
        capture_output=True, text=True, cwd="/", timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "built-in decoder (tiny: hidden 128" in out.stdout
    assert "| csr | 90% |" in out.stdout and "| dense | 0% |" in out.stdout

def _requirement_closure(name):
    """The installed distributions `name` needs, itself and numpy (the wheel's other requirement) included."""
    from importlib import metadata
    from packaging.requirements import Requirement

    seen, todo = {}, [(name, ()), ("numpy", ())]
    while todo:
        key, extras = todo.pop()
        key = key.lower().replace("_", "-")
        if (key, extras) in seen:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-excluded requirement
        seen[(key, extras)] = dist
        for req in dist.requires or ():
            r = Requirement(req)
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((r.name, tuple(sorted(r.extras))))
    return list({d.metadata["Name"]: d for d in seen.values()}.values())


def _place_distribution(dist, site):
    """Puts an installed distribution's files (its RECORD) under `site`: hard links, copies across devices."""
    import shutil

    for f in dist.files or ():
        if ".." in f.parts:
            continue  # scripts in bin/: not needed
        src, dst = Path(dist.locate_file(f)), site / f
        if not src.is_file() or dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPARSEKIT_SKIP_WHEEL_TEST") == "1", reason="SPARSEKIT_SKIP_WHEEL_TEST=1")
def test_wheel_installs_and_works_in_a_fresh_venv(tmp_path):
    """pip wheel builds a wheel; a new virtualenv (holding this torch and its dependencies, numpy among
    them) installs it with pip, offline, and runs it from outside the source tree."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = list(wheels.glob("sparsekit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    # torch and what it needs, placed as installed files (hard links where the file system allows): pip's own
    # install of torch copies ~5 GB and takes minutes; what is tested here is the wheel, against that torch
    site = Path(subprocess.check_output([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    for dist in _requirement_closure("torch"):
        _place_distribution(dist, site)
    # the wheel pins the torch it was built against: pip must find it satisfied, and install nothing else
    inst = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", str(wheel),
                           f"torch=={torch.__version__.split('+')[0]}"], capture_output=True, text=True, timeout=1800)
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]
    out = _run(
        """
        import warnings; warnings.simplefilter("error", UserWarning)
        import os, torch, sparsekit
        assert os.path.realpath(sparsekit.__file__).startswith(os.path.realpath(os.environ["VENV"])), sparsekit.__file__
        assert sparsekit._ext.available(), sparsekit._ext.load_error
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        sparsekit.prune(model, sparsity=0.8)
        x = torch.randn(5, 64)
        ref = model(x)
        sparsekit.convert(model)
        torch.testing.assert_close(model(x), ref)
        print("smoke ok", sparsekit.__version__, sparsekit.info()["cpu_isa"])
        """,
        env={"VENV": str(venv), "PYTHONPATH": ""},
        cwd=str(tmp_path),
        python=py,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "smoke ok" in out.stdout
    cli = subprocess.run([str(venv / "bin" / "sparsekit"), "info"], capture_output=True, text=True, cwd=str(tmp_path))
    assert cli.returncode == 0 and "compiled_extension:     True" in cli.stdout, cli.stdout + cli.stderr
