# blankfill: `make demo` and `make test` do their own set-up on a fresh machine.
# TORCH_SPEC selects the torch build; users with GPUs: make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX=...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC)' | tr -c 'a-zA-Z0-9.\n' '_')
PYTEST_ARGS ?=

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1

.PHONY: install test demo lint bench clean experiments experiments-smoke

install: $(STAMP)

# torch first and pinned, so nothing below pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev,eval,plot,serve,harness,sentencepiece,browser,lora]"
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m blankfill demo

# Every benchmark (JSON lines, peers alternated), then benchmarks/RESULTS.md + results.png.
# A few minutes on a quiet 2-core machine; BENCH_SCALE=3 (or more) measures longer. The corpus is
# ../shared/data/corpus (BENCH_CORPUS=DIR overrides; a synthetic one where there is none).
BENCH_SCALE ?= 1
bench: install
	$(PY) -m pip install -q -e ".[bench,plot]"
	cd benchmarks && BENCH_SCALE=$(BENCH_SCALE) nice -n 10 ../$(PY) run_all.py

lint: install
	$(PY) -m ruff check src tests benchmarks experiments
	$(PY) -m ruff format --check src tests benchmarks experiments

# GLM's design claims at small scale (experiments/run.py; outputs under experiments/runs*/).
# DATA: the shared data root holding corpus/ and benchmarks/ (skipped with a message if absent).
DATA ?= ../shared/data
BUDGET ?= 120
experiments: install
	nice -n 10 $(PY) experiments/run.py all --budget-minutes $(BUDGET) --data $(DATA)

experiments-smoke: install
	$(PY) experiments/run.py all --smoke --data $(DATA) --finetune-seeds 1

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
