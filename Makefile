# The front door: `make demo` and `make test` each bootstrap .venv from the machine's python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)
export FEEDBACK_PIPELINE_DATA_DIR ?= $(CURDIR)/data

.PHONY: install lock demo test lint format dev mlflow status validate bench clean

UV_VERSION := 0.13.9

# Reinstall only when the project's metadata or the lock changed (idempotent bootstrap). Every
# version comes from requirements.lock, so a fresh clone installs what CI tested; uv installs it.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# After changing dependencies in pyproject.toml: pin them again (then commit requirements.lock).
lock: $(STAMP)
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --python-version 3.11 \
		-o requirements.lock

demo: $(STAMP)
	$(BIN)/python -m feedback_pipeline.demo

# Both cores: one test file per worker (files share module fixtures: a server, a simulated stream).
# Two test workers on two cores: one OpenMP thread each, or XGBoost's threads oversubscribe the
# cores and spin (the suite took 11 minutes instead of 8).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# N=10000000 for the large run
N ?= 1000000
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --predictions $(N)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

validate: $(STAMP)
	$(BIN)/dagster definitions validate -m feedback_pipeline.definitions

dev: $(STAMP)
	$(BIN)/dagster dev -m feedback_pipeline.definitions -h 127.0.0.1 -p 3000

# One user's UI: one worker (MLflow's default starts four copies of itself), and no job runner
# for MLflow's GenAI jobs (unused here; it starts seven more Python processes).
mlflow: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(FEEDBACK_PIPELINE_DATA_DIR)/mlflow.db \
		--default-artifact-root $(FEEDBACK_PIPELINE_DATA_DIR)/mlartifacts --host 127.0.0.1 --port 5000 --workers 1

status: $(STAMP)
	$(BIN)/feedback-pipeline status

clean:
	rm -rf data/landing data/warehouse.duckdb data/warehouse.duckdb.wal data/dagster data/mlflow.db data/mlartifacts
