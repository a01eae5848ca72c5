"""The broken-context mechanism of tests/_cuda_health.py, with a faked broken context (no GPU needed):
the test that broke the context fails naming the error; under pytest-xdist the worker is replaced and
the remaining tests pass; without xdist the session stops after that test."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
INNER = textwrap.dedent("""
    def test_a_before():
        assert True

    def test_b_breaks_the_context():
        assert True

    def test_c_after():
        assert True

    def test_d_after():
        assert True
""")
CONFTEST = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(TESTS)!r})
    from _cuda_health import pytest_runtest_logfinish, pytest_runtest_makereport  # noqa: F401
""")


def run_inner(tmp_path, *args):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "SPARSEKIT_TEST_FAKE_BROKEN_CONTEXT": "test_b_breaks"}
    env.pop("PYTEST_XDIST_WORKER", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-o", "addopts=",
                          "test_inner.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    return out.returncode, out.stdout + out.stderr


def test_without_xdist_the_breaking_test_fails_and_the_session_stops(tmp_path):
    rc, out = run_inner(tmp_path, "-p", "no:xdist")
    assert rc == 2, out  # interrupted
    assert "PASSED test_inner.py::test_a_before" in out
    assert "FAILED test_inner.py::test_b_breaks_the_context" in out
    assert "an illegal instruction was encountered" in out and "the CUDA context broke in" in out
    assert "test_c_after" not in out.split("short test summary")[1], out  # not run
    assert "run the GPU tests with pytest-xdist" in out


def test_under_xdist_the_worker_is_replaced_and_the_rest_runs(tmp_path):
    pytest.importorskip("xdist")
    rc, out = run_inner(tmp_path, "-n", "1")
    assert rc == 1, out
    assert "FAILED test_inner.py::test_b_breaks_the_context" in out
    assert "an illegal instruction was encountered" in out
    assert "replacing crashed worker" in out, out
    for name in ("test_a_before", "test_c_after", "test_d_after"):
        assert f"PASSED test_inner.py::{name}" in out, out


def test_a_healthy_context_changes_nothing(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSEKIT_TEST_FAKE_BROKEN_CONTEXT", "PYTEST_XDIST_WORKER")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
                          "test_inner.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "4 passed" in out.stdout, out.stdout + out.stderr
