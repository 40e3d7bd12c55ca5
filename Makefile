# guidance-harness: `make bench` runs the embedded testbed suite end to end; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.14.1 torchvision==0.29.1
SUITE ?= testbed
SAMPLES ?=
ARGS ?=

.PHONY: setup test bench perf testbed plan hpsv3-env browser report-bench

setup: $(VENV)/.installed

# torch is installed first and only when none is importable, so pip never resolves a bare `torch` on its own.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

bench: setup
	$(BIN)/harness bench suites/$(SUITE).toml $(if $(SAMPLES),--samples $(SAMPLES)) $(ARGS)

plan: setup
	$(BIN)/harness plan suites/$(SUITE).toml $(ARGS)

perf: setup
	$(BIN)/python -m perf.run $(ARGS)

# Headless Chromium for the HTML report's browser tests (Debian's package; playwright drives it, downloads nothing).
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Load time of the HTML report in headless Chromium and report folder sizes (testbed-like and a 4,000-image text suite).
report-bench: setup
	$(BIN)/python -m perf.report_page $(ARGS)

# The three parts train side by side, one thread each (about an hour on a 2-core machine), as the committed
# checkpoints were made; then the text-to-image testbed's detector and model side by side (TextDiT + word encoder,
# 5000 steps at lr 1e-3, then 3000 more at 3e-4 from its EMA weights: about 85 minutes more), all into
# TESTBED_OUT; `python -m harness.testbed.train --help` for one part at a time.
TESTBED_OUT ?= checkpoints
testbed: setup
	pids=""; for part in features routing masking; do \
	  $(BIN)/python -m harness.testbed.train --only $$part --threads 1 --out $(TESTBED_OUT) $(ARGS) & \
	  pids="$$pids $$!"; done; \
	for p in $$pids; do wait $$p || exit 1; done
	$(BIN)/python -m harness.testbed.train --only detector --feature-steps 2500 --pool 16000 --threads 1 \
	  --out $(TESTBED_OUT) $(ARGS) & pid=$$!; \
	$(BIN)/python -m harness.testbed.train --only t2i --steps 5000 --batch 128 --early-step 312 --pool 60000 \
	  --threads 2 --out $(TESTBED_OUT) $(ARGS) && \
	$(BIN)/python -m harness.testbed.train --only t2i --init $(TESTBED_OUT) --steps 3000 --lr 3e-4 --batch 128 \
	  --pool 60000 --threads 2 --out $(TESTBED_OUT) $(ARGS) && wait $$pid

# HPSv3 runs in its own environment: the hpsv3 package pins transformers 4.45.2, which the main .venv must not get.
# torch first (hpsv3's own environment pins torch 2.6.0), then the package; the harness starts
# harness/metrics/hpsv3/worker.py with $(HPSV3_VENV)/bin/python.
HPSV3_VENV ?= .venv-hpsv3
HPSV3_TORCH ?= torch==2.6.0 torchvision==0.21.0
# matplotlib and tensorboard: imported by hpsv3 1.0.0 (hpsv3/model/qwen2vl_trainer.py) but not declared by it
HPSV3_PACKAGES ?= "hpsv3==1.0.0" "transformers==4.45.2" matplotlib tensorboard
hpsv3-env: $(HPSV3_VENV)/.installed

$(HPSV3_VENV)/.installed:
	test -x $(HPSV3_VENV)/bin/python || $(PYTHON) -m venv $(HPSV3_VENV)
	$(HPSV3_VENV)/bin/pip install $(HPSV3_TORCH)
	$(HPSV3_VENV)/bin/pip install $(HPSV3_PACKAGES)
	$(HPSV3_VENV)/bin/python -c "from hpsv3 import HPSv3RewardInferencer"
	touch $@
