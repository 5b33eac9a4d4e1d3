# energydsl: `make demo` runs the main job, `make test` the tests; both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.energydsl-installed
# The CPU build of PyTorch (a plain `torch` would pull a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: setup demo test generate lint bench compare clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check '$(TORCH)'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/energydsl compile specs/dem.edsl
	$(BIN)/energydsl show specs/dem.edsl
	$(BIN)/energydsl compile specs/*.edsl
	$(BIN)/energydsl check specs/*.edsl
	$(BIN)/energydsl train specs/dem.edsl --objective sm --size H=16 --size K=16 \
		--epochs 3 --lr 0.01 --out runs/demo
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

clean:
	rm -rf $(VENV) .pytest_cache dist build
