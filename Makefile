# `make demo` and `make test` work on a fresh clone: each creates .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tokcomp-installed
# On a CUDA machine, point this at an empty file to keep the machine's own torch.
TORCH_CONSTRAINTS ?= constraints/cpu.txt

.PHONY: demo test bench clean

$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(TORCH_CONSTRAINTS) torch
	$(PY) -m pip install -q -c $(TORCH_CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tokcomp compile recipes/quickstart.yaml -o runs/quickstart --force

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/throughput_cpu.py

clean:
	rm -rf runs .pytest_cache
