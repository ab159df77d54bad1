# Everyday entry points. `make run` starts the platform, `make test` is what CI runs
# (.ci/run), `make bench` runs the benchmarks. Everything uses the project's .venv.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff
MYPY := $(VENV)/bin/mypy
LINT_IMPORTS := $(VENV)/bin/lint-imports
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv services migrate run test bench assets lint typecheck fmt clean

help:
	@echo "make run        start PostgreSQL/Redis/Mosquitto if needed, migrate, seed, run the platform (PORT=8000)"
	@echo "make test       lint, type-check and run the whole test suite (what .ci/run does)"
	@echo "make bench      run the benchmarks; results go to docs/benchmarks.md"
	@echo "make services   make sure the local services answer"
	@echo "make migrate    apply database migrations"
	@echo "make assets     rebuild the bundled JavaScript (Node.js and npm; the bundles are committed)"
	@echo "make lint | typecheck | fmt | clean"

# The stamp is newer than both requirements files once they are installed, so pip runs
# only when a requirements file changes (or on a fresh checkout).
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed

services:
	@bash scripts/ensure_services.sh

migrate: venv services
	$(PYTHON) manage.py migrate --noinput

run: venv services migrate
	@bash scripts/ensure_streaming.sh || echo "make run: live streaming stays off (above: what to install)"
	$(PYTHON) manage.py seed_demo
	$(PYTHON) manage.py seed_demo_documents
	$(PYTHON) manage.py seed_demo_iot
	$(PYTHON) manage.py seed_demo_streams
	exec $(PYTHON) manage.py run_platform

lint: venv
	$(RUFF) check .
	$(RUFF) format --check .
	DJANGO_SETTINGS_MODULE=project.settings.test $(LINT_IMPORTS)

typecheck: venv
	$(MYPY) .

# Exit status 5 means pytest collected nothing: a broken test path must not pass CI.
test: venv
	@bash scripts/ensure_services.sh --rabbitmq
	@bash scripts/ensure_browser.sh
	@bash scripts/ensure_node_modules.sh
	@bash scripts/ensure_nftables.sh
	@bash scripts/ensure_streaming.sh
	$(RUFF) check .
	$(RUFF) format --check .
	DJANGO_SETTINGS_MODULE=project.settings.test $(LINT_IMPORTS)
	$(MYPY) .
	@status=0; $(PYTHON) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then \
		echo "make test: pytest collected no tests (exit 5); failing" >&2; exit 1; \
	fi; \
	exit $$status

bench: venv services migrate
	@bash scripts/ensure_nftables.sh
	$(PYTHON) -m bench

# The pinned packages of package-lock.json, bundled into notifications/static/ by esbuild.
assets:
	npm ci --no-audit --no-fund
	npm run build

fmt: venv
	$(RUFF) format .
	$(RUFF) check --fix .

clean:
	rm -rf var/ .mypy_cache .ruff_cache .pytest_cache bench/.tmp
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
