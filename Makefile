# Every target creates .venv and installs the package first (editable), so a fresh clone needs
# nothing but Python 3.11 and these commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m trainer demo --out demo_out

bench: $(STAMP)
	$(BIN)/python -m bench.dataprep
	$(BIN)/python -m bench.data_pipeline
	$(BIN)/python -m bench.train_step
	$(BIN)/python -m bench.uda_synthetic

clean:
	rm -rf $(VENV) demo_out
