#!/usr/bin/env bash
# GPU training throughput, the tutorial's recipe against the project's settings, in under 5 minutes.
#
#     bench/gpu.sh                                   # tutorial, project, project-compile: ~2-3 min on an H100
#     bench/gpu.sh --configs tutorial,project --steps 200
#
# Extra arguments go to `python -m bench.gpu_train` (--help lists them). Writes bench/results/gpu.json and
# prints a Markdown table; BENCHMARKS.md, section "GPU: bench/gpu.sh", says what the figures mean.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The model is built from a config with random weights: nothing to download, and a GPU machine may be offline.
export HF_HUB_OFFLINE=1

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "no CUDA GPU: bench/gpu.sh measures GPU training (nvidia-smi not found); see BENCHMARKS.md for the CPU benchmark" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv

# The project's environment (`make setup`) where there is one, else whatever python is on PATH.
python=python
if [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
fi

# 290 s keeps the whole run, start-up included, under 5 minutes. The module rewrites its JSON after each
# configuration, so a run stopped here keeps the configurations it finished.
exec timeout 290 "$python" -m bench.gpu_train "$@"
