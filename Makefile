PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: setup demo test lint bench

setup:
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -r requirements-nodeps.txt

demo: setup
	$(PYTHON) -m initno demo

test: setup
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) -m initno.bench --official
