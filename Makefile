# Set-up is part of every target: a fresh clone needs only `make repro` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test ui ci-profile lock clean-venv

setup: $(STAMP)

# Reinstall only when the dependency list or the pinned versions change.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[test]"
	touch $(STAMP)

# The main job: rebuild every result of dvc.yaml (data, models, FID table), each stage's
# MLflow run grouped under one parent run per execution.
repro: setup
	@git rev-parse HEAD >/dev/null 2>&1 || { echo "error: DVC needs a git repository with at least one commit"; exit 1; }
	$(BIN)/sarnet repro

test: setup
	$(BIN)/python -m pytest

# MLflow UI on http://127.0.0.1:5000 over the project's tracking store.
ui: setup
	$(BIN)/sarnet ui

# Overlay the CI profile's small sizes onto params.yaml (CI does this in its own clone).
ci-profile: setup
	$(BIN)/python pipeline/apply_profile.py params-ci.yaml

# Re-pin the tested dependency set after changing pyproject.toml.
lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean-venv:
	rm -rf $(VENV)
