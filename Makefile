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

# The HTML report test screenshots the page in headless Chromium: install Debian's package when it is
# missing and we can (root with apt-get); otherwise that one test skips and says why.
test: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the HTML report test"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "warning: could not install chromium; the HTML report test will be skipped"; \
	fi
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/throughput_cpu.py

clean:
	rm -rf runs .pytest_cache
