"""A broken CUDA context fails one test, not a worker.

A CUDA error such as an illegal address or an illegal instruction is sticky: every later CUDA call of
the process fails, so without care one bad kernel turns every later test of that process into an error
and hides which test broke it. After each test that used CUDA, its context is checked (one
`torch.cuda.synchronize()`); if it is broken:

* that test fails, naming the error (run the first GPU pass with CUDA_LAUNCH_BLOCKING=1 so that the
  error surfaces in the test that caused it, not in a later one);
* under pytest-xdist the worker process exits once the failure is reported, and xdist starts a fresh
  worker for the tests that remain (it also reports the test once more, as "crashed");
* without xdist the session stops there (a broken context cannot run more GPU tests), saying so.

The tests of this mechanism (tests/test_cuda_health.py) fake a broken context with the environment
variable SPARSEKIT_TEST_FAKE_BROKEN_CONTEXT=<part of a test id>, on machines without a GPU.
"""
from __future__ import annotations

import os
import sys

import pytest

EXIT_CODE = 75  # the status of a worker that exits because its CUDA context broke
FAKE_ENV = "SPARSEKIT_TEST_FAKE_BROKEN_CONTEXT"

_broken: dict = {}  # nodeid -> error, once this process's context is broken


def context_error(nodeid: str):
    """None while this process's CUDA context is healthy (or CUDA was never initialised), else the error."""
    fake = os.environ.get(FAKE_ENV)
    if fake and fake in nodeid:
        return "RuntimeError: CUDA error: an illegal instruction was encountered (faked by " + FAKE_ENV + ")"
    torch = sys.modules.get("torch")  # a process that never imported torch has no CUDA context
    if _broken or torch is None or not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    try:
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - any error here means the context is unusable
        return f"{type(e).__name__}: {e}".strip()
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "setup" or _broken:
        return
    rep = outcome.get_result()
    err = context_error(item.nodeid)
    if err is None:
        return
    _broken[item.nodeid] = err
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        item.session.shouldstop = (f"the CUDA context of this process broke in {item.nodeid}; run the GPU tests "
                                   "with pytest-xdist (-n N) to replace the process and go on")
    rep.outcome = "failed"
    rep.longrepr = (f"the CUDA context broke in {item.nodeid} (torch.cuda.synchronize() after the test "
                    f"raised; CUDA errors are sticky):\n{err}\n"
                    + ("this worker exits and pytest-xdist replaces it: the next tests run on a fresh context"
                       if os.environ.get("PYTEST_XDIST_WORKER") else
                       "the session stops here: run the GPU tests with pytest-xdist (-n N) to go on in a fresh "
                       "process"))


def pytest_runtest_logfinish(nodeid, location):
    if nodeid not in _broken:
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # The failure report has been sent (xdist writes it to the controller synchronously); exit without
        # running atexit handlers or destructors, which would touch the broken context again.
        os._exit(EXIT_CODE)

