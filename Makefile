# The fixed operator interface: `make up`, `make test`, `make bench`.
# Each target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test chaos bench lint install lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/crosslogic up

test: $(STAMP)
	$(BIN)/pytest

# the fault matrix alone (make test runs it too); prints its table
chaos: $(STAMP)
	$(BIN)/pytest tests/test_chaos.py -s -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| (echo "bench needs wrk (apt-get install wrk)"; exit 1)
	$(BIN)/python -m bench

# constraints.txt anew: the newest versions pyproject.toml's ranges allow, in a fresh venv
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[dev,skypilot]'
	head -3 constraints.txt > constraints.new
	.lock-venv/bin/pip freeze --exclude-editable >> constraints.new
	mv constraints.new constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf .crosslogic $(VENV)
