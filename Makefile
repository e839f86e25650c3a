# Two commands on a fresh machine:
#   make run    set up .venv and run the whole pipeline on params.yaml (digits) with Snakemake
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
STAMP := $(VENV)/.installed-stamp
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export GIT_PYTHON_REFRESH := quiet
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
# pip's notes about this machine's unused local package folders are filtered; its errors are not.
QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }

.PHONY: setup browser slurm run run-full test test-slurm test-fast lint-fix dvc bench paper-smoke mlflow clean-results

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip $(QUIET)
	$(VENV)/bin/python -m pip install -q --no-compile -e '.[test]' $(QUIET)
	@# pip writes the bytecode one file at a time; compileall uses every core (~40 s less here). Its
	@# exit status is 1 where a package ships files that are not Python 3, which pip skips alike.
	$(VENV)/bin/python -m compileall -q -j 0 "$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
	$(VENV)/bin/python -c "import rnas, torch, torchvision, foolbox, pyautoattack, mlflow, snakemake, dvc"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	snakemake --cores $(CORES)
	@echo "report: results/report.md (and results/report.html if present)"

# Every run on digits (variants, ablations, the LRNAS budget sweep); reuses what `make run` made.
run-full: setup
	RNAS_PARAMS=configs/digits_full.yaml snakemake --cores $(CORES)
	@echo "report: results/report.md (and results/report.html if present)"

# Headless Chromium for the report screenshot test (Debian's package; where it cannot be
# installed the test skips with its reason, and fails under CI=true, which .ci/run sets).
browser:
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the HTML screenshot test will skip (fail under CI=true)"; }

# Debian's slurm-wlm and munge plus the executor plugin (.[slurm]) for the real single-node
# SLURM test; where they cannot be installed the test skips and prints why (fails under CI=true).
slurm: setup
	PYTHON=$(BIN)/python bash tests/slurm/setup.sh >/dev/null || echo "slurm-wlm not installed: the SLURM test will skip (fail under CI=true)"

# ruff (pyproject.toml [tool.ruff]) lints and format-checks the Python first; `make lint-fix` applies both.
# pytest-xdist runs the tests on every core, an idle worker taking queued tests from a busy one
# (worksteal; tests/conftest.py puts the whole-pipeline tests first). TEST_WORKERS=0: in this process.
TEST_WORKERS ?= auto
test: setup browser slurm
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25

# Only the real single-node SLURM run of the tiny pipeline.
test-slurm: setup slurm
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q tests/test_slurm.py

test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

lint-fix: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

dvc: setup
	rnas forkserver exec -- dvc repro  # its stage commands share one preloaded process (rnas/forkserver.py)

# Speed/memory table of the hot paths (benchmarks/README.md); BENCH_ARGS=--quick for a smoke run.
# One thread by default, as pipeline.threads (each Snakemake job uses one core).
BENCH_THREADS ?= 1
bench: setup
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python -m benchmarks --threads $(BENCH_THREADS) $(BENCH_ARGS)

# Every run of every paper-scale profile (configs/{cifar10,cifar100,svhn,mnist}.yaml) at its real size:
# one search, retraining and evaluation step each on a few random images, on the CPU (no data needed;
# ~15 min on 2 cores, README "Paper scale"). SMOKE_ARGS e.g. --profiles configs/mnist.yaml --runs darts.
paper-smoke: setup
	OMP_NUM_THREADS=$(BENCH_THREADS) $(VENV)/bin/python -m benchmarks.paper_smoke --threads $(BENCH_THREADS) $(SMOKE_ARGS)

# The MLflow UI; `rnas init-store` prints the link that opens the experiment on its runs table.
mlflow: setup
	rnas init-store
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean-results:
	rm -rf results logs .snakemake/metadata mlflow.db mlartifacts
