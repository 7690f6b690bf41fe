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

.PHONY: setup repro test test-fast clean-venv

setup: $(STAMP)

# Reinstalls only when the pinned requirements or the project metadata change.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
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

clean-venv:
	rm -rf $(VENV)

# The pull-request check, as CI runs it: smoke runs of BASE and of this checkout, then the gate,
# judged by BASE's own check, rules and profile (stages/gate/pr_check.py hands over to BASE's copy).
BASE ?= origin/main
.PHONY: pr-check
pr-check: $(SETUP)
	$(PYTHON) -m stages.gate.pr_check --base $(BASE) --report pr-check-report.md
