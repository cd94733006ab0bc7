# Two commands on a fresh machine (Python 3.11):  make quickstart   |   make test
# Each creates or reuses .venv and installs raysl with torch/torchvision/ray pinned by constraints.txt.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: quickstart test test-fast test-cluster bench data clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package when this is a Debian machine and we may install;
# elsewhere `raysl prepare fashion-mnist DIR --download --out ...` fetches it.
data:
	@test -d $(FASHION_MNIST) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist); } || \
	  echo "Fashion-MNIST not at $(FASHION_MNIST): install Debian's dataset-fashion-mnist, or see README (--download)"

quickstart: $(VENV)/.installed data
	$(VENV)/bin/raysl sweep sweeps/quickstart.yaml

# Everything but the longest multi-node fault tests (marked `cluster`): what CI runs.
test: $(VENV)/.installed
	$(PY) -m pytest -m "not cluster"

# The longest multi-node fault tests: driver SIGKILL + --resume, a node removed mid-sweep, a 12-trial ASHA sweep.
test-cluster: $(VENV)/.installed
	$(PY) -m pytest -m cluster

# The speed benchmarks (docs/performance.md), one after another; each prints its table. Not tests.
# About 45 minutes on 2 cores; run nothing else meanwhile: the figures are side-by-side ratios.
bench: $(VENV)/.installed data
	$(PY) benchmarks/views.py --images 1024
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/trainer.py
	$(PY) benchmarks/monitor_rank.py
	$(PY) benchmarks/sweep_overhead.py
	$(PY) benchmarks/scaling.py

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) results
