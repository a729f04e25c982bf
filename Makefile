# Every target that needs Python builds .venv first (idempotent: a stamp file skips it when done).
PY := .venv/bin/python
STAMP := .venv/.installed
PYTEST_FLAGS ?= -q -x -p no:cacheprovider

.PHONY: bench-quick setup demo test test-cuda validate bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the CPU build on this disk; a bare torch requirement pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,pythia]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m unfoldmem demo -o demo-output --overwrite

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_FLAGS) -m "not slow and not cuda"

validate: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m "slow and not cuda"

# On a machine with a CUDA GPU: the --device cuda paths (tests/device).
test-cuda: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m cuda tests/device

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run_all --quick

lint: $(STAMP)
	.venv/bin/ruff check .

clean:
	rm -rf .venv demo-output
