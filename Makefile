# make train   install into .venv, then train on the embedded synthetic city (CPU)
# make test    install into .venv, then run the test suite (TEST_WORKERS processes, one torch thread each)
# make test-slow  the long checks that make test leaves out (kill loops, several processes)
# make bench   install into .venv, then run the benchmarks and print their tables
# make lint    check formatting and lint (ruff); make format rewrites the files
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
# make test and make test-fast share the tests out file by file over this many pytest-xdist
# processes; each gives torch one thread, so that the processes do not fight over the cores.
TEST_WORKERS ?= 2

.PHONY: install train test test-fast test-slow bench lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

train: install
	$(BIN)/python train.py trainer=cpu $(ARGS)

test test-fast: export OMP_NUM_THREADS ?= 1

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not heavy" $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -m heavy $(ARGS)

bench: install
	for bench in benchmarks/bench_*.py; do $(BIN)/python $$bench $(ARGS) || exit 1; done

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache
