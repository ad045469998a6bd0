# All set-up lives here: `make demo` and `make test` each create the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/bin/stamp

.PHONY: demo test lint venv clean

venv: $(VENV)/.installed

# torch is pinned to the CPU wheel available on the project's machines; on a GPU machine install the
# torch build you want first and the `pip install -e` line keeps it (any torch in the supported range).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,train,zero,serve,web-test]"
	touch $@

demo: venv
	$(STAMP) demo --force  # (re)writes its own folder, stamp_out/demo/

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
