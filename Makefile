# `make run` and `make test` each work alone on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-fast lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# launchbay-exec: starts each step of a process job (workers/launchers/launchbay_exec.c)
# so that subprocess can vfork; without a C compiler, steps start through Python instead.
CC     ?= cc
HELPER := $(VENV)/bin/launchbay-exec
$(HELPER): workers/launchers/launchbay_exec.c $(STAMP)
	@if command -v $(CC) >/dev/null 2>&1; then \
		$(CC) -O2 -Wall -Wextra -o $@ $<; \
	else \
		echo "no C compiler ($(CC)): process jobs start through Python (10-20 ms slower)"; \
	fi

run: $(STAMP) $(HELPER)
	$(VENV)/bin/launchbay up

# Everything, on real parts, spread over TEST_WORKERS processes (pytest-xdist; whole
# modules per worker, see tests/conftest.py). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
test: $(STAMP) $(HELPER)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The fast tier only: tests that need no external process (tests/tiers.py).
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m fast $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check orchestrator workers api tasks tests bench
	$(VENV)/bin/ruff format --check orchestrator workers api tasks tests bench
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format orchestrator workers api tasks tests bench
	$(VENV)/bin/ruff check --fix orchestrator workers api tasks tests bench

# Every figure beside its baseline, measured in the same run (5-10 minutes on 2 cores).
# One section: `.venv/bin/python -m bench scaleout` (or throughput, process, docker, logs,
# streams, rss); small sizes: `--quick`.
bench: $(STAMP) $(HELPER)
	$(PY) -m bench $(BENCH_ARGS)

# A longer chaos run (tests/test_chaos.py): more jobs, more minutes of kills. Replay a run
# with LAUNCHBAY_CHAOS_SEED=<seed> (printed at its start).
CHAOS_JOBS ?= 1000
CHAOS_S    ?= 300
.PHONY: chaos
chaos: $(STAMP) $(HELPER)
	LAUNCHBAY_CHAOS_JOBS=$(CHAOS_JOBS) LAUNCHBAY_CHAOS_S=$(CHAOS_S) \
		$(VENV)/bin/pytest -q -s -p no:cacheprovider tests/test_chaos.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
