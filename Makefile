# opsworld: every set-up step lives here, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
export WANDB_MODE ?= offline

.PHONY: demo test lint type bench mutation clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build is on local disk; an unpinned torch pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job: train a small PPO autoscaler for chain3 (about two minutes; configs/experiment/
# demo.yaml), evaluate it against the Kubernetes HPA, the tuned HPA, the runbook and static
# provisioning on the `demo` incident suite (configs/suites/demo.yaml: 6 incidents x 2 seeds),
# print the table and write the plots (about 30 s).
DEMO_OUT ?= outputs/demo
demo: $(STAMP)
	$(BIN)/opsworld train experiment=demo out=$(DEMO_OUT)/train
	$(BIN)/opsworld evaluate 'policies=[$(DEMO_OUT)/train,hpa,tuned_hpa,runbook,static]' \
		suite=demo seeds=2 out=$(DEMO_OUT)/eval
	@echo "Table:     $(DEMO_OUT)/eval/summary.md"
	@echo "Pareto:    $(DEMO_OUT)/eval/pareto.png  (allocated cost vs SLO-violation minutes, 95% CIs)"
	@echo "Timelines: $(DEMO_OUT)/eval/timelines/<policy>/<incident>.png"
	@echo "Model:     $(DEMO_OUT)/train/model.zip  (+ vecnormalize.pkl, metrics.json)"

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

# Mutation testing (mutmut) of queueing, forecast metrics, scoring and the engine's scrape;
# writes experiments/results/mutation.md. Not part of `make test`: minutes per module.
# One module: make mutation MODULES=queueing
MODULES ?=
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,mutation]'
	$(BIN)/python tests/mutation/run_mutation.py $(MODULES)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .mypy_cache .ruff_cache
