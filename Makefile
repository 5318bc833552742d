# dgmn_ref: the two commands of the README are `make lab` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Tools write caches into $HOME; keep them inside the checkout during tests.
TESTENV := HOME=$(CURDIR)/.cache/home MPLCONFIGDIR=$(CURDIR)/.cache/mpl \
	JUPYTER_CONFIG_DIR=$(CURDIR)/.cache/jupyter JUPYTER_DATA_DIR=$(CURDIR)/.cache/jupyter-data \
	JUPYTER_RUNTIME_DIR=$(CURDIR)/.cache/jupyter-runtime IPYTHONDIR=$(CURDIR)/.cache/ipython \
	JUPYTER_PLATFORM_DIRS=1 PYDEVD_DISABLE_FILE_VALIDATION=1 MPLBACKEND=Agg

.PHONY: gpu-check venv lab test unit notebooks-test browser-test notebooks notebook-times lint data clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# (Re)install when pyproject.toml changes. torch is pinned to the CPU wheel 2.13.0;
# see the README for a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[notebooks,test]"
	touch $(STAMP)

venv: $(STAMP)

# JupyterLab refuses to run as root unless told; containers often run as root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: venv
	$(BIN)/jupyter lab $(ALLOW_ROOT) notebooks/

data: venv
	$(BIN)/dgmn-ref make-data

unit: venv
	$(TESTENV) $(BIN)/python -m pytest tests --doctest-modules dgmn_ref -m "not browser" -q

# Notebooks run in parallel, each whole notebook in one worker (--dist loadscope, as nbval's
# README says): every notebook sets torch to one thread, so one worker per core.
NBVAL_JOBS ?= 2
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
	--nbval-cell-timeout 300 -p no:cacheprovider -q -n $(NBVAL_JOBS) --dist loadscope
# The notebooks that train or optimise something (03: SGD on the walks; 05, 06: training; 08: a
# trained model; any notebook numbered 09 or later). Their checked outputs must not depend on the
# CPU's vector instructions, so notebooks-test runs them once more on torch's portable code path
# (ATEN_CPU_CAPABILITY=default), whatever this machine has (AVX2, AVX-512, ...).
OPTIMISING_NOTEBOOKS = $(wildcard notebooks/03_*.ipynb notebooks/05_*.ipynb notebooks/06_*.ipynb \
	notebooks/08_*.ipynb notebooks/09_*.ipynb notebooks/[1-9][0-9]_*.ipynb)

# Strict nbval over every notebook on this CPU's native code path, then the optimising ones again
# under ATEN_CPU_CAPABILITY=default.
notebooks-test: venv
	$(TESTENV) $(BIN)/python -m pytest $(NBVAL) notebooks
	$(TESTENV) ATEN_CPU_CAPABILITY=default $(BIN)/python -m pytest $(NBVAL) $(OPTIMISING_NOTEBOOKS)

# -rsP: the reasons of skipped tests and the output of passed ones (pytest keeps only the last -r).
browser-test: venv
	$(TESTENV) $(BIN)/python -m pytest tests -m browser -q -rsP

# The whole suite: unit tests, every notebook under strict nbval (the optimising ones twice), the browser test
# (skipped with the reason printed when Chromium is missing).
test: venv lint unit notebooks-test browser-test

lint: venv
	$(BIN)/ruff check dgmn_ref tests
	$(BIN)/ruff format --check dgmn_ref tests

# Re-execute every notebook in place so that its committed outputs are fresh.
# Each notebook's execution time (fresh kernel, a copy: nothing is rewritten) ->
# results/notebook_times.json; the tables in README.md and notebooks/README.md quote it.
notebook-times: venv
	$(TESTENV) $(BIN)/python scripts/time_notebooks.py

notebooks: venv
	$(TESTENV) $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=600 --NotebookClient.record_timing=False notebooks/*.ipynb

clean:
	rm -rf $(VENV) .cache .pytest_cache build *.egg-info

# On a GPU machine: equality on CUDA, block benchmarks, training speed (scripts/gpu_check.py);
# writes benchmarks/results-gpu-<date>.json and .md. About 8 minutes on one GPU.
gpu-check: venv
	PYTHON=$(BIN)/python scripts/gpu_check.sh
