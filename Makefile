# `make demo` and `make test` work on a fresh clone: each creates .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokcomp-installed
# On a CUDA machine, point this at an empty file to keep the machine's own torch.
TORCH_CONSTRAINTS ?= constraints/cpu.txt

.PHONY: demo test test-heavy bench clean

$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(TORCH_CONSTRAINTS) torch
	$(PY) -m pip install -q -c $(TORCH_CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tokcomp compile recipes/quickstart.yaml -o runs/quickstart --force

# The HTML report test screenshots the page in headless Chromium: install Debian's package when it is
# missing and we can (root with apt-get); otherwise that one test skips and says why.
test: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the HTML report test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "warning: could not install chromium; the HTML report test will be skipped"; \
	fi
	$(PY) -m pytest -q tests

# Real-model end-to-end checks that take minutes each on a 2-core CPU (Whisper transcripts, Gemma long
# prompts, sentence-transformers and ONNX on real encoders): opt-in, and run before a release.
test-heavy: $(STAMP)
	$(PY) -m pytest -q -m heavy tests

bench: $(STAMP)
	$(PY) benchmarks/throughput_cpu.py

clean:
	rm -rf runs .pytest_cache

# GPU check (docs/kernels.md): `make gpu-wheels` on a machine with network writes the wheels the
# GPU image lacks into $(GPU_WHEELS) (ignored, ~7 MiB); on the GPU machine, with that folder
# carried, `make gpu-check` runs scripts/gpu_check.sh with the machine's own python3 (no venv,
# its torch untouched) and writes logs and results to $$OUT. `make gpu-check DRY_RUN=1` runs the
# same script here with the venv's python: CUDA steps are skipped, the rest runs.
.PHONY: gpu-check gpu-wheels
GPU_WHEELS ?= .gpu-wheels
GPU_PYTHON ?= python3
DRY_RUN ?= 0
HOST_PY = $(if $(wildcard $(PY)),$(PY),python3)

gpu-wheels:
	$(HOST_PY) scripts/gpu_check.py wheels-download --dest $(GPU_WHEELS)

gpu-check:
	DRY_RUN=$(DRY_RUN) WHEELS=$(GPU_WHEELS) PYTHON=$(if $(filter 1,$(DRY_RUN)),$(HOST_PY),$(GPU_PYTHON)) bash scripts/gpu_check.sh
