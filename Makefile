# Two commands: `make demo` and `make test`. Each creates .venv if missing and installs the
# package (with its cpu and test extras) from setup.cfg before it runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA := $(wildcard ../shared/data)
ifneq ($(SHARED_DATA),)
export KERAS_SECONDORDER_DATA ?= $(abspath $(SHARED_DATA))
endif
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint install

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[cpu,test]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python examples/mnist_lenet5.py

# Two pytest workers, each test file on one of them (module-level state stays per file): the
# suite is mostly single-threaded tracing, so two processes on two cores take about half the time.
test: $(BIN)/.installed
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(BIN)/.installed
	$(BIN)/python -m ruff check .
