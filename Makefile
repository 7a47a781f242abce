# dlm-harness: `make bench` runs the default suite and writes its report; `make test` runs the tests.
# Both create the virtualenv (.venv) with pinned dependencies when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN    := $(VENV)/bin/dlm-harness

.PHONY: setup test bench bench-estimators bench-samplers bench-gpu bench-rl report lint lock clean-venv

setup: $(STAMP)

# On a machine without an NVIDIA GPU, install the CPU build of torch first so that the lock's
# torch pin is already satisfied and no multi-GB CUDA wheels are downloaded.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "no GPU: installing the CPU build of torch"; \
	  $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The showcase: samplers, estimators against exact ground truth and RL on the built-in tiny models;
# prints the report's summary and where the report is.
bench: $(STAMP)
	@run_dir=$$($(RUN) run suites/default.yaml $(ARGS) | tail -n 1) && \
	  md=$$($(RUN) report $$run_dir | tail -n 1) && \
	  echo && echo "Summary ($$run_dir):" && awk '/^## Summary/{p=1;next} /^## /{p=0} p' $$md && \
	  echo "records: $$run_dir" && echo "report:  $$(dirname $$md)/index.html (and index.md)"

# Estimator time / bare forward time per estimator (target <= 1.10); `--quick` for a smoke run:
#   $(PY) benchmarks/estimators.py --quick
# then exact moments of every masked estimator on 12 items of L = 12 (target <= 5 min on 2 cores).
bench-estimators: $(STAMP)
	$(PY) benchmarks/estimators.py
	$(PY) benchmarks/estimators.py --exact

# Sampler throughput relative to plain low_confidence, with accuracy; ARGS=--quick for a short run.
bench-samplers: $(STAMP)
	$(PY) benchmarks/samplers.py $(ARGS)

# On one GPU (< 8 minutes per part): throughput ratios on an LLaDA-8B-shaped random model, then the
# estimator and RL studies on a GPU-trained tiny model; writes results/gpu/<run>/summary.{md,json}
# and benchmarks/GPU_RESULTS.md. Smoke run on a CPU: $(PY) benchmarks/gpu.py --quick --device cpu
bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu.py --publish $(ARGS)

# RL step wall time / its metered forward + backward time (target <= 1.2); ARGS=--quick for a short run.
bench-rl: $(STAMP)
	$(PY) benchmarks/rl.py $(ARGS)

report: $(STAMP)
	@test -n "$(RUN_DIR)" || { echo "usage: make report RUN_DIR=results/<suite>/<run_id>"; exit 2; }
	$(RUN) report $(RUN_DIR)

lint: $(STAMP)
	$(PY) -m ruff check harness tests benchmarks

lock: $(STAMP)
	{ echo "# Pinned versions for reproducible installs (pip install -r requirements.lock)."; \
	  echo "# Regenerate with: make lock"; \
	  $(PY) -m pip freeze | grep -v -iE '^(-e|dlm-harness)' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > requirements.lock

clean-venv:
	rm -rf $(VENV)
