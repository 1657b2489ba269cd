# The two commands of the README: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/quickstart
SEED ?= 0

.PHONY: run test lint format venv clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/cxrguide synth --out $(RUN_DIR)/synthetic --n 900 --size 256 --seed $(SEED)
	$(BIN)/cxrguide prepare --source synthetic=$(RUN_DIR)/synthetic --out $(RUN_DIR)/prepared --size 256 --seed $(SEED)
	$(BIN)/cxrguide data summary $(RUN_DIR)/prepared

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: $(STAMP)
	$(BIN)/python bench/prepare.py
	$(BIN)/python bench/synth.py

clean:
	rm -rf $(VENV) runs
