# Two entry points do all the set-up on a fresh machine:
#   make run    replay the shipped routing data through the bandits (the main job)
#   make serve  the routing service on 127.0.0.1:8000 (in-process store, no Redis needed)
#   make test   the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/llmrouter_14tasks.parquet

.PHONY: setup run serve test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build from the local wheel; a bare torch requirement would pull CUDA (GBs)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/banditroute replay --data $(DATA)

serve: setup
	$(VENV)/bin/banditroute serve --config deploy/banditroute.toml

test: setup
	# pytest exits 5 when it collects nothing; that alone is not a failure
	$(VENV)/bin/pytest; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy service simulator policies

bench: setup
	$(PY) -m benchmarks.policies
	$(PY) -m benchmarks.embedder
	$(PY) -m benchmarks.load
