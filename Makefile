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

.PHONY: install lint test test-slow test-all docs demo run tune bench faults clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,test,docs]"
	touch $@

install: $(BIN)/.installed

# flake8 reads its settings from setup.cfg.
lint: install
	$(BIN)/python -m flake8 edgekeras tests benchmarks

# Two pytest workers (pytest-xdist): most of a test's time is single-threaded
# graph tracing and conversion, so two run side by side on a 2-core machine.
# --durations keeps the slowest tests in CI's log.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --durations=15 tests

# pyproject.toml bounds each test at 600 s (pytest-timeout); the slow tests run for minutes
# (the two-worker run allows itself 2 x 900 s), so these targets give each an hour.
SLOW_TIMEOUT ?= 3600
test-slow: install
	$(BIN)/python -m pytest -m "slow" --timeout=$(SLOW_TIMEOUT) tests

test-all: install
	$(BIN)/python -m pytest --timeout=$(SLOW_TIMEOUT) tests

# The docs site (MkDocs + Material + mkdocstrings) from docs/ into site/; --strict fails on a
# broken link, a missing page or reference, or a docstring the API reference cannot parse.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

demo: install
	$(BIN)/edgekeras run --config configs/demo.toml

# Any recipe: make run CONFIG=configs/default.toml (or configs/seed.toml)
CONFIG ?= configs/default.toml
run: install
	$(BIN)/edgekeras run --config $(CONFIG)

TUNE_CONFIG ?= configs/tune.toml
tune: install
	$(BIN)/edgekeras tune --config $(TUNE_CONFIG)

# The benchmarks in sequence (benchmarks/README.md says what each measures); JSON in runs/bench/.
# deployed_latency.py, depthwise_ranges.py and qat_drift.py read an earlier run: BENCH_RUN_DIR=runs/<name>.
BENCH_RUN_DIR ?= runs/default
bench: install
	$(BIN)/python benchmarks/pruning_overhead.py --json runs/bench/pruning_overhead.json
	$(BIN)/python benchmarks/allocator.py --rounds 3 --steps 20 --json runs/bench/allocator.json
	$(BIN)/python benchmarks/allocator.py --phase qat --image-size 96 --trainable-from block_16_expand --rounds 2 --steps 10 --json runs/bench/allocator_qat.json
	$(BIN)/python benchmarks/eval_throughput.py --examples 2000 --threads 2 --rounds 5 --json runs/bench/eval_throughput.json
	$(BIN)/python benchmarks/deployed_latency.py --run-dir $(BENCH_RUN_DIR) --threads 1 2 --runs 100 --json runs/bench/deployed_latency.json
	$(BIN)/python benchmarks/depthwise_ranges.py --run-dir $(BENCH_RUN_DIR) --json runs/bench/depthwise_ranges.json
	$(BIN)/python benchmarks/qat_drift.py --run-dir $(BENCH_RUN_DIR) --json runs/bench/qat_drift.json
	$(BIN)/python benchmarks/seed_recipe.py --train-examples 5000 --test-examples 2000 --epochs 1 --prune-epochs 1 --json runs/bench/seed_recipe.json

# SIGKILLs real `edgekeras run` / `edgekeras tune` processes at every phase boundary and at random
# points, resumes each and checks the result (benchmarks/fault_injection.py; about an hour on 2 cores).
faults: install
	$(BIN)/python benchmarks/fault_injection.py --random 3 --tune --json runs/bench/fault_injection.json

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache
