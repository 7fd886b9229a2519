# One-command setup on a fresh machine. `make demo` runs the offline demo, `make test` the test suite.
# TORCH picks the PyTorch build: the default installs 2.13.0 (a CPU build here); a GPU user who already has a
# CUDA torch in .venv keeps it, or may ask for another: make demo TORCH="torch==2.13.0 --index-url ..."
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

FLOOR_VENV ?= .venv-floor

.PHONY: demo test lint install clean test-floor

$(BIN)/rlhflab: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/rlhflab

demo: install
	$(BIN)/rlhflab demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests

# The oldest peft and transformers pyproject.toml admits, in their own venv: the LoRA, rollout and SFT tests (not in CI)
test-floor:
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -c "import torch" 2>/dev/null || $(FLOOR_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(FLOOR_VENV)/bin/python -m pip install --quiet -e ".[dev]" "peft==0.18.0" "transformers==5.0.0"
	$(FLOOR_VENV)/bin/python -m pytest -q tests/unit/test_roles.py tests/unit/test_rollout.py tests/unit/test_sft.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) runs .pytest_cache
