# The two commands of the README: `make run` (install + the DVC pipeline) and `make test`.
# Both create and reuse .venv and are safe to run again.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_PTH := scripts/venv_bin_on_path.pth
export PATH := $(CURDIR)/$(BIN):$(PATH)

# A .venv copied or moved here from another folder still starts the original's Python (its
# scripts' first line and the editable install name the old path): rebuild it here.
# (pip's script names its Python in its first lines: on line 1, or on line 2 under a long path.)
VENV_MOVED := $(shell test -f $(BIN)/pip && ! head -n 2 $(BIN)/pip | grep -qF '$(CURDIR)/$(BIN)/python' && echo yes)
ifeq ($(VENV_MOVED),yes)
$(warning $(VENV) was made in another folder; rebuilding it here)
$(shell rm -rf $(VENV))
endif

.PHONY: run test lint install install-dev lock clean

run: $(VENV)/.installed
	dvc repro
	@echo
	@echo "Done. Metrics: $(BIN)/dvc metrics show    Runs: $(BIN)/mlflow ui, then the address above"
	@echo "Chat with the model: $(BIN)/tinyllm chat --model-uri models:/shakespeare/1"
# mlflow execs uvicorn from PATH, so the venv's bin goes first (tests/cli/test_mlflow_serve.py
# runs this line as printed).
	@echo 'Serve it with MLflow: PATH="$(CURDIR)/$(BIN):$$PATH" mlflow models serve -m models:/shakespeare/1 --env-manager local -p 5001'

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The .pth appends the venv's bin to PATH (at the end) for every Python started from it, so
# what DVC itself starts by name finds it without activation: `.venv/bin/dvc queue start`
# spawns its worker and each experiment as a bare `dvc` (tests/integration/test_sweep.py).
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt $(VENV_PTH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	cp $(VENV_PTH) "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

# Re-pin constraints.txt from the current environment (after changing pyproject.toml ranges).
lock: $(VENV)/.installed-dev
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v '^tinyllm' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
