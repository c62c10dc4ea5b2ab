# Two entry points (see README): `make train` (the main job) and `make test` (the test suite); `make bench`
# times the backends; `make dev` makes the development environment (.venv, an editable install).
# Each creates its own virtual environment on first use; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv-test
TORCH ?= torch==2.14.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastrecur-installed

DEV_VENV ?= .venv

.PHONY: train test bench install dev lint clean

# torch 2.14.1 is the CUDA 13.0 build: it runs on CPU, and its headers let CI compile and link the CUDA sources.
# Reinstalled whenever a source changes (the install is not editable); ninja reuses unchanged objects in build/.
SOURCES := $(shell find fastrecur kernels csrc -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.cu' -o -name '*.h' \) 2>/dev/null)
$(STAMP): pyproject.toml setup.py $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned (pip then keeps it: the package asks for torch>=2.6); then the extension's build tools.
	$(PY) -m pip install -q "$(TORCH)" ninja "setuptools>=64" wheel
	# Not editable: proves `pip install .` works, with the dependencies pyproject.toml declares and the extras that
	# `make train` and the tests use; builds the C++/CUDA extension once per environment.
	MAX_JOBS=2 $(PY) -m pip install -q --no-build-isolation ".[train,plot,test]"
	cd / && $(abspath $(PY)) -c "import fastrecur, sys; print('fastrecur', fastrecur.__version__, 'from', fastrecur.__file__); [print(f'  backend {k}: {v}') for k, v in fastrecur.backends().items()]"
	touch $(STAMP)

install: $(STAMP)

# Generates 4x4 Sudoku puzzles into data/, trains a small TRM on the CPU (about 4 minutes), evaluates, and
# writes runs/demo/ (checkpoints, metrics.csv, training.png); then draws the recursion into runs/demo/inspect/.
train: $(STAMP)
	$(VENV)/bin/fastrecur train --preset sudoku-4x4-cpu --out runs/demo
	$(VENV)/bin/fastrecur inspect runs/demo data/sudoku-4x4-cpu --out runs/demo/inspect

test: $(STAMP)
	# FASTRECUR_ASAN=1 includes the AddressSanitizer/UBSan build and run of the extension (tests/test_asan.py).
	FASTRECUR_REQUIRE_EXT=$${FASTRECUR_REQUIRE_EXT-1} FASTRECUR_ASAN=$${FASTRECUR_ASAN-1} PYTHON=$(abspath $(PY)) \
	  $(VENV)/bin/pytest -q -p no:cacheprovider tests

# The development environment: an editable install into $(DEV_VENV) with every extra, ruff and the build tools.
# Python edits take effect at once; after a C++ change, run `make dev` again to rebuild the extension.
dev:
	test -x $(DEV_VENV)/bin/python || $(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/python -m pip install -q "$(TORCH)" ninja "setuptools>=64" wheel
	MAX_JOBS=2 $(DEV_VENV)/bin/python -m pip install -q --no-build-isolation -e ".[dev]"

lint:
	$(DEV_VENV)/bin/ruff check .
	$(DEV_VENV)/bin/ruff format --check .

bench: $(STAMP)
	cd / && $(abspath $(PY)) -m fastrecur.bench --quick --device cpu --out $(CURDIR)/bench-out

clean:
	rm -rf $(VENV) build dist *.egg-info bench-out
