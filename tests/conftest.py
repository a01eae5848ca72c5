import os

import pytest
import torch

import sparsekit
from _cuda_health import pytest_runtest_logfinish, pytest_runtest_makereport  # noqa: F401 (hooks)

HAS_CUDA = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
requires_ext = pytest.mark.skipif(not sparsekit._ext.available(), reason="needs the compiled extension")


def cpu_isas():
    """The CPU instruction sets to test: every one this CPU runs."""
    if not sparsekit._ext.available():
        return ["reference"]
    C = sparsekit._ext.C
    out = []
    for isa in ("generic", "avx2", "avx512"):
        C.set_cpu_isa(isa)
        if C.cpu_isa() == isa:
            out.append(isa)
    C.set_cpu_isa("auto")
    return out


@pytest.fixture(params=cpu_isas())
def cpu_isa(request):
    if request.param != "reference":
        sparsekit._ext.C.set_cpu_isa(request.param)
    yield request.param
    if request.param != "reference":
        sparsekit._ext.C.set_cpu_isa("auto")


def devices():
    return ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(int.from_bytes(os.urandom(4), "little") if os.environ.get("SPARSEKIT_RANDOM_SEED") else 0)


def pytest_sessionstart(session):
    """`make test` sets SPARSEKIT_REQUIRE_EXTENSION=1: a compiled library that fails to load (an
    undefined symbol, say) must fail the run, not quietly turn every kernel test into a skip."""
    if os.environ.get("SPARSEKIT_REQUIRE_EXTENSION") == "1" and not sparsekit._ext.available():
        raise pytest.UsageError(f"SPARSEKIT_REQUIRE_EXTENSION=1 but the compiled extension did not load: "
                                f"{sparsekit._ext.load_error}")
