# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DATA ?= datasets
DEMO_DIR ?= demo_output

.PHONY: setup test demo bench synthetic clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# visdom ships only an sdist whose setup.py imports pkg_resources (gone in setuptools 81).
	$(PY) -m pip install --quiet "setuptools>=77,<81" wheel
	$(PY) -m pip install --quiet --no-build-isolation "visdom>=0.2.4"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) scripts/demo.py --data-dir $(DATA) --out $(DEMO_DIR)

synthetic: setup
	$(PY) scripts/make_synthetic_dataset.py --root $(DATA)/synthetic

bench: setup
	for b in scripts/bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
