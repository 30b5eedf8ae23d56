# kabanero-otc developer entry points. `make test` and `make demo` do all set-up on a fresh machine.
SHELL := /bin/bash
PY313 := $(shell PYENV_VERSION=3.13 pyenv which python 2>/dev/null || command -v python3.13 2>/dev/null || ls -d $$HOME/.pyenv/versions/3.13*/bin/python 2>/dev/null | tail -n 1)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: rabbitmq promtool kubectl chromium venv lint typecheck unit test test-real-mongo bench chaos demo run clean lock compose-check

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PY313)" || { echo "Python 3.13 not found (pyenv 3.13 or python3.13 on PATH)"; exit 1; }
	@test -x $(PY) || $(PY313) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

lock: venv  ## refresh the pinned, hashed locks after changing pyproject.toml dependencies
	$(PY) -m pip install -q -e '.[dev]' && $(PY) -m scripts.lock

rabbitmq:
	@bash scripts/ensure-rabbitmq.sh

# promtool (from Debian's prometheus package, unpacked into .venv/bin): the tests check /metrics,
# the alert rules and the dashboard with it.
promtool: venv
	@bash scripts/ensure-promtool.sh $(VENV)/bin

# kubectl >= 1.27 (the PATH's, else the official binary unpacked into .venv/bin): the tests render the
# kustomizations and drive the Kubernetes emulator with it.
kubectl: venv
	@bash scripts/ensure-kubectl.sh $(VENV)/bin

# Debian's chromium at /usr/bin/chromium (installed with apt-get when absent): the e2e tests open the
# services' pages in it, headless, over the DevTools protocol (tests/cdp.py).
chromium:
	@bash scripts/ensure-chromium.sh

# ruff includes the complexity bound (C901, max 12 in services/, shared/ and kotc_cli/); scripts/complexity.py
# holds the same bound by radon, which also counts boolean operators; lint-imports the layering
# contracts of pyproject.toml [tool.importlinter].
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m scripts.complexity services shared kotc_cli
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv
	$(VENV)/bin/mypy

# The test command (README, .ci/run): lint and types side by side, then the whole suite against the real
# RabbitMQ and the embedded MongoDB wire server (or MONGODB_URL when set); the compose stack in
# containers runs beside them from the start (scripts/test.sh says why). PYTEST_WORKERS=N (default 2)
# runs a test file per worker (pytest-xdist, --dist loadfile: a module's shared stack starts once); 0
# runs pytest in one process (docs/design.md, "The test suite: faster, stricter").
PYTEST_WORKERS ?= 2
test: venv rabbitmq promtool kubectl chromium
	@PYTEST_WORKERS=$(PYTEST_WORKERS) PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/test.sh

# docker-compose.yml built and run for real in containers (podman), scenario included (README).
compose-check: venv
	bash scripts/compose-check.sh

unit: venv promtool kubectl
	$(VENV)/bin/pytest -q tests/unit $(PYTEST_ARGS)

bench: venv rabbitmq
	$(PY) -m bench.run

# The stack under one fault at a time (its own private RabbitMQ node): .run/chaos-short.json;
# `make test` runs only its poison round (tests/e2e/test_chaos.py)
# (CHAOS_PROFILE=full writes the committed bench/chaos.json).
# CHAOS_PROFILE=full runs every fault three times, OTC down for 5 minutes included (~1 h).
chaos: venv
	$(PY) -m bench.chaos --profile $(or $(CHAOS_PROFILE),short)

demo: venv rabbitmq
	$(PY) -m scripts.stack demo

run: venv rabbitmq
	$(PY) -m scripts.stack run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
