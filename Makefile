# energydsl: `make demo` runs the main job, `make test` the tests; both set up .venv first.
# The Python the README names (3.11) when the machine has it, else python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check
STAMP  := $(VENV)/.energydsl-installed
# The CPU build of PyTorch, explicitly, on any Linux machine: a plain `torch` from the
# default index is a multi-GB CUDA build there. torch alone comes from PyTorch's CPU index
# (--index-url: nothing else is consulted but pip's find-links, so a wheel there, such as
# an offline copy in PIP_FIND_LINKS, is used first when it is the same file); then its
# dependencies and ours come from the default index, torch being already satisfied.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo test generate lint bench compare wheel-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --no-deps --index-url $(TORCH_INDEX) '$(TORCH)'
	$(PIP) install '$(TORCH)' -e '.[dev]'
	touch $(STAMP)

# specs/ is a link to energydsl/specs, the specs the package ships (`energydsl specs`).
demo: setup
	$(BIN)/energydsl specs
	$(BIN)/energydsl compile specs/dem.edsl
	$(BIN)/energydsl show dem
	$(BIN)/energydsl compile specs/*.edsl
	$(BIN)/energydsl check specs/*.edsl
	$(BIN)/energydsl train specs/dem.edsl --objective sm --size H=16 --size K=16 \
		--epochs 3 --lr 0.01 --out runs/demo --overwrite
	$(BIN)/energydsl report runs/demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Recompile every spec into generated/ (the golden files the tests compare against).
generate: setup
	$(BIN)/energydsl compile specs/*.edsl

lint: setup
	$(BIN)/ruff check energydsl tests bench generated
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/run.py --threads 1

# Train every model on the digits and tabulate held-out likelihood (runs/compare/RESULTS.md).
compare: setup
	$(BIN)/energydsl compare --out runs/compare

# Build the wheel, install it in a fresh venv in a temporary directory (torch from the CPU
# index or find-links, as above) and run specs, compile, train and compare from there.
wheel-check: setup
	PYTHON='$(PYTHON)' TORCH='$(TORCH)' TORCH_INDEX='$(TORCH_INDEX)' \
		tools/wheel_check.sh $(BIN)/python

clean:
	rm -rf $(VENV) .pytest_cache dist build
