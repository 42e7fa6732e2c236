# The two commands of the README, each doing its own set-up on a fresh machine.
#   make demo   run the main job
#   make test   run the test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The offline copies beside the project, when present (this workplace, CI).
SHARED ?= ../shared/data
export TFDS_DATA_DIR ?= $(if $(wildcard $(SHARED)/tfds),$(abspath $(SHARED)/tfds),)
export EDGEKERAS_WEIGHTS ?= $(if $(wildcard $(SHARED)/weights/*.h5),$(abspath $(firstword $(wildcard $(SHARED)/weights/*.h5))),imagenet)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-slow test-all demo run tune bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -m "not slow" tests

test-slow: install
	$(BIN)/python -m pytest -m "slow" tests

test-all: install
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/edgekeras run --config configs/demo.toml

# Any recipe: make run CONFIG=configs/default.toml (or configs/seed.toml)
CONFIG ?= configs/default.toml
run: install
	$(BIN)/edgekeras run --config $(CONFIG)

TUNE_CONFIG ?= configs/tune.toml
tune: install
	$(BIN)/edgekeras tune --config $(TUNE_CONFIG)

bench: install
	$(BIN)/python benchmarks/pruning_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
