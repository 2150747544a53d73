# The README's set-up: `make demo` runs the end-to-end main job, `make test` runs the test suite.
# Both create .venv and install everything on first use (CPU torch pinned to 2.13.0).

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export OMP_NUM_THREADS ?= 1

.PHONY: demo test lint bench install sysdeps clean

demo: $(STAMP)
	$(VENV)/bin/lastr1 demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/env_throughput.py

install: $(STAMP)

# Headless rendering on a CPU needs Mesa's EGL (software llvmpipe); installed from Debian if missing.
sysdeps:
	@bash scripts/install_sysdeps.sh

$(STAMP): pyproject.toml scripts/install_python_deps.sh | sysdeps
	@bash scripts/install_python_deps.sh $(PYTHON) $(VENV)
	@touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
