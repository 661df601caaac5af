# protoseg: `make demo` (venv + install + demo) and `make test` (venv + install + headless suite).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.protoseg-installed
HEADLESS ?=
PYTEST_ARGS ?=
APT_PACKAGES := xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
	libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
	libxcb-cursor0 libdbus-1-3 libfontconfig1 libegl1 libgl1 libglib2.0-0

.PHONY: install sysdeps lint test test-random demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages for headless Qt/OpenGL under Xvfb; only attempted as root and only when missing.
sysdeps:
	@if command -v xvfb-run >/dev/null && ldconfig -p | grep -q libxcb-cursor; then \
		echo "system packages present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES) >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES) >/dev/null); \
	else \
		echo "WARNING: not root; install these Debian packages for GUI tests: $(APT_PACKAGES)"; \
	fi

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: install sysdeps lint
	xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# same suite in a random order (pytest-random-order), to catch tests that depend on each other
test-random: install sysdeps
	xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest -q --random-order $(PYTEST_ARGS)

demo: install
	@if [ -n "$(HEADLESS)" ]; then \
		$(MAKE) -s sysdeps && xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/protoseg demo --headless --out demo_out; \
	else \
		$(BIN)/protoseg demo --out demo_out; \
	fi

bench: install
	$(BIN)/python benchmarks/tile_read.py

clean:
	rm -rf $(VENV) build dist demo_out .pytest_cache
