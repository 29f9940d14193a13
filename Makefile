# opsworld: every set-up step lives here, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
export WANDB_MODE ?= offline

.PHONY: demo test lint type bench mutation clean venv prometheus chromium shadow-demo

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build is on local disk; an unpinned torch pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

# The main job: train a small PPO autoscaler for chain3 (about two minutes; configs/experiment/
# demo.yaml), evaluate it against the Kubernetes HPA, the tuned HPA, the runbook and static
# provisioning on the `demo` incident suite (configs/suites/demo.yaml: 6 incidents x 2 seeds),
# print the table and write the plots (about 30 s).
DEMO_OUT ?= outputs/demo
demo: $(STAMP)
	$(BIN)/opsworld train experiment=demo out=$(DEMO_OUT)/train overwrite=true
	$(BIN)/opsworld evaluate 'policies=[$(DEMO_OUT)/train,hpa,tuned_hpa,runbook,static]' \
		suite=demo seeds=2 out=$(DEMO_OUT)/eval overwrite=true
	@echo "Table:     $(DEMO_OUT)/eval/summary.md"
	@echo "Pareto:    $(DEMO_OUT)/eval/pareto.png  (allocated cost vs SLO-violation minutes, 95% CIs)"
	@echo "Timelines: $(DEMO_OUT)/eval/timelines/<policy>/<incident>.png"
	@echo "Model:     $(DEMO_OUT)/train/model.zip  (+ vecnormalize.pkl, metrics.json)"

# Real Prometheus (Debian's 2.42 with promtool) for the live-cluster tests (docs/live.md).
# Installed as root when missing (CI runs as root); the package's service is never started:
# a policy-rc.d that refuses starts is put in place for the install when none exists, and a
# service that started anyway is stopped. Tests start their own Prometheus on 127.0.0.1.
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "prometheus/promtool missing: run 'sudo apt-get install -y --no-install-recommends prometheus' (Debian's 2.42), then make again" >&2; \
		exit 1; \
	fi; \
	made=0; if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; \
	fi; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }; \
	rc=$$?; if [ $$made = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	(systemctl stop prometheus || service prometheus stop) >/dev/null 2>&1 || true; \
	exit $$rc

# Headless Chromium (Debian's `chromium` package) for the shadow report's rendering test
# (tests/test_shadow_report_browser.py: the page renders with no console errors). Installed as
# root when missing, like `prometheus`; no browser is ever downloaded by a test tool.
chromium:
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "chromium missing: run 'sudo apt-get install -y --no-install-recommends chromium' (Debian's package), then make again" >&2; \
		exit 1; \
	fi; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

# Shadow mode end to end (experiments/shadow_demo.py; docs/live.md "Shadow demo"): two hours of
# chain3 history with a flash crowd and a bad deploy backfilled into Prometheus next to the live
# simulator exporter, a tiny PPO trained and exported, `opsworld shadow` replayed over the
# history, and the report. Under three minutes; prints where the report is.
SHADOW_DEMO_OUT ?= outputs/shadow_demo
shadow-demo: $(STAMP) prometheus
	$(BIN)/python -m experiments.shadow_demo --out $(SHADOW_DEMO_OUT)

test: $(STAMP) prometheus chromium
	WANDB_MODE=disabled $(BIN)/python -m pytest -n 2 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

type: $(STAMP)
	$(BIN)/mypy

# Simulator speed; writes experiments/results/sim_bench.{json,md} (under two minutes).
bench: $(STAMP)
	$(BIN)/opsworld bench sim

# Mutation testing (mutmut) of queueing, forecast metrics, scoring, the engine's scrape, the
# request-level engine, the fluid engine's scrape (counters, quantiles), the HPA and the action
# codec;
# writes experiments/results/mutation.md. Not part of `make test`: minutes per module.
# One module: make mutation MODULES=queueing
MODULES ?=
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,mutation]'
	$(BIN)/python tests/mutation/run_mutation.py $(MODULES)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .mypy_cache .ruff_cache
