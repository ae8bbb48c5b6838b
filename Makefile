# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DATA ?= datasets
DEMO_DIR ?= demo_output

.PHONY: setup test demo experiment bench synthetic clean setup-pose setup-browser poses gpu-check

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# visdom ships only an sdist whose setup.py imports pkg_resources (gone in setuptools 81).
	$(PY) -m pip install --quiet "setuptools>=77,<81" wheel
	$(PY) -m pip install --quiet --no-build-isolation "visdom>=0.2.4"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The pose-estimator tests run scripts/generate_poses.py in .venv-pose, so `make test` builds both;
# the HTML pages are checked in headless Chromium. Test files run in parallel processes (one per
# core, at most 4); a file's tests stay in one process so its module fixtures are built once.
test: setup setup-pose setup-browser
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile tests

# Debian's chromium, installed with apt-get when missing and this is root (CI, containers);
# otherwise say what to install (the HTML tests fail with the same message without it).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the HTML page tests will fail"; \
	  else \
	    echo "warning: chromium not found: install it (e.g. sudo apt-get install chromium) for the HTML page tests"; \
	  fi; }

demo: setup
	$(PY) scripts/demo.py --data-dir $(DATA) --out $(DEMO_DIR)

# FD-GAN's claims measured on the synthetic data (docs/experiment.md); EXP_FLAGS for larger runs.
EXP_DIR ?= experiment_output
EXP_FLAGS ?=
experiment: setup
	$(PY) scripts/experiment.py --out $(EXP_DIR) $(EXP_FLAGS)

synthetic: setup
	$(PY) scripts/make_synthetic_dataset.py --root $(DATA)/synthetic

bench: setup
	for b in scripts/bench/bench_*.py; do $(PY) $$b || exit 1; done

# On a CUDA machine: does the project work on this GPU, how fast, which batch fits (docs/gpu.md).
# GPU_CHECK_FLAGS="--device cpu --quick" rehearses it without a GPU.
GPU_CHECK_DIR ?= gpu_check_output
GPU_CHECK_FLAGS ?=
gpu-check: setup
	$(PY) scripts/gpu_check.py --out $(GPU_CHECK_DIR) $(GPU_CHECK_FLAGS)

clean:
	rm -rf $(DEMO_DIR) $(EXP_DIR) $(GPU_CHECK_DIR) .pytest_cache

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
