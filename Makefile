# anime-face-id: the entry points a person types. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
REVIEW_PORT ?= 8501
APP_PORT ?= 8502
SERVE_PORT ?= 5001
SHARED ?= ../shared
MODEL ?= models:/anime-face-id@champion
# No usage telemetry from Prefect or MLflow unless the caller's environment opts in.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true

.DEFAULT_GOAL := help
.PHONY: help setup system-packages postgres-server pipeline detector test test-fast lint format prefect-ui prefect-start prefect-stop mlflow-ui review app serve clean-venv

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}' \
	  | sed -e 's/$$(PREFECT_PORT)/$(PREFECT_PORT)/g' -e 's/$$(MLFLOW_PORT)/$(MLFLOW_PORT)/g' \
	    -e 's/$$(REVIEW_PORT)/$(REVIEW_PORT)/g' -e 's/$$(APP_PORT)/$(APP_PORT)/g' \
	    -e 's/$$(SERVE_PORT)/$(SERVE_PORT)/g' -e 's|$$(SHARED)|$(SHARED)|g' -e 's|$$(MODEL)|$(MODEL)|g'

# Another apt (unattended upgrades, a second `make setup`) holding dpkg's lock is waited
# for, up to ten minutes, instead of failing the set-up at once.
APT_WAIT = -o DPkg::Lock::Timeout=600

setup: system-packages $(STAMP) ## install everything: Debian chromium + chromedriver, the virtualenv, the package

system-packages: ## Debian's chromium and chromium-driver (for the google backend and browser tests)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing chromium and chromium-driver (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq $(APT_WAIT) && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_WAIT) chromium chromium-driver >/dev/null; \
	fi

postgres-server: ## Debian's PostgreSQL server, for Prefect and MLflow servers shared by a team
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (apt)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq $(APT_WAIT) && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_WAIT) postgresql >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build available offline satisfies the package's range
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# Every stage reports to one long-lived Prefect server (the project's, started in the
# background when PREFECT_API_URL names none), so runs stay in the UI afterwards.
pipeline: setup ## run the whole pipeline with params.yaml (dvc repro), runs kept in the Prefect UI
	@api=$$($(PY) -m flows.server url --port $(PREFECT_PORT)) && \
	  echo "Prefect runs: $${api%/api}" && \
	  PREFECT_API_URL="$$api" PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The recipe of the shipped weights: frames with pasted crops from ImageNet features; a
# refinement in which that model labels the identity crops (pseudo-labels) for close-up views;
# one long run from the ImageNet trunk again, with the refined model's pseudo-labels; two
# refinements of that run (its own pseudo-labels; the second with frames drawn larger); and
# the mean of the last three runs' weights (a model soup), which is the shipped file.
DETECTOR_DATA = --frames $(SHARED)/testdata/detection-train --crops $(SHARED)/testdata/identities
DETECTOR_REFINE = --init models/detector/centernet_third.pt --lr 1e-3 --backbone-lr 2.5e-4 --close-up-probability 0.2
detector: setup ## retrain the face detector on $(SHARED)/testdata (writes the packaged weights)
	$(PY) -m flows.detector $(DETECTOR_DATA) --out models/detector/centernet_first.pt
	$(PY) -m flows.detector $(DETECTOR_DATA) --init models/detector/centernet_first.pt \
	  --out models/detector/centernet_second.pt --epochs 12 --lr 1e-3 --backbone-lr 2.5e-4 --close-up-probability 0.2
	$(PY) -m flows.detector $(DETECTOR_DATA) --pseudo-labels-from models/detector/centernet_second.pt \
	  --out models/detector/centernet_third.pt --epochs 40 --close-up-probability 0.2
	$(PY) -m flows.detector $(DETECTOR_DATA) $(DETECTOR_REFINE) --epochs 12 --out models/detector/centernet_fourth.pt
	$(PY) -m flows.detector $(DETECTOR_DATA) $(DETECTOR_REFINE) --epochs 10 --frame-scale 1 2 \
	  --out models/detector/centernet_fifth.pt
	$(PY) -m flows.detector_average --out anime_face_id/faces/weights/centernet_lite0.pt \
	  models/detector/centernet_third.pt models/detector/centernet_fourth.pt models/detector/centernet_fifth.pt

# Much of the suite waits on server starts and fresh processes importing torch; two
# workers overlap those waits (a test file stays on one worker, its fixtures with it).
TEST_WORKERS ?= 2

test: setup ## run the whole test suite (slow and browser tests included)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: setup ## the quick tests only
	$(BIN)/pytest -m "not slow and not browser"

lint: setup ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

prefect-ui: prefect-start ## the Prefect UI on http://127.0.0.1:$(PREFECT_PORT) (the project's server, in the background)

prefect-start: setup ## start the project's Prefect server in the background (data in .prefect/)
	$(PY) -m flows.server start --port $(PREFECT_PORT)

prefect-stop: setup ## stop the project's background Prefect server and its warm stage runner
	$(PY) -m flows.server stop

mlflow-ui: setup ## start the MLflow UI on http://127.0.0.1:$(MLFLOW_PORT) (runs in mlflow.db)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

review: setup ## open the review app on http://127.0.0.1:$(REVIEW_PORT)
	$(BIN)/streamlit run apps/review.py --server.address 127.0.0.1 --server.port $(REVIEW_PORT) --server.headless true --browser.gatherUsageStats false

app: setup ## open the identify app on http://127.0.0.1:$(APP_PORT)
	$(BIN)/streamlit run apps/identify.py --server.address 127.0.0.1 --server.port $(APP_PORT) --server.headless true --browser.gatherUsageStats false --server.maxUploadSize 20

# mlflow starts its server as `uvicorn` found on PATH, hence the venv's bin first. Runs are
# in mlflow.db, as for training, unless MLFLOW_TRACKING_URI says otherwise.
serve: setup ## serve MODEL (default: the champion) over HTTP on http://127.0.0.1:$(SERVE_PORT)
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" \
	  $(BIN)/mlflow models serve -m '$(MODEL)' --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

clean-venv: ## remove the virtualenv
	rm -rf $(VENV)
