# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# torch is pinned to the CPU wheel that lies on local disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
LLAMA  := llama-cpp-python==0.3.36
# llama-cpp-python builds llama.cpp for the build machine's CPU by default; on CPUs with AMX (Xeon
# Sapphire Rapids and later) that build segfaults in k-quant matmuls under virtualisation. A portable
# AVX2 build runs everywhere the tests run. Its wheel is kept under a name that carries these flags, so
# a wheel pip cached from another build is never picked up instead.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/bitconv-wheels/llama-cpp-python-0.3.36-avx2
DEMO_DIR := demo-out
FUZZ_SECONDS ?= 60

.PHONY: demo test bench fuzz wheel-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.demo-deps: pyproject.toml | $(BIN)/python
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[torch,hub,demo]'
	touch $@

# llama-cpp-python compiles llama.cpp on first install (~10-14 min on 2 cores), then reuses the wheel.
$(VENV)/.test-deps: $(VENV)/.demo-deps
	$(PIP) install -e '.[test]'
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  rm -rf $(LLAMA_WHEELS).tmp && \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(PIP) wheel --no-deps --no-cache-dir -w $(LLAMA_WHEELS).tmp $(LLAMA) && \
	  rm -rf $(LLAMA_WHEELS) && mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); fi
	$(PIP) install $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	touch $@

demo: $(VENV)/.demo-deps
	$(BIN)/python examples/demo.py --out $(DEMO_DIR)

test: $(VENV)/.test-deps
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory wheel-check

# Build the wheel and install it into a clean venv outside the source tree, then run it there.
wheel-check: $(BIN)/python
	rm -rf build/wheelcheck && mkdir -p build/wheelcheck
	$(PIP) wheel --no-deps -w build/wheelcheck/dist .
	$(PYTHON) -m venv build/wheelcheck/venv
	build/wheelcheck/venv/bin/python -m pip --disable-pip-version-check -q install build/wheelcheck/dist/bitconv-*.whl
	cd build/wheelcheck && venv/bin/bitconv --version && venv/bin/bitconv quants --json > quants.json \
	  && venv/bin/python -c "import bitconv, pathlib, sys; p = pathlib.Path(bitconv.__file__).resolve(); \
	     sys.exit(0 if 'site-packages' in str(p) else f'bitconv imported from {p}')" \
	  && echo "wheel-check: installed wheel runs outside the source tree"

# Coverage-guided fuzzing (atheris) of every parser that reads user files, FUZZ_SECONDS each;
# seeds come from the test fixtures, new corpus and crashes go to build/fuzz/.
fuzz: $(VENV)/.test-deps
	$(BIN)/python -m fuzz.run_all --seconds $(FUZZ_SECONDS)

bench: $(VENV)/.test-deps
	$(BIN)/python benchmarks/convert.py

clean:
	rm -rf build dist *.egg-info $(DEMO_DIR) .pytest_cache
