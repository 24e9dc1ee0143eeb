PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: setup browser demo test bench

setup:
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -r requirements-nodeps.txt

# Debian's chromium, for the JavaScript tests (Playwright drives it; it never downloads a browser).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

demo: setup
	$(PYTHON) -m initno demo

test: setup browser
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) -m initno.bench --official
