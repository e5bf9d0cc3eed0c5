# medvit: two commands set everything up on a fresh machine.
#   make demo  -> create .venv, install, run the end-to-end demo on built-in synthetic data
#   make test  -> create .venv, install, run the test suite (CPU only); make test-fast skips the slow tier
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the builds on this project's machines; override on other hosts,
# e.g. `make test TORCH_SPEC="torch torchvision"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.medvit-installed

.PHONY: install test test-fast demo lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,face,wsi]'
	# insightface declares opencv-python, which would overwrite cv2/ from opencv-python-headless
	# (albumentations' choice); take it without deps (its pure-Python requirements are in the face extra).
	$(PY) -m pip install -q --no-deps 'insightface~=2.1'
	$(PY) -c "import cv2, torch, torchvision, timm, monai, albumentations, insightface.utils.face_align"
	touch $(STAMP)

install: $(STAMP)

# Everything, with the 15 slowest tests listed at the end (budget: under 8 minutes on 2 CPU cores). Two pytest
# workers with one thread each (two threads per worker would oversubscribe the cores); --dist loadfile keeps each
# file on one worker, so a module's trained-once fixture is trained once.
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile
test: $(STAMP)
	$(PYTEST) --durations=15

# The edit loop: everything but the tests marked slow (learning loops, torchrun spawns); about 2.5 minutes.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" --durations=10

demo: $(STAMP)
	$(VENV)/bin/medvit demo

lint:
	$(VENV)/bin/ruff check medvit tests benchmarks
	$(VENV)/bin/ruff format --check medvit tests benchmarks

format:
	$(VENV)/bin/ruff format medvit tests benchmarks
	$(VENV)/bin/ruff check --fix medvit tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
