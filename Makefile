# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DATA ?= datasets
DEMO_DIR ?= demo_output

.PHONY: setup test demo bench synthetic clean setup-pose poses

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# visdom ships only an sdist whose setup.py imports pkg_resources (gone in setuptools 81).
	$(PY) -m pip install --quiet "setuptools>=77,<81" wheel
	$(PY) -m pip install --quiet --no-build-isolation "visdom>=0.2.4"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The pose-estimator tests run scripts/generate_poses.py in .venv-pose, so `make test` builds both.
test: setup setup-pose
	$(PY) -m pytest -q tests

demo: setup
	$(PY) scripts/demo.py --data-dir $(DATA) --out $(DEMO_DIR)

synthetic: setup
	$(PY) scripts/make_synthetic_dataset.py --root $(DATA)/synthetic

bench: setup
	for b in scripts/bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

# Pose estimator (scripts/generate_poses.py) in its own venv: mediapipe pins numpy<2 and
# protobuf<5, which the torch venv must not inherit. requirements-pose.txt is a complete pinned
# list, installed with --no-deps (see the comment at its top).
POSE_VENV := .venv-pose
POSE_STAMP := $(POSE_VENV)/.requirements-installed

setup-pose: $(POSE_STAMP)

$(POSE_STAMP): requirements-pose.txt
	test -x $(POSE_VENV)/bin/python || $(PYTHON) -m venv $(POSE_VENV)
	$(POSE_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-pose.txt
	touch $(POSE_STAMP)

# Example: make poses POSE_DATASET=datasets/market1501 POSE_JOBS=2
POSE_DATASET ?= $(DATA)/market1501
POSE_JOBS ?= 1
poses: setup-pose
	$(POSE_VENV)/bin/python scripts/generate_poses.py --dataset-dir $(POSE_DATASET) -j $(POSE_JOBS)
