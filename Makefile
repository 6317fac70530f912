# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean clean-demo

setup: $(STAMP)

# Reuse the venv; reinstall only when requirements.txt changes.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The package itself, editable: `python -m omnimae_jax...` and imports work from anywhere.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The tests also compile for a TPU topology without a TPU: they need libtpu (requirements-test.txt).
TEST_STAMP := $(VENV)/.installed-test

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(TEST_STAMP)

test: $(TEST_STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q tests

# Pretrains on the demo data, then fine-tunes that pretraining on the demo labels.
demo: $(STAMP)
	$(PY) main.py --config=configs/demo_omni.py --workdir=workdir/demo_omni
	$(PY) main.py --config=configs/demo_finetune.py --workdir=workdir/demo_finetune

# Never touches workdir/ as a whole: real runs default to workdir/<config name>.
clean:
	rm -rf $(VENV) .pytest_cache

clean-demo:
	rm -rf workdir/demo_omni workdir/demo_finetune data/tfds/omnimae_demo
