# Lastmile — the two commands a new user types are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test check lint format unit e2e bench loadtest clean system-deps

# Debian libraries the embedded tritonserver needs (its Python backend links libpython3.X).
system-deps:
	@pyver=$$($(PYTHON) -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")'); \
	if ! ldconfig -p | grep -q "libpython$$pyver.so.1.0"; then \
	  echo "installing libpython$$pyver (Debian) for Triton's Python backend"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq "libpython$$pyver" >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,torch,sklearn,boosters,optimize]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/lastmile demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

unit: install
	$(PY) -m pytest tests/unit -q

test: check
	$(PY) -m pytest -q

# Benchmarks print side-by-side ratios measured in one run (never timed unit tests).
bench: install
	$(PY) loadtests/bench_gateway.py
	$(PY) loadtests/bench_gateway_grpc.py
	$(PY) loadtests/bench_repository.py
	$(PY) loadtests/bench_converters.py

# Faults under load (SIGKILL Triton / the gateway, a gzip bomb): recovery times and answers;
# rollouts and a replica kill under locust load (loadtests/scenarios.py, one line each).
loadtest: bench
	$(PY) loadtests/fault_recovery.py
	$(PY) loadtests/bench_swaps.py
	$(PY) loadtests/bench_shadow.py
	$(PY) loadtests/scenarios.py

clean:
	rm -rf $(VENV) .lastmile .mypy_cache .ruff_cache .pytest_cache
