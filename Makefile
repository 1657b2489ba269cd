# The two commands of the README: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/quickstart
SEED ?= 0

.PHONY: run test lint format venv clean bench bench-quick system-deps lock

venv: $(STAMP)

# Dependencies from the hashed pins (docs/security.md), then the package itself without deps.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Regenerate requirements.lock after changing pyproject's pins (needs uv: pipx install uv).
lock:
	uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 \
	  --index-strategy unsafe-best-match -o requirements.lock

run: $(STAMP)
	$(BIN)/cxrguide pipeline --config configs/quickstart.yaml --out $(RUN_DIR) --seed $(SEED)

# System packages some tests drive for real (PostgreSQL for shared tuning studies, Chromium for
# the report and web-page tests). Installed only where missing and when we may (root + apt);
# elsewhere those tests skip with a reason.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "could not install$$missing: the tests that need them will skip"; \
	  fi; \
	fi

# Whole files per worker, longest first, one BLAS thread per worker (two workers on two cores;
# docs/development.md "Test suite").
test: $(STAMP) system-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/vulture  # dead code; paths, confidence and whitelist in pyproject.toml [tool.vulture]

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

# Every benchmark (bench/_*.py are helpers); each ends with one JSON line of figures.
# bench-quick: the same with --quick (a few minutes each at most on 2 cores).
bench: $(STAMP)
	for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

bench-quick: $(STAMP)
	for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script --quick || exit 1; done

clean:
	rm -rf $(VENV) runs
