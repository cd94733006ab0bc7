# Two commands on a fresh machine (Python 3.11):  make quickstart   |   make test
# Each creates or reuses .venv and installs raysl with torch/torchvision/ray pinned by constraints.txt.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: quickstart test test-fast test-cluster soak bench data clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's package when this is a Debian machine and we may install;
# elsewhere `raysl prepare fashion-mnist DIR --download --out ...` fetches it.
# Under CI (CI=true) a dataset that could not be installed fails the target; elsewhere it is a note.
data:
	@test -d $(FASHION_MNIST) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist); } || true
	@test -d $(FASHION_MNIST) || \
	  { echo "Fashion-MNIST not at $(FASHION_MNIST): install Debian's dataset-fashion-mnist, or see README (--download)"; \
	    [ "$${CI:-}" != true ]; }

quickstart: $(VENV)/.installed data
	$(VENV)/bin/raysl sweep sweeps/quickstart.yaml

# Everything but the longest multi-node and seed-sweep runs (marked `cluster`) and the chaos soak (`soak`): what CI runs. The 15 slowest
# tests are listed at the end (docs/tests.md has the figures).
test: $(VENV)/.installed
	$(PY) -m pytest -m "not cluster and not soak" --durations=15

# The longest runs: driver SIGKILL + --resume, a node removed mid-sweep, a 12-trial ASHA sweep, the seed sweeps' --smoke.
test-cluster: $(VENV)/.installed
	$(PY) -m pytest -m cluster --durations=15

# The chaos soak (tests/test_soak.py, marker `soak`): a 1 + 6 node local cluster, data on a local S3 server, a 24-trial
# ASHA sweep of two methods while nodes, Train workers and augmentation actors are killed for 10 minutes (then the
# driver, and --resume); prints its table. About 45 minutes on 2 cores. RAYSL_SOAK_MINUTES shortens it.
soak: $(VENV)/.installed data
	$(PY) -m pytest -m soak -s --durations=5

# The speed benchmarks (docs/performance.md), one after another; each prints its table. Not tests.
# About 45 minutes on 2 cores; run nothing else meanwhile: the figures are side-by-side ratios.
bench: $(VENV)/.installed data
	$(PY) benchmarks/views.py --images 1024
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/trainer.py
	$(PY) benchmarks/monitor_rank.py
	$(PY) benchmarks/sweep_overhead.py
	$(PY) benchmarks/scaling.py

# No Ray (every test that starts one is marked `slow`): under 3 minutes on 2 cores.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" --durations=15

clean:
	rm -rf $(VENV) results
