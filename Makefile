# opsworld: every set-up step lives here, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
export WANDB_MODE ?= offline

.PHONY: demo test lint type bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build is on local disk; an unpinned torch pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Four simulated hours of Online Boutique at fluid fidelity, static replicas, with a 2.5x
# flash crowd from 1:30 (5 min ramps, 30 min hold) and 10% traffic noise; takes seconds.
DEMO_OUT ?= outputs/demo
demo: $(STAMP)
	$(BIN)/opsworld simulate scenario=boutique fidelity=fluid policy=static horizon_s=14400 \
		'scenario_overrides.traffic.bursts=[{at_s: 5400, duration_s: 1800, factor: 2.5, ramp_s: 300}]' \
		'scenario_overrides.traffic.noise={cv: 0.1, tau_s: 60}' \
		out=$(DEMO_OUT)
	@echo "Plot:      $(DEMO_OUT)/timeline.png"
	@echo "Telemetry: $(DEMO_OUT)/telemetry.parquet  (read with envs.sim.export.read_telemetry)"
	@echo "Summary:   $(DEMO_OUT)/summary.json"

test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -n 2 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

type: $(STAMP)
	$(BIN)/mypy

# Simulator speed; writes experiments/results/sim_bench.{json,md} (under two minutes).
bench: $(STAMP)
	$(BIN)/opsworld bench sim

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .mypy_cache .ruff_cache
