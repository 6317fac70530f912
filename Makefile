# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean clean-demo

setup: $(STAMP)

# Reuse the venv; reinstall only when requirements.txt changes.
$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) main.py --config=configs/demo_omni.py --workdir=workdir/demo_omni

# Never touches workdir/ as a whole: real runs default to workdir/<config name>.
clean:
	rm -rf $(VENV) .pytest_cache

clean-demo:
	rm -rf workdir/demo_omni data/tfds/omnimae_demo
