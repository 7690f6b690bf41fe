# Two commands on a fresh clone: `make repro` (set up, then run the pipeline) and `make test`.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make test SETUP= PYTHON=/path/to/python` runs in an environment you already have.
SETUP ?= setup

# Stages run as `python -m stages.<name>` from dvc.yaml: put the venv's python first on PATH.
export PATH := $(abspath $(dir $(PYTHON))):$(PATH)
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM ?= true

.PHONY: setup repro test test-fast lock clean-venv

setup: $(STAMP)

# Reinstalls only when the pinned requirements or the project metadata change.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet pip==26.3
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

repro: $(SETUP)
	dvc repro

test: $(SETUP)
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest $(PYTEST_ARGS)

# The unit tier: no `dvc`, no stage command lines in subprocesses, no training beyond the tiny model.
test-fast: $(SETUP)
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

# The lock: requirements.txt pins every package requirements.in pulls in, for Linux x86_64 and Python
# 3.11 with torch's CPU build. torch is written without its local label (+cpu), so pip takes the CPU
# wheel where an index offers one and PyPI's CUDA build elsewhere (which adds its nvidia-* libraries).
# LOCK_ARGS says where the CPU wheel is (a mirror: --find-links DIR or --extra-index-url URL).
LOCK_ARGS ?= --extra-index-url https://download.pytorch.org/whl/cpu
lock: $(SETUP)
	$(VENV)/bin/uv pip compile requirements.in --quiet --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --index-strategy unsafe-best-match \
	    --custom-compile-command "make lock" $(LOCK_ARGS) -o requirements.txt
	sed -i 's/^torch==\([0-9.]*\)+[a-z0-9]*$$/torch==\1/' requirements.txt

clean-venv:
	rm -rf $(VENV)

# The pull-request check, as CI runs it: smoke runs of BASE and of this checkout, then the gate,
# judged by BASE's own check, rules and profile (stages/gate/pr_check.py hands over to BASE's copy).
BASE ?= origin/main
.PHONY: pr-check
pr-check: $(SETUP)
	$(PYTHON) -m stages.gate.pr_check --base $(BASE) --report pr-check-report.md

# After a merge to main: main's smoke run, pushed with the run cache to the default DVC remote, so the
# pull-request checks of branches off it restore their base (`dvc repro --pull`) instead of training it.
.PHONY: smoke-cache
smoke-cache: $(SETUP)
	$(PYTHON) -m stages.gate.pr_check --push-run-cache
