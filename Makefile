# jaxmm — `make test` builds .venv (Python >= 3.12) when missing and runs the test suite; `make demo` runs the main job.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Probe interpreters by running them; the first that reports >= 3.12 builds the venv.
PYTHON_CANDIDATES := python3.13 python3.12 python3 $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python3)
FIND_PYTHON := for p in $(PYTHON_CANDIDATES); do \
	  if $$p -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then command -v $$p || echo $$p; exit 0; fi; \
	done; echo "no Python >= 3.12 found (tried: $(PYTHON_CANDIDATES))" >&2; exit 1

.PHONY: test demo venv clean-venv fixtures
$(VENV)/.installed: pyproject.toml setup.py
	@set -e; py=$$($(FIND_PYTHON)); echo "building $(VENV) from $$py ($$($$py --version))"; \
	  [ -x $(PY) ] || $$py -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -m pip install -q -e '.[test,data,ocr,notebooks]'; \
	  touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	@command -v java >/dev/null || echo "note: no java on PATH: the METEOR / PTB-tokenizer caption-metric tests are skipped (jaxmm.metrics)"
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --dist worksteal --durations=30

# JAX picks the accelerator when one is installed (pip install '.[cuda]' / '.[tpu]'), else the CPU.
# Two stages (configs/demo.py): the ViT as a word + colour classifier, then CoMMIT instruction tuning from its encoder.
demo: $(VENV)/.installed
	$(PY) -m train --config configs/demo.py:stage1 --workdir runs/demo/stage1
	$(PY) -m train --config configs/demo.py --workdir runs/demo --config.model.init.from_workdir=runs/demo/stage1:encoder

fixtures:
	bash tests/fixtures/make_hf_fixtures.sh

clean-venv:
	rm -rf $(VENV)
