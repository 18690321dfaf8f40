# One command each on a fresh machine: `make demo` (set-up + demo run), `make test` (set-up, lint, tests).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo smoke lint test dryrun plan clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	# Exact pins: pip takes these two from the local wheel cache; looser specs download GBs.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

setup: $(BIN)/.installed

demo: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local --cores $(CORES)
	@echo "Open results/demo/report.html"

# The real architectures (random weights) on a few real-size images: ~3 min on 2 CPUs, ~8 GB RAM.
smoke: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local --cores $(CORES) --configfile config/smoke.yaml

# Snakemake's own linter on the workflow, ruff (pyproject.toml's [tool.ruff]) on the Python.
lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/ruff check src tests workflow/scripts benchmarks

test: lint
	# Two workers: the SLURM tests wait on the scheduler while the others compute (tests/conftest.py).
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

dryrun: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake -n --configfile config/config.yaml

clean:
	rm -rf results .snakemake
