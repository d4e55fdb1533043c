# The two commands of the README. Both create .venv and install the project into it
# from PyPI on first use, so a fresh clone needs nothing installed by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml streams/_speedups.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/understudy demo --events 2000

lint: $(STAMP)
	$(BIN)/ruff check streams tests bench
	$(BIN)/ruff format --check streams tests bench
	$(BIN)/mypy

# Two phases: most tests on two xdist workers (each worker session starts its own embedded
# broker unless KAFKA_BOOTSTRAP_SERVERS is set; most of a test's time is waiting on Kafka
# and on stage subprocesses, so two at once nearly halve the wall time on two cores), then
# the tests judged on timing (marker `serial`) alone, so no neighbour's load decides them.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/pytest -m serial

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
