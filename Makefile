# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint system-packages clean

# Debian packages run for real: Prometheus and its Pushgateway (tests/observability); ffmpeg, the
# reference implementation's frame extraction (bench/ingest.py). Each installs a command of its name.
SYSTEM_PACKAGES := prometheus prometheus-pushgateway ffmpeg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mega3d run examples/quickstart.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

system-packages:
	@(for command in $(SYSTEM_PACKAGES); do command -v $$command >/dev/null || exit 1; done) || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); }

test: lint system-packages
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs
