# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow check bench venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned (an unpinned torch pulls a multi-GB CUDA build), then everything else pinned.
$(STAMP): $(BIN)/python pyproject.toml requirements/constraints.txt
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# the quick audit of the built-in MNIST CNN; the report stays in audit-demo/ (open audit-demo/index.html)
demo: $(STAMP)
	rm -rf audit-demo
	$(BIN)/bastion audit --model zoo:mnist-cnn --data mnist5k --profile quick --out audit-demo

# the test files spread over PYTEST_WORKERS processes (pytest-xdist; a file's tests stay in one process, so its
# fixtures are built once): on the 2-core CI machine 2 workers ran the default suite in 18 min instead of 33
PYTEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow -n $(PYTEST_WORKERS) --dist loadfile

# static checks (CI runs them before the tests): lint, formatting, types (strict on the contracts)
check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

$(VENV)/.bench: $(STAMP) requirements/bench.txt
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/bench.txt
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	touch $(VENV)/.bench

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/evasion_peers.py
	$(BIN)/python benchmarks/blackbox_peers.py
	$(BIN)/python benchmarks/hsj_peers.py
	$(BIN)/python benchmarks/patch_bound.py
	$(BIN)/python benchmarks/audit_peers.py
	$(BIN)/python benchmarks/training_peers.py
	$(BIN)/python benchmarks/smoothing_peers.py
	$(BIN)/python benchmarks/detection_eval.py
	$(BIN)/python benchmarks/serve_load.py

clean:
	rm -rf $(VENV) .pytest_cache audit-demo
