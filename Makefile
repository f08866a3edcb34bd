# Both targets work on a fresh machine with only python3: they create .venv and install
# what they need the first time, and re-runs skip the install when nothing changed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick bench-isolation clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,postgres,s3,xgboost,lightgbm,onnx,mlflow,grpc,test-clients]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rendezvous demo --duration $${DURATION:-20} --home $${RENDEZVOUS_HOME:-.rendezvous}

# The dashboard test drives Debian's chromium through Playwright (never `playwright install`).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	S=; [ "$$(id -u)" = 0 ] || S=sudo; $$S apt-get update -q && $$S apt-get install -y -q chromium

# Two pytest processes: most tests wait on the processes they start, so one process leaves a
# core idle. A test file runs whole in one of them (its module fixtures start once).
TEST_WORKERS ?= 2
test: $(STAMP) | $(CHROMIUM)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python -m bench.serving

bench-quick: $(STAMP)
	$(BIN)/python -m bench.serving --quick

bench-isolation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.isolation

clean:
	rm -rf $(VENV) .rendezvous .pytest_cache
