# Two entry points for a fresh machine (see README):  make quickstart   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install quickstart test lint llamacpp clean-quickstart

# torch==2.13.0 first, so the CPU build on local disk is what satisfies every later requirement
# (a plain `torch` requirement resolved from PyPI would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') and not torch.cuda.is_available() else 'unexpected torch build: ' + torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

# prepare -> train -> evaluate (before/after) -> generate, offline. Re-running continues from the
# checkpoints already in runs/quickstart (nothing is overwritten).
quickstart: install
	$(BIN)/codetune prepare configs/quickstart.yaml
	$(BIN)/codetune train configs/quickstart.yaml --resume
	$(BIN)/codetune evaluate configs/quickstart.yaml
	$(BIN)/codetune generate --config configs/quickstart.yaml --model runs/quickstart/train/final \
		"Return the number of lines in the file." "Return True if the string is a valid identifier."

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
	rm -rf runs/quickstart
