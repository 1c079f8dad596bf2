# tlresearch: `make demo` (a complete offline training run) and `make test` (the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/demo-pets
DEMO_RUN ?= outputs/demo
# Test processes: xdist workers, one test file per worker (files share expensive fixtures).
TEST_WORKERS ?= auto

.PHONY: install demo lint test test-fast clean

install: $(VENV)/.installed

# Re-install when the dependencies change. pip installs torch from the registry (or the
# machine's local wheels, where pip is configured with them).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

demo: install
	$(PY) -m tlresearch.data.generate pets $(DEMO_DATA) --num-classes 6 --images-per-class 40
	$(PY) -m tlresearch.train +experiment=demo data.root=$(DEMO_DATA) hydra.run.dir=$(DEMO_RUN)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

test: install lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

clean:
	rm -rf $(VENV) outputs multirun data/demo-pets .pytest_cache
